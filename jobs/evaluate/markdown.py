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
