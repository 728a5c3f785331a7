"""The Markdown page of ``jobs.evaluate`` (``metrics.md``) from its result dict (``metrics.json``)."""

from __future__ import annotations


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def to_markdown(result: dict) -> str:
    """The result as Markdown: summary, per-class IoU, confusion matrices (when <= 30 classes)."""
    methods = result["methods"]
    lines = [f"# Evaluation of `{result['output']}`", ""]
    lines.append(
        f"Ground truth `{result['gt']}`, class map `{result['class_map']}`, run `{result['run_id']}`, "
        f"ignore id {result['ignore_index']}."
    )
    lines += [
        "",
        "| method | images | tau | tau from | mIoU % | pixel acc. % | as run: mIoU % | split (fit / eval) |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for name, e in methods.items():
        p = e["protocol"]
        split = {
            "all": "all matched images",
            "lists": "split files",
            "holdout": f"holdout {p['holdout']} seed {p['seed']}",
        }[p["split"]]
        tau = "job's" if e["tau"] is None else f"{e['tau']:.3g}"
        as_run = "–" if e["as_run"] is None else _pct(e["as_run"]["miou"], 2)
        lines.append(
            f"| {name} | {e['images']} | {tau} | {e['tau_source']} | {_pct(e['miou'], 2)} | "
            f"{_pct(e['pixel_accuracy'], 2)} | {as_run} | {split}: {p['n_fit']} / {p['n_eval']} |"
        )
    for name, e in methods.items():
        m = e["matching"]
        note = (
            f"- {name}: {m['matched']} of {m['predictions']} predictions matched a ground-truth map; "
            f"{m['gt_without_prediction']} ground-truth maps have no prediction."
        )
        if e.get("fit"):
            note += f" tau = {e['fit']['tau']:.3g} fitted on {e['fit']['n_fit']} images (fit mIoU {_pct(e['fit']['fit_miou'], 2)} %); reported on the other {e['images']}."
        if e["protocol"]["excluded_fitted"]:
            note += f" {e['protocol']['excluded_fitted']} images were left out because the given tau was fitted on them."
        lines += ["", note] if name == next(iter(methods)) else [note]
    # classes named by the class map or seen in any ground truth or prediction (the JSON lists all ids)
    shown = [
        c
        for c in result["classes"]
        if c["in_class_map"] or any(e["iou"][c["id"]] is not None for e in methods.values())
    ]
    lines += [
        "",
        "## IoU per class (%)",
        "",
        "| id | class | " + " | ".join(methods) + " |",
        "|---:|---|" + "---:|" * len(methods),
    ]
    for c in shown:
        lines.append(
            f"| {c['id']} | {c['name']} | "
            + " | ".join(_pct(e["iou"][c["id"]]) for e in methods.values())
            + " |"
        )
    lines.append("| | **mean** | " + " | ".join(f"**{_pct(e['miou'])}**" for e in methods.values()) + " |")
    for name, e in methods.items():
        if len(shown) > 30:
            lines += ["", f"Confusion matrix of {name}: see metrics.json (too many classes for a table)."]
            continue
        ids = [c["id"] for c in shown]
        lines += [
            "",
            f"## Confusion matrix: {name} (pixels; rows = ground truth, columns = prediction)",
            "",
            "| gt \\ pred | " + " | ".join(c["name"] for c in shown) + " |",
            "|---|" + "---:|" * len(ids),
        ]
        for c in shown:
            row = e["confusion_matrix"][c["id"]]
            lines.append(f"| {c['name']} | " + " | ".join(str(row[i]) for i in ids) + " |")
    return "\n".join(lines) + "\n"


def comparison_markdown(comparison: dict) -> str:
    """The comparison as Markdown: the ranking (one row per run x method, best EVAL mIoU first) with the
    settings that differ as columns, then the settings every run shares."""
    from diffseg.eval.settings import show

    keys = comparison["differing"]
    runs = comparison["runs"]
    first = runs[0]["metrics"]["methods"]
    protocol = next(iter(first.values()))["protocol"] if first else {}
    lines = [
        f"# Comparison of {len(runs)} runs",
        "",
        f"Ground truth `{comparison['gt']}`, class map `{comparison['class_map']}`; every row is scored on "
        f"the same {comparison['common_images']} images (the ones all runs have): "
        f"fit / eval = {protocol.get('n_fit', 0)} / {protocol.get('n_eval', 0)}. Ranked by EVAL mIoU.",
        "",
        "| rank | run | method | " + "".join(f"{k} | " for k in keys)
        + "tau | tau from | FIT mIoU % | EVAL mIoU % | pixel acc. % | images |",
        "|---:|---|---|" + "---|" * len(keys) + "---:|---|---:|---:|---:|---:|",
    ]
    for row in comparison["ranking"]:
        tau = "job's" if row["tau"] is None else f"{row['tau']:.3g}"
        lines.append(
            f"| {row['rank']} | {row['run']} | {row['method']} | "
            + "".join(f"{show(row['settings'][k])} | " for k in keys)
            + f"{tau} | {row['tau_source']} | {_pct(row['fit_miou'], 2)} | {_pct(row['miou'], 2)} | "
            f"{_pct(row['pixel_accuracy'], 2)} | {row['images']} |"
        )
    shared = {k: v for k, v in runs[0]["settings"].items() if k not in keys}
    if shared:
        lines += ["", "Same in every run: " + ", ".join(f"{k} = {show(v)}" for k, v in sorted(shared.items())) + "."]
    if not keys:
        lines += ["", "The runs' manifests record no setting that differs between them."]
    lines += [
        "",
        "Choosing among settings by their EVAL mIoU tunes on EVAL: confirm the winner on images neither "
        "split has seen before quoting its figure.",
    ]
    return "\n".join(lines) + "\n"
