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

This module only parses the options; :mod:`jobs.report.page` assembles the page (facts, class table,
errors), :mod:`jobs.report.gallery` the sampled overlays and :mod:`jobs.report.html` the HTML pieces.
"""

from __future__ import annotations

import argparse
import sys

from diffseg.argtypes import CommandParser
from diffseg.lake.read import OutputError
from diffseg.redact import redacting
from jobs.report.page import ReportOptions, build_report

DEFAULTS = ReportOptions()


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = CommandParser(
        prog="python -m jobs.report", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m jobs.report out/ --out report.html\n"
        "  python -m jobs.report s3://lake/seg/ --run-id nightly --max-images 200 --out s3://lake/seg/report.html\n\n"
        "exit codes: 0 report written, 2 bad option or OUTPUT unreadable (no manifest.json, unknown run).\n",
    )
    p.add_argument("output", metavar="OUTPUT", help="the segment job's OUTPUT (folder or fsspec URL)")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument(
        "--max-images", type=int, default=d.max_images, help=f"images in the gallery (default {d.max_images})"
    )
    p.add_argument(
        "--per-page", type=int, default=d.per_page, help=f"images per gallery page (default {d.per_page})"
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help=f"seed of the deterministic sample (default {d.seed})"
    )
    p.add_argument("--run-id", help="which run of OUTPUT (default: the latest invocation's)")
    p.add_argument(
        "--thumb", type=int, default=d.thumb, help=f"long side of the overlays in px (default {d.thumb})"
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=d.alpha,
        help=f"weight of the class colour over the original (default {d.alpha})",
    )
    p.add_argument(
        "--max-errors",
        type=int,
        default=d.max_errors,
        help=f"error rows listed (default {d.max_errors}; all are counted)",
    )
    p.add_argument(
        "--no-originals", action="store_true", help="do not read the original images (label maps only)"
    )
    return p


def options_of(args) -> ReportOptions:
    """The parsed command line as ReportOptions."""
    return ReportOptions(
        run_id=args.run_id,
        max_images=args.max_images,
        per_page=args.per_page,
        seed=args.seed,
        thumb=args.thumb,
        alpha=args.alpha,
        max_errors=args.max_errors,
        originals=not args.no_originals,
    )


@redacting
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("max_images", "per_page", "thumb"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be within [0, 1], got {args.alpha}")
    try:
        text = build_report(args.output, options_of(args))
    except OutputError as exc:
        print(f"diffseg: error: {exc}", file=sys.stderr)
        return 2
    import fsspec

    with fsspec.open(args.out, "wt", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote {args.out} ({len(text) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
