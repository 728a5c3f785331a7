"""The page of ``jobs.report``: facts, legend, gallery, class table, errors and manifest of one run."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from diffseg.codecs.overlay import palette
from diffseg.lake.read import iter_committed, model_uri, read_table, resolve_run
from diffseg.model import BUILTIN_MODELS
from jobs.report import html as H
from jobs.report.gallery import OTHER_COLOUR, class_colours, gallery_cards, load_originals, sample_uris

AREA_EDGES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)  # area-share bin edges (7 bins)
AREA_LABELS = ("<0.1%", "0.1-0.3%", "0.3-1%", "1-3%", "3-10%", "10-30%", ">=30%")


@dataclass(frozen=True)
class ReportOptions:
    """What the report shows (the command's options; see jobs.report.cli)."""

    run_id: str | None = None  # which run of OUTPUT (None: the latest invocation's)
    max_images: int = 200  # images in the gallery
    per_page: int = 50  # images per gallery page
    seed: int = 0  # seed of the deterministic sample
    thumb: int = 256  # long side of the overlays in px
    alpha: float = 0.5  # weight of the class colour over the original
    max_errors: int = 1000  # error rows listed (all are counted)
    originals: bool = True  # read the original images to blend the overlays into


def class_table(output: str, run_id: str | None) -> dict[str, dict[str, dict]]:
    """method -> class name -> {"images", "pixels", "fraction_sum", "hist"} over every committed stats row."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    columns = ["method", "class_name", "pixel_count", "fraction"]
    for part in iter_committed(output, "stats", columns, run_id):
        if part.num_rows == 0:
            continue
        bins = np.searchsorted(AREA_EDGES, part["fraction"].to_numpy(zero_copy_only=False), side="right")
        grouped = part.append_column("bin", pa.array(bins, pa.int32())).group_by(
            ["method", "class_name", "bin"]
        )
        agg = grouped.aggregate([("pixel_count", "sum"), ("pixel_count", "count"), ("fraction", "sum")])
        for row in agg.to_pylist():
            entry = out[row["method"]].setdefault(
                row["class_name"],
                {"images": 0, "pixels": 0, "fraction_sum": 0.0, "hist": [0] * len(AREA_LABELS)},
            )
            entry["images"] += row["pixel_count_count"]
            entry["pixels"] += row["pixel_count_sum"]
            entry["fraction_sum"] += row["fraction_sum"]
            entry["hist"][row["bin"]] += row["pixel_count_count"]
    return out


def classes_section(
    stats: dict, vocab: list[str], colour_of: dict, methods: list[str], images: dict[str, int]
) -> str:
    parts = [
        f'<p class="note">Over every committed image. Area histogram bins (share of the image): '
        f"{', '.join(AREA_LABELS)}.</p>"
    ]
    index = {name: k for k, name in enumerate(vocab, 1)}
    for method in methods:
        per = stats.get(method, {})
        names = list(vocab) + sorted(n for n in per if n not in index)
        names.sort(key=lambda n: (-per.get(n, {}).get("images", 0), index.get(n, len(index) + 1)))
        top = max([per[n]["images"] for n in per] or [0])
        rows = []
        for name in names:
            e = per.get(name, {"images": 0, "pixels": 0, "fraction_sum": 0.0, "hist": [0] * len(AREA_LABELS)})
            mean_area = f"{100 * e['fraction_sum'] / e['images']:.2f}%" if e["images"] else "–"
            colour = colour_of.get(name, OTHER_COLOUR)
            share = f"{100 * e['images'] / images[method]:.1f}%" if images.get(method) else "–"
            rows.append(
                [
                    H.chip(name, colour),
                    f"{e['images']:,}",
                    share,
                    H.bar(e["images"], top),
                    f"{e['pixels']:,}",
                    mean_area,
                    H.histogram_svg(e["hist"], AREA_LABELS),
                ]
            )
        parts.append(f"<h3>{H.esc(method)} ({images.get(method, 0):,} images)</h3>")
        header = [
            "class",
            "images",
            "share",
            "",
            "pixels",
            "mean area",
            f"area histogram ({AREA_LABELS[0]} &hellip; {AREA_LABELS[-1]})",
        ]
        parts.append(H.table(header, rows, numeric={1, 2, 4, 5}))
    return "".join(parts)


def errors_section(errors: pa.Table, max_rows: int) -> str:
    if errors.num_rows == 0:
        return '<p class="note">No error rows: every input was segmented.</p>'
    rows = sorted(errors.to_pylist(), key=lambda r: r["uri"])
    counts: dict[tuple, int] = defaultdict(int)
    for r in rows:
        counts[(r["stage"], r["error_type"])] += 1
    summary = H.table(
        ["stage", "error type", "images"],
        [[H.esc(s), H.esc(t), f"{n:,}"] for (s, t), n in sorted(counts.items(), key=lambda x: -x[1])],
        numeric={2},
    )
    shown = rows[:max_rows]
    detail = H.table(
        ["uri", "stage", "error type", "reason"],
        [[H.esc(r["uri"]), H.esc(r["stage"]), H.esc(r["error_type"]), H.esc(r["message"])] for r in shown],
        wide={3},
    )
    more = (
        f'<p class="note">Showing {len(shown):,} of {len(rows):,} error rows.</p>'
        if len(rows) > len(shown)
        else ""
    )
    return summary + "<h3>Rows</h3>" + more + detail


def run_outcome(output: str, run_id: str | None, manifest: dict) -> tuple[str, str]:
    """(the run's own outcome, its latest invocation's status): the outcome as ``diffseg status`` judges
    it from every invocation's commits (succeeded, too many errors, failed, running, ...), so a rerun that
    found nothing to do shows the run's outcome, not "nothing to do"; the manifest's status when the
    run's state cannot be read."""
    from diffseg.lake.read import OutputError
    from jobs.status.state import read_run_status

    invocation = str(manifest.get("status", "?"))
    if run_id is None:
        return invocation, invocation
    try:
        return read_run_status(output, run_id).outcome, invocation
    except (OutputError, OSError, ValueError):
        return invocation, invocation


def build_report(output: str, options: ReportOptions) -> str:
    """The report's HTML page of OUTPUT (local path or fsspec URL); OutputError when it is not a job's OUTPUT."""
    run_id, vocab, manifest = resolve_run(output, options.run_id)
    colours = palette(len(vocab) + 1)
    index = read_table(output, "masks", ["uri", "method"], run_id=run_id)
    per_method = Counter(index["method"].to_pylist())
    methods = sorted(per_method)
    all_uris = set(index["uri"].to_pylist())
    sample = sample_uris(all_uris, options.max_images, options.seed)
    masks = read_table(
        output,
        "masks",
        ["uri", "width", "height", "method", "label_map_png", "classes"],
        run_id=run_id,
        uris=set(sample),
    )
    originals, given_up = load_originals(sample) if options.originals else ({}, {})
    errors = read_table(output, "errors", ["uri", "stage", "error_type", "message"], run_id=run_id)
    stats = class_table(output, run_id)

    note = (
        f'<p class="note">{len(sample):,} of {len(all_uris):,} images (sampled with seed {options.seed}), '
        f"{options.per_page} per page; {len(originals):,} shown blended with their original."
    )
    if not options.originals:
        note += " Originals were not read (--no-originals)."
    for scheme, reason in given_up.items():
        note += f" Originals on {H.esc(scheme)}:// could not be read here ({H.esc(reason)}): colour label maps only."
    note += "</p>"
    model_name = model_uri(manifest, "?")
    if model_name in BUILTIN_MODELS:
        note = (
            f'<p class="note"><b>Model {H.esc(model_name)} has random weights: these masks are '
            f"meaningless</b> (it exists for tests and demos).</p>"
        ) + note
    colour_of = class_colours(vocab, colours)
    cards = gallery_cards(masks, colour_of, originals, options.thumb, options.alpha)
    outcome, invocation = run_outcome(output, run_id, manifest)
    facts = " · ".join(
        f"{H.esc(k)} <b>{H.esc(v)}</b>"
        for k, v in (
            ("run", run_id or "all runs"),
            ("status", outcome),
            *((("latest invocation", invocation),) if invocation != outcome else ()),
            ("model", model_name),
            ("methods", ", ".join(methods) or "none"),
            ("images with masks", f"{len(all_uris):,}"),
            ("error rows", f"{errors.num_rows:,}"),
            ("classes", len(vocab)),
        )
    )
    sections = [
        ("legend", "Legend", H.legend(vocab, colours)),
        ("gallery", "Gallery", note + H.gallery(cards, options.per_page)),
        ("classes", "Classes", classes_section(stats, vocab, colour_of, methods, per_method)),
        ("errors", f"Errors ({errors.num_rows:,})", errors_section(errors, options.max_errors)),
        ("manifest", "Run manifest", H.manifest_block(manifest)),
    ]
    return H.page(f"diffseg report: {output}", facts, sections, masks.num_rows)
