"""A static HTML report of a segment job's OUTPUT: gallery, class counts, area histograms, errors, manifest.

Usage::

    python -m jobs.report OUTPUT [--out report.html] [--max-images 200] [--per-page 50] [--seed 0]
        [--run-id R] [--thumb 256] [--alpha 0.5] [--no-originals]

One self-contained file (images embedded as ``data:`` URIs, CSS and a small script inline, nothing
fetched from the network); open it in any browser, no server needed.

- **Gallery.** ``--max-images`` images are sampled deterministically from every image with a mask: the
  ones with the smallest sha256(f"{seed}:{uri}"), shown in URI order, ``--per-page`` per page. An image's
  place in the sample never depends on the other images, so a grown dataset keeps the earlier picks
  that still rank first. Each image gets one overlay per method: the label map in the class colours of
  :func:`diffseg.codecs.overlay.palette` (the legend at the top), blended with the original when its URI is
  readable here (fsspec; EXIF orientation applied), else the colour label map alone on black. If the
  first few originals of a storage scheme cannot be read, the others of that scheme are not tried.
  Thumbnails are at most ``--thumb`` px on the long side (labels resized nearest).
- **Classes.** From the ``stats/`` table of every committed image (not just the sample), per method:
  images containing the class, total pixels, mean area share, and a histogram of the area share of the
  image the class covers (bins <0.1 %, 0.1-0.3 %, 0.3-1 %, 1-3 %, 3-10 %, 10-30 %, >=30 %: small objects
  are common, so the bins are logarithmic). Vocabulary classes never found are listed with 0.
- **Errors.** Counts per (stage, error type), then the rows (URI, stage, type, message), at most
  ``--max-errors``.
- **Manifest.** The run's manifest.json (it never holds credentials).
Only committed rows are read (:mod:`diffseg.lake.read`), so a report of a running job is consistent.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
from PIL import Image

from diffseg.codecs.images import load_image
from diffseg.codecs.masks import decode_label_png
from diffseg.codecs.overlay import blend_labels, palette
from diffseg.eval.metrics import resize_nearest
from diffseg.lake.read import OutputError, iter_committed, read_table, resolve_run
from diffseg.model import BUILTIN_MODELS
from jobs.report import html as H

AREA_EDGES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)  # area-share bin edges (7 bins)
AREA_LABELS = ("<0.1%", "0.1-0.3%", "0.3-1%", "1-3%", "3-10%", "10-30%", ">=30%")
PROBES = 3  # originals tried per storage scheme before giving up on that scheme


def sample_uris(uris, count: int, seed: int) -> list[str]:
    """`count` URIs with the smallest sha256(f"{seed}:{uri}"), returned in URI order."""
    ranked = sorted(set(uris), key=lambda u: hashlib.sha256(f"{seed}:{u}".encode()).digest())
    return sorted(ranked[:count])


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


def load_originals(uris: list[str], workers: int = 8) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({uri: (H, W, 3) uint8} of the readable originals, {scheme: reason} of the schemes given up on)."""
    by_scheme: dict[str, list[str]] = defaultdict(list)
    for uri in uris:
        by_scheme[uri.split("://", 1)[0] if "://" in uri else "file"].append(uri)
    images: dict[str, np.ndarray] = {}
    given_up: dict[str, str] = {}

    def load(uri):
        try:
            return uri, load_image(uri), None
        except Exception as exc:  # any storage or decode failure: show the label map alone
            return uri, None, f"{type(exc).__name__}: {exc}"

    rest = []
    for scheme, group in by_scheme.items():
        probes = [load(u) for u in group[:PROBES]]
        images.update({u: im for u, im, _ in probes if im is not None})
        if all(im is None for _, im, _ in probes):
            given_up[scheme] = probes[0][2]
        else:
            rest += group[PROBES:]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        images.update({u: im for u, im, _ in pool.map(load, rest) if im is not None})
    return images, given_up


def thumbnail(
    label: np.ndarray, image: np.ndarray | None, max_side: int, alpha: float
) -> tuple[str, int, int]:
    """(data URI, width, height) of one overlay: labels in class colours, blended with `image` if given."""
    h, w = label.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = resize_nearest(label, size).astype(np.int64)
    buffer = io.BytesIO()
    if image is not None:
        photo = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))
        Image.fromarray(blend_labels(photo, small, alpha)).save(buffer, format="JPEG", quality=85)
        mime = "image/jpeg"
    else:
        Image.fromarray(palette(int(small.max()) + 1)[small]).save(buffer, format="PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), size[1], size[0]


def gallery_cards(masks: pa.Table, vocab: list[str], colours, originals: dict, args) -> list[str]:
    by_uri: dict[str, list[dict]] = defaultdict(list)
    for row in masks.to_pylist():
        by_uri[row["uri"]].append(row)
    index = {name: k for k, name in enumerate(vocab, 1)}
    cards = []
    for uri in sorted(by_uri):
        rows = sorted(by_uri[uri], key=lambda r: r["method"])
        figures = []
        for row in rows:
            label = decode_label_png(row["label_map_png"])
            src, w, h = thumbnail(label, originals.get(uri), args.thumb, args.alpha)
            chips = (
                " ".join(
                    H.chip(name, colours[index[name]] if name in index else (128, 128, 128))
                    for name in row["classes"] or []
                )
                or '<span class="note">no class</span>'
            )
            figures.append(H.figure(src, w, h, row["method"], chips, f"{row['method']} overlay of {uri}"))
        note = f"{rows[0]['width']}x{rows[0]['height']}" + (
            "" if uri in originals else " (original not readable here)"
        )
        cards.append(H.card(uri, note, figures))
    return cards


def classes_section(
    stats: dict, vocab: list[str], colours, methods: list[str], images: dict[str, int]
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
            colour = colours[index[name]] if name in index else (128, 128, 128)
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


def build_report(args) -> str:
    """The report's HTML for the parsed command line."""
    run_id, vocab, manifest = resolve_run(args.output, args.run_id)
    colours = palette(len(vocab) + 1)
    index = read_table(args.output, "masks", ["uri", "method"], run_id=run_id)
    methods = sorted(set(index["method"].to_pylist()))
    all_uris = set(index["uri"].to_pylist())
    per_method = Counter(index["method"].to_pylist())
    sample = sample_uris(all_uris, args.max_images, args.seed)
    masks = read_table(
        args.output,
        "masks",
        ["uri", "width", "height", "method", "label_map_png", "classes"],
        run_id=run_id,
        uris=set(sample),
    )
    originals, given_up = ({}, {}) if args.no_originals else load_originals(sample)
    errors = read_table(args.output, "errors", ["uri", "stage", "error_type", "message"], run_id=run_id)
    stats = class_table(args.output, run_id)

    note = (
        f'<p class="note">{len(sample):,} of {len(all_uris):,} images (sampled with seed {args.seed}), '
        f"{args.per_page} per page; {len(originals):,} shown blended with their original."
    )
    if args.no_originals:
        note += " Originals were not read (--no-originals)."
    for scheme, reason in given_up.items():
        note += f" Originals on {H.esc(scheme)}:// could not be read here ({H.esc(reason)}): colour label maps only."
    note += "</p>"
    model_name = model_uri(manifest)
    if model_name in BUILTIN_MODELS:
        note = (f'<p class="note"><b>Model {H.esc(model_name)} has random weights: these masks are '
                f"meaningless</b> (it exists for tests and demos).</p>") + note
    cards = gallery_cards(masks, vocab, colours, originals, args)
    facts = " · ".join(
        f"{H.esc(k)} <b>{H.esc(v)}</b>"
        for k, v in (
            ("run", run_id or "all runs"),
            ("status", manifest.get("status", "?")),
            ("model", model_name),
            ("methods", ", ".join(methods) or "none"),
            ("images with masks", f"{len(all_uris):,}"),
            ("error rows", f"{errors.num_rows:,}"),
            ("classes", len(vocab)),
        )
    )
    sections = [
        ("legend", "Legend", H.legend(vocab, colours)),
        ("gallery", "Gallery", note + H.gallery(cards, args.per_page)),
        ("classes", "Classes", classes_section(stats, vocab, colours, methods, per_method)),
        ("errors", f"Errors ({errors.num_rows:,})", errors_section(errors, args.max_errors)),
        ("manifest", "Run manifest", H.manifest_block(manifest)),
    ]
    return H.page(f"diffseg report: {args.output}", facts, sections, masks.num_rows)


def model_uri(manifest: dict) -> str:
    model = manifest.get("model")
    return model.get("uri", "?") if isinstance(model, dict) else str(model)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.split("\n\n")[0])
    p.add_argument("output", metavar="OUTPUT", help="the segment job's OUTPUT (folder or fsspec URL)")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--max-images", type=int, default=200, help="images in the gallery (default 200)")
    p.add_argument("--per-page", type=int, default=50, help="images per gallery page (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the deterministic sample (default 0)")
    p.add_argument("--run-id", help="which run of OUTPUT (default: the latest invocation's)")
    p.add_argument("--thumb", type=int, default=256, help="long side of the overlays in px (default 256)")
    p.add_argument(
        "--alpha", type=float, default=0.5, help="weight of the class colour over the original (default 0.5)"
    )
    p.add_argument(
        "--max-errors", type=int, default=1000, help="error rows listed (default 1000; all are counted)"
    )
    p.add_argument(
        "--no-originals", action="store_true", help="do not read the original images (label maps only)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("max_images", "per_page", "thumb"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be within [0, 1], got {args.alpha}")
    try:
        text = build_report(args)
    except OutputError as exc:
        parser.exit(2, f"error: {exc}\n")
    import fsspec

    with fsspec.open(args.out, "wt", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote {args.out} ({len(text) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
