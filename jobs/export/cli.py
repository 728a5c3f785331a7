"""Export a segment job's masks to the formats training and labelling tools read.

Reads only committed units of one run (default: the latest) and one method (default: the run's only
one), locally or from object storage, and needs no Ray and no GPU. The formats and their files are
described in diffseg.export (coco, voc, hf, labelstudio) and docs/export.md.
"""

from __future__ import annotations

import argparse
import logging
import posixpath
import sys

from fsspec.core import url_to_fs

from diffseg.export.coco import write_coco
from diffseg.export.hf import write_hf
from diffseg.export.labelstudio import write_labelstudio
from diffseg.export.source import select
from diffseg.export.voc import write_voc
from diffseg.lake.read import OutputError
from diffseg.model import redact_uri
from diffseg.redact import redacting

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# format -> (what it writes, the files whose presence means DEST already holds an export of it)
FORMATS = {
    "coco": ("DEST/instances.json (COCO instances, RLE segmentation)", ["instances.json"]),
    "voc": ("DEST/SegmentationClass/STEM.png palette label maps + class_names.txt", ["class_names.txt", "SegmentationClass"]),
    "hf": ("DEST/README.md + DEST/data/train-*.parquet (Hugging Face dataset)", ["README.md", "data"]),
    "labelstudio": ("DEST/tasks.json + DEST/label_config.xml (Label Studio predictions)", ["tasks.json"]),
}

EPILOG = """\
formats:
{formats}

examples:
  python -m jobs.export s3://lake/seg/ --format coco ./export/coco
  python -m jobs.export ./seg --format voc ./export/voc --method diffsegmenter
  python -m jobs.export ./seg --format hf ./export/hf --run-id nightly-2024-06-01 --no-images
  python -m jobs.export ./seg --format labelstudio ./export/ls

exit codes: 0 exported; 1 failed while reading or writing (e.g. an image unreadable for --format hf);
2 bad options, no such OUTPUT, run or method, or DEST already holds an export (pass --overwrite)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export the committed masks of a segment job's OUTPUT as COCO, VOC, a Hugging Face "
                    "dataset or Label Studio predictions.",
        epilog=EPILOG.format(formats="\n".join(f"  {name:12s} {what}" for name, (what, _) in FORMATS.items())))
    p.add_argument("output", metavar="OUTPUT", help="the segment job's OUTPUT (local path or s3://, gs://, file:// URL)")
    p.add_argument("dest", metavar="DEST", help="folder to write (local path or fsspec URL); created if missing")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="what to write (see below)")
    p.add_argument("--method", help="which method's masks (default: the run's only method)")
    p.add_argument("--run-id", help="which run of OUTPUT (default: the latest, manifest.json's run_id)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of this format in DEST")
    hf = p.add_argument_group("hf")
    hf.add_argument("--shard-rows", type=int, default=1000, help="rows per Parquet shard (default 1000)")
    hf.add_argument("--no-images", action="store_true",
                    help="leave the original images out (image column null): no read access to INPUT needed")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    return p


@redacting
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.shard_rows < 1:
        parser.error(f"--shard-rows must be at least 1, got {args.shard_rows}")
    fs, dest = url_to_fs(args.dest)
    existing = [name for name in FORMATS[args.format][1] if fs.exists(posixpath.join(dest, name))]
    if existing and not args.overwrite:
        print(f"diffseg: error: DEST {redact_uri(args.dest)} already holds {', '.join(existing)}: pass --overwrite "
              "to replace it, or choose another DEST", file=sys.stderr)
        return EXIT_USAGE
    try:
        selection = select(args.output, args.run_id, args.method)
    except OutputError as exc:
        print(f"diffseg: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.overwrite:
        for name in existing:
            fs.rm(posixpath.join(dest, name), recursive=True)
    fs.makedirs(dest, exist_ok=True)
    try:
        if args.format == "coco":
            done = write_coco(selection, fs, dest)
        elif args.format == "voc":
            done = write_voc(selection, fs, dest)
        elif args.format == "hf":
            done = write_hf(selection, fs, dest, args.shard_rows, include_images=not args.no_images)
        else:
            done = write_labelstudio(selection, fs, dest)
    except (OSError, ValueError) as exc:
        print(f"diffseg: export FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    extra = f", {done['annotations']} annotations" if "annotations" in done else ""
    print(f"diffseg: exported {done['images']} images{extra} of method {selection.method!r}, run "
          f"{selection.run_id!r} of {redact_uri(args.output)} as {args.format} to {redact_uri(args.dest)}: "
          f"{', '.join(done['files'][:4])}{' ...' if len(done['files']) > 4 else ''}")
    return EXIT_OK
