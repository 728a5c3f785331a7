"""Evaluate a segment job's masks against ground-truth label maps: per-class IoU, mIoU, pixel accuracy.

Usage::

    python -m jobs.evaluate OUTPUT[#RUN_ID] [OUTPUT[#RUN_ID] ...] --gt GT_PREFIX --class-map MAP
        [--method M ...] [--run-id R ...]
        [--fit-split fit.txt --eval-split eval.txt | --holdout 0.5 --seed 0]
        [--fit tau [--tau-grid 0.05:0.95:0.05] | --fitted fitted.json | --tau 0.4] [--out DIR]

- **Ground truth**: a folder or prefix (any fsspec URL) of PNG label maps (grey or palette; PASCAL VOC
  convention: 255 = ignore), matched to the predictions by file stem (``.../2007_000032.jpg`` <->
  ``.../2007_000032.png``). Predictions are resized (nearest) to the ground truth's size if they differ.
- **Class map**: a built-in benchmark (``voc21``, ``context60``, ``coco_object``: official ids and names,
  :mod:`diffseg.eval.benchmarks`) or a file mapping vocabulary class name -> ground-truth id, as JSON (``{"cat": 8, ...}``, or a list of
  names whose positions are the ids) or text lines ``cat: 8``. Several names may share an id (aliases).
  Label 0 (background) maps to ``background``'s id when given, else 0. Every vocabulary class must be
  mapped (map a class to the background id to count it as background); a name not in the vocabulary
  is an error.
- **Honest protocol.** ``--fit tau`` refits the background threshold on the FIT split only, from the
  saved scores (``scores_png``, written by ``jobs.segment --save-scores``): label = argmax over
  [tau, s_1..s_K] upsampled to the ground truth's size, for each tau of a grid; the tau of the best fit
  mIoU wins (ties: the middle of the best plateau). Figures are then reported on the EVAL split only,
  which never influenced the choice. Splits come from ``--fit-split``/``--eval-split`` files (one stem,
  path or URI per line) or ``--holdout F``: an image goes to the eval split when the first 8 bytes of
  sha256(f"{seed}:{stem}"), read as a fraction of 2**64, are below F, so an image's split never depends
  on the other images (it stays put when the dataset grows). ``--fit`` without a split option uses
  ``--holdout 0.5``.
  The fitted values go to ``fitted.json``; a later run passes it back with ``--fitted`` (the images it
  was fitted on are then left out of the evaluation). Without a split option and without fitting, all
  matched images are evaluated with the labels the job wrote.
- **Scale of tau**: scores are stored quantised to [0, 1] (``diffseg.codecs.masks.encode_scores_png``), so tau
  is on that scale; for DiffSegmenter it is the paper's tau. Only the background threshold can be
  refitted from saved scores: a class the category filter removed is stored as 0 and stays removed.
- **Outputs** (in ``--out``, default ``./evaluation``): ``metrics.json`` (everything, fractions in
  [0, 1], NaN as null), ``metrics.md`` (tables, percent), ``fitted.json`` (with ``--fit``). The Markdown
  is also printed.

Several methods in OUTPUT are evaluated side by side (each with its own fitted tau);
``maskdiffusion-unsupervised`` names segments, not vocabulary classes, and is skipped.

**Settings side by side.** Several runs (several OUTPUTs, ``OUTPUT#RUN_ID``, or ``--run-id`` repeated:
each applies to every OUTPUT written without ``#``) are compared: each (run, method) is evaluated on the
images all runs have, with its own tau fitted on FIT, and ranked by EVAL mIoU in ``comparison.md`` /
``comparison.json`` with the settings that differ (read from each run's manifest); ``fitted.json`` then
holds the winning run's fitted values. ``--fitted`` applies to one run only.

This module only parses the command line, prints and writes files; the evaluation is
:func:`diffseg.eval.evaluate.evaluate_output` (class maps, splits and the tau fit live in diffseg.eval).
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys

from fsspec.core import url_to_fs

from diffseg.argtypes import CommandParser
from diffseg.eval.compare import compare_runs, fitted_of, parse_runs, winner_fits
from diffseg.eval.errors import EvaluationError
from diffseg.eval.evaluate import evaluate_output
from diffseg.eval.protocol import DEFAULT_GRID, Split, parse_grid, read_stems
from diffseg.redact import redacting
from jobs.evaluate.markdown import comparison_markdown, to_markdown


def split_of(args) -> Split:
    """The --fit-split/--eval-split/--holdout/--seed options as a Split (split files read here)."""
    return Split(
        fit=read_stems(args.fit_split) if args.fit_split else None,
        eval=read_stems(args.eval_split) if args.eval_split else None,
        holdout=args.holdout,
        seed=args.seed,
    )


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def run(args) -> dict:
    """Evaluate per the parsed command line; writes nothing. Returns the result dict: metrics.json for
    one run, comparison.json (with ``ranking``) for several."""
    if sum(x is not None for x in (args.fit, args.fitted, args.tau)) > 1:
        raise EvaluationError("give at most one of --fit, --fitted and --tau")
    grid = parse_grid(args.tau_grid)
    runs = parse_runs(args.output, args.run_id)
    options = dict(methods=args.method, split=split_of(args), fit_grid=grid if args.fit else None, tau=args.tau,
                   warn=warn)
    if len(runs) > 1:
        if args.fitted:
            raise EvaluationError(
                "--fitted applies to one run; to compare runs, refit each with --fit tau (or give --tau)"
            )
        return compare_runs(runs, args.gt, args.class_map, **options)
    return evaluate_output(
        runs[0].output, args.gt, args.class_map, run_id=runs[0].run_id, fitted_uri=args.fitted, **options
    )


def write_outputs(result: dict, out: str) -> tuple[str, list[str]]:
    """Writes metrics.json and metrics.md (comparison.json and comparison.md for several runs) and, after
    --fit, fitted.json (of the winning run in a comparison) under `out`; returns the Markdown it wrote
    and the files' paths."""
    fs, root = url_to_fs(out)
    fs.makedirs(root, exist_ok=True)
    markdown = markdown_of(result)
    if "ranking" in result:  # a comparison of several runs
        files = {"comparison.json": json.dumps(result, indent=1) + "\n", "comparison.md": markdown}
        fits = winner_fits(result)
    else:
        files = {"metrics.json": json.dumps(result, indent=1) + "\n", "metrics.md": markdown}
        fits = fitted_of(result)
    if fits:
        files["fitted.json"] = json.dumps(fits, indent=1) + "\n"
    written = []
    for name, text in files.items():
        path = posixpath.join(root, name)
        with fs.open(path, "wt") as handle:
            handle.write(text)
        written.append(path)
    return markdown, written


def markdown_of(result: dict) -> str:
    """metrics.md of one run, or comparison.md of several."""
    return comparison_markdown(result) if "ranking" in result else to_markdown(result)


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[0],
                      epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "output", metavar="OUTPUT[#RUN_ID]", nargs="+",
        help="the segment job's OUTPUT (folder or fsspec URL), #RUN_ID for one of its runs; several runs are compared",
    )
    p.add_argument("--gt", required=True, help="folder/prefix of ground-truth PNG label maps (255 = ignore)")
    p.add_argument(
        "--class-map", required=True,
        help="voc21, context60, coco_object (built in), or a file: vocabulary name -> ground-truth id",
    )
    p.add_argument("--method", action="append", help="evaluate only this method (repeatable); default: all")
    p.add_argument(
        "--run-id", action="append",
        help="which run of OUTPUT (default: the latest invocation's); repeat to compare runs of one OUTPUT",
    )
    p.add_argument("--fit-split", help="file of stems to fit on (one per line)")
    p.add_argument("--eval-split", help="file of stems to report on (one per line)")
    p.add_argument("--holdout", type=float, help="share of images held out for evaluation, by stem hash")
    p.add_argument("--seed", type=int, default=0, help="seed of the --holdout hash (default 0)")
    p.add_argument("--fit", choices=["tau"], help="refit the background threshold on the fit split")
    p.add_argument(
        "--tau-grid", default=DEFAULT_GRID, help=f"candidates for --fit tau (default {DEFAULT_GRID})"
    )
    p.add_argument("--fitted", help="apply the tau of a fitted.json from an earlier --fit run")
    p.add_argument("--tau", type=float, help="apply this background threshold (relabels from saved scores)")
    p.add_argument("--out", default="evaluation", help="folder for metrics.json, metrics.md, fitted.json")
    return p


EPILOG = """\
examples:
  # fit the background threshold on train.txt, report on val.txt (the job ran with --save-scores)
  python -m jobs.evaluate s3://lake/voc-seg/ --gt s3://data/VOC2012/SegmentationClass/ --class-map voc21 \\
      --fit tau --fit-split train.txt --eval-split val.txt --out eval/

  # two runs of one OUTPUT side by side (say, joint vs per-class context), ranked on a held-out share
  python -m jobs.evaluate 'out/#joint' 'out/#per-class' --gt gt/ --class-map voc21 --fit tau --holdout 0.5

exit codes: 0 evaluated (metrics.json, metrics.md and, with --fit, fitted.json written), 2 bad option
or unusable input (no manifest, no ground truth matched, unknown class names, --fit without saved scores).
"""


@redacting
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = run(args)
        markdown, written = write_outputs(result, args.out)
    except EvaluationError as exc:
        parser.exit(2, f"error: {exc}\n")
    sys.stdout.write(markdown)
    print("\nwrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
