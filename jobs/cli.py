"""``diffseg``: the one console script. ``diffseg COMMAND ARGS...`` runs ``main(ARGS)`` of the command's
module, imported only then, so ``diffseg image`` (and ``--help``, ``--version``) works without Ray.

Every command is also ``python -m jobs.NAME`` (``image``: ``python -m diffseg``) with the same options.
For backwards compatibility ``diffseg photo.jpg ... --vocab ...`` (images or options first, no command)
is ``diffseg image photo.jpg ...``, as the console script did before it had commands.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

# name -> (module whose main(argv) runs it, one line for `diffseg --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("jobs.segment.cli", "segment an image lake into Parquet masks, statistics and errors (Ray job)"),
    "synthesize": ("jobs.synthesize.cli", "generate (image, mask) training pairs from class names (Ray job)"),
    "evaluate": ("jobs.evaluate.cli", "per-class IoU and mIoU against ground truth; fit the background threshold"),
    "report": ("jobs.report.cli", "a static HTML gallery of a run: overlays, class counts, errors, manifest"),
    "export": ("jobs.export.cli", "a run as COCO JSON, VOC PNGs, a Hugging Face dataset or Label Studio tasks"),
    "status": ("jobs.status.cli", "a run's state and outcome from its manifest, as an exit code for schedulers"),
    "bench": ("jobs.bench.cli", "time and peak memory of each method as a ratio to one plain U-Net forward"),
    "image": ("diffseg.__main__", "segment single images into label-map PNGs, overlays and JSON (no Ray needed)"),
}

HELP = """usage: diffseg COMMAND [ARGS...]        (diffseg COMMAND --help: the command's options)
       diffseg IMAGE... --vocab CLASSES  (the same as: diffseg image IMAGE... --vocab CLASSES)
       diffseg --version

Training-free open-vocabulary semantic segmentation from a frozen Stable Diffusion U-Net's attention.

commands:
{commands}

options:
  -h, --help  show this help and exit
  --version   print the installed diffseg version and exit

exit codes (each command's --help says what they mean there):
  0  success (a job with nothing left to do, too)
  1  the run failed (jobs: committed work is kept, rerun the same command to finish)
  2  bad option, failed check or refused run (nothing was done)
  3  finished with more errors than --max-error-fraction (segment, synthesize; status reports it again)

examples:
  diffseg segment s3://lake/images/ s3://lake/masks/ --vocab classes.txt --model s3://models/sd15/
  diffseg status s3://lake/masks/ || alert "diffseg nightly: exit $?"
  diffseg export s3://lake/masks/ ./export/coco --format coco --method diffsegmenter
  diffseg image photo.jpg --vocab "person, car, road" --model tiny --out out/

Every command is also `python -m jobs.NAME` (image: `python -m diffseg`)."""


def help_text() -> str:
    """The text of ``diffseg --help``: every command with its one line, exit codes and examples."""
    width = max(map(len, COMMANDS))
    return HELP.format(commands="\n".join(f"  {name:{width}s}  {line}" for name, (_, line) in COMMANDS.items()))


def version() -> str:
    """The installed distribution's version (importlib.metadata), without importing the package."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("diffseg")
    except PackageNotFoundError:
        return "unknown (not installed: pip install .)"


def looks_like_image_use(first: str) -> bool:
    """Whether an argument that names no command starts today's single-image use: an option (``--vocab``)
    or something path-like (``photo.jpg``, ``dir/x``, ``s3://...``)."""
    return first.startswith("-") or any(c in first for c in "./\\:")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``diffseg ARGV`` and returns the exit code (argparse's own exits pass through as SystemExit)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(help_text(), file=sys.stderr)
        return 2
    first, rest = args[0], args[1:]
    if first in ("-h", "--help"):
        print(help_text())
        return 0
    if first == "--version":
        print(f"diffseg {version()}")
        return 0
    if first == "help" and rest and rest[0] in COMMANDS:
        first, rest = rest[0], ["--help"]
    if first not in COMMANDS:
        if not looks_like_image_use(first):
            near = difflib.get_close_matches(first, list(COMMANDS), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            print(f"diffseg: error: unknown command {first!r}{hint}; commands: {', '.join(COMMANDS)} "
                  "(diffseg --help lists them)", file=sys.stderr)
            return 2
        first, rest = "image", args
    from diffseg.argtypes import set_called_as

    previous = set_called_as(f"diffseg {first}")  # usage lines and errors say `diffseg segment`, as typed
    try:
        module = importlib.import_module(COMMANDS[first][0])
        code = module.main(rest)
    finally:
        set_called_as(previous)
    return 0 if code is None else int(code)


def console_main() -> None:
    """The ``diffseg`` console script: :func:`main`, then the process ends with its exit code through
    jobs.common.process_exit (never an abort at interpreter exit)."""
    from jobs.common.process_exit import run_command

    run_command(main)


if __name__ == "__main__":
    console_main()
