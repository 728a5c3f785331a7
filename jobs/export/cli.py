"""Export a segment job's masks to the formats training and labelling tools read.

Reads only committed units of one run (default: the latest), locally or from object storage, and needs
no Ray and no GPU. ``--method M`` exports that method into DEST; without it every method of the run is
exported, into DEST when the run has one and into DEST/METHOD/ each when it has several (the demo runs
two). Every refusal (exit 2) comes before anything is written. The formats and their files are
described in diffseg.export (coco, voc, hf, labelstudio) and docs/export.md.
"""

from __future__ import annotations

import argparse
import logging
import posixpath
import sys

from fsspec.core import url_to_fs

from diffseg.argtypes import CommandParser
from diffseg.export.coco import write_coco
from diffseg.export.hf import write_hf
from diffseg.export.labelstudio import write_labelstudio
from diffseg.export.source import exportable_methods, select
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

several methods: a run that holds masks of several methods (as the demo's: diffsegmenter and seediff)
is exported one folder per method, DEST/METHOD/, unless --method picks one (then DEST itself).

examples:
  python -m jobs.export s3://lake/seg/ ./export/coco --format coco --method diffsegmenter
  python -m jobs.export ./seg ./export/voc --format voc --method seediff
  python -m jobs.export ./seg ./export/all --format coco              # DEST/diffsegmenter/, DEST/seediff/
  python -m jobs.export ./seg ./export/hf --format hf --method diffsegmenter --run-id nightly --no-images
  python -m jobs.export ./seg ./export/ls --format labelstudio --method diffsegmenter \\
      --image-prefix "$PWD/lake/=/data/local-files/?d=lake/"

exit codes: 0 exported; 1 failed while reading or writing (e.g. an image unreadable for --format hf);
2 bad options, no such OUTPUT, run or method, or DEST already holds an export (pass --overwrite)
"""


def prefix_option(text: str) -> tuple[str, str]:
    """argparse type of --image-prefix: FROM=TO."""
    from diffseg.export.labelstudio import parse_prefix

    try:
        return parse_prefix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m jobs.export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export the committed masks of a segment job's OUTPUT as COCO, VOC, a Hugging Face "
                    "dataset or Label Studio predictions.",
        epilog=EPILOG.format(formats="\n".join(f"  {name:12s} {what}" for name, (what, _) in FORMATS.items())))
    p.add_argument("output", metavar="OUTPUT", help="the segment job's OUTPUT (local path or s3://, gs://, file:// URL)")
    p.add_argument("dest", metavar="DEST", help="folder to write (local path or fsspec URL); created if missing")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="what to write (see below)")
    p.add_argument("--method", help="which method's masks (default: every method of the run, one DEST/METHOD/ "
                   "folder each; a run with one method is written to DEST itself)")
    p.add_argument("--run-id", help="which run of OUTPUT (default: the latest, manifest.json's run_id)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of this format in DEST")
    hf = p.add_argument_group("hf")
    hf.add_argument("--shard-rows", type=int, default=1000, help="rows per Parquet shard (default 1000)")
    hf.add_argument("--no-images", action="store_true",
                    help="leave the original images out (image column null): no read access to INPUT needed")
    ls = p.add_argument_group("labelstudio")
    ls.add_argument("--image-prefix", action="append", type=prefix_option, default=[], metavar="FROM=TO",
                    help="rewrite image URIs that start with FROM to start with TO (repeatable; first match wins), "
                    "e.g. \"$PWD/lake/=/data/local-files/?d=lake/\". Default: s3://, gs://, http(s):// kept (connect "
                    "the bucket as cloud storage); local paths become /data/local-files/?d=PATH (document root /)")
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
    if args.image_prefix and args.format != "labelstudio":
        parser.error("--image-prefix applies to --format labelstudio only")
    try:
        methods = [args.method] if args.method else exportable_methods(args.output, args.run_id)
        per_method = len(methods) > 1
        targets = [(select(args.output, args.run_id, method if per_method or args.method else None),
                    posixpath.join(args.dest, method) if per_method else args.dest)
                   for method in (methods or [None])]
    except OutputError as exc:
        print(f"diffseg: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    fs, _ = url_to_fs(args.dest)
    existing = {}
    for _, dest in targets:
        found = [name for name in FORMATS[args.format][1] if fs.exists(posixpath.join(url_to_fs(dest)[1], name))]
        if found:
            existing[dest] = found
    if existing and not args.overwrite:
        held = "; ".join(f"{redact_uri(dest)} holds {', '.join(names)}" for dest, names in existing.items())
        print(f"diffseg: error: DEST already holds an export ({held}): pass --overwrite to replace it, or choose "
              "another DEST", file=sys.stderr)
        return EXIT_USAGE
    if per_method:
        print(f"diffseg: run {targets[0][0].run_id!r} holds {len(methods)} methods ({', '.join(methods)}): one "
              f"folder each under {redact_uri(args.dest)} (--method picks one)")
    for selection, dest in targets:
        code = export_one(args, selection, dest, existing.get(dest, []))
        if code != EXIT_OK:
            return code
    return EXIT_OK


def export_one(args, selection, dest_url: str, existing: list[str]) -> int:
    """Writes one method's export to `dest_url` (replacing `existing`); prints its summary line."""
    fs, dest = url_to_fs(dest_url)
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
            done = write_labelstudio(selection, fs, dest, args.image_prefix)
    except (OSError, ValueError) as exc:
        print(f"diffseg: export FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    extra = f", {done['annotations']} annotations" if "annotations" in done else ""
    print(f"diffseg: exported {done['images']} images{extra} of method {selection.method!r}, run "
          f"{selection.run_id!r} of {redact_uri(args.output)} as {args.format} to {redact_uri(dest_url)}: "
          f"{', '.join(done['files'][:4])}{' ...' if len(done['files']) > 4 else ''}")
    if done.get("local"):
        print(f"diffseg: note: {done['local']} image(s) are local files: their tasks point at "
              "/data/local-files/?d=PATH, which Label Studio serves when started with "
              "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/ "
              "(or map a folder with --image-prefix FROM=TO; docs/export.md)", file=sys.stderr)
    return EXIT_OK
