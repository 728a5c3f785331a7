"""Evaluate a segment job's masks against ground-truth label maps: per-class IoU, mIoU, pixel accuracy.

Usage::

    python -m jobs.evaluate OUTPUT --gt GT_PREFIX --class-map MAP [--method M ...] [--run-id R]
        [--fit-split fit.txt --eval-split eval.txt | --holdout 0.5 --seed 0]
        [--fit tau [--tau-grid 0.05:0.95:0.05] | --fitted fitted.json | --tau 0.4] [--out DIR]

- **Ground truth**: a folder or prefix (any fsspec URL) of PNG label maps (grey or palette; PASCAL VOC
  convention: 255 = ignore), matched to the predictions by file stem (``.../2007_000032.jpg`` <->
  ``.../2007_000032.png``). Predictions are resized (nearest) to the ground truth's size if they differ.
- **Class map**: vocabulary class name -> ground-truth id, as JSON (``{"cat": 8, ...}``, or a list of
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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import posixpath
import sys
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from fsspec.core import url_to_fs

from diffseg.codecs.masks import decode_label_png, decode_scores_png
from diffseg.eval.metrics import (
    ConfusionMatrix,
    confusion_by_threshold,
    foreground_from_scores,
    iou_per_class,
    mean_iou,
    resize_nearest,
)
from diffseg.lake.read import OutputError, read_table, resolve_run, stem_of
from jobs.evaluate.markdown import to_markdown

IGNORE_INDEX = 255  # PASCAL VOC: object borders and "difficult" regions
DEFAULT_GRID = "0.05:0.95:0.05"  # candidate background thresholds for --fit tau (19 values)
DEFAULT_HOLDOUT = 0.5  # share of images held out for evaluation when --fit is given without a split
UNEVALUABLE = ("maskdiffusion-unsupervised",)  # its labels are segments, not vocabulary classes


class EvaluationError(ValueError):
    """The inputs of an evaluation are missing or inconsistent; the message says what to fix."""


# --- inputs -------------------------------------------------------------------------------------------


def load_class_map(path: str) -> dict[str, int]:
    """Class name -> ground-truth id from a JSON object, a JSON list (position = id) or `name: id` lines."""
    try:
        fs, p = url_to_fs(path)
        with fs.open(p, "rt") as handle:
            text = handle.read()
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"cannot read the class map {path!r}: {exc}") from exc
    mapping: dict[str, int] = {}
    try:
        data = json.loads(text)
    except ValueError:
        data = None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, sep, value = line.rpartition(":")
            if not sep or not name.strip() or not value.strip().lstrip("-").isdigit():
                raise EvaluationError(
                    f"class map {path}:{number}: expected `name: id`, got {line!r}"
                ) from None
            mapping[name.strip()] = int(value)
    if isinstance(data, dict):
        for name, value in data.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise EvaluationError(f"class map {path}: id of {name!r} must be an integer, got {value!r}")
            mapping[name.strip()] = value
    elif isinstance(data, list):
        mapping = {str(name).strip(): i for i, name in enumerate(data) if name is not None}
    elif data is not None:
        raise EvaluationError(f"class map {path}: expected a JSON object or list, got {type(data).__name__}")
    if not mapping:
        raise EvaluationError(f"class map {path} maps no class")
    bad = {n: i for n, i in mapping.items() if i < 0 or i == IGNORE_INDEX}
    if bad:
        raise EvaluationError(
            f"class map {path}: ids must be >= 0 and not the ignore id {IGNORE_INDEX}: {bad}"
        )
    return mapping


def build_lut(vocabulary: list[str], class_map: dict[str, int]) -> tuple[np.ndarray, dict[int, str]]:
    """(lut, names): lut[k] = ground-truth id of prediction label k (0 = background); names: id -> name."""
    norm = {name.casefold(): name for name in vocabulary}
    unknown = [n for n in class_map if n.casefold() not in norm and n.casefold() != "background"]
    if unknown:
        raise EvaluationError(
            f"class map names {unknown} are not in the run's vocabulary {vocabulary} "
            "(names are matched case-insensitively)"
        )
    by_name = {n.casefold(): i for n, i in class_map.items()}
    missing = [v for v in vocabulary if v.casefold() not in by_name]
    if missing:
        raise EvaluationError(
            f"vocabulary classes {missing} have no ground-truth id in the class map; "
            "map each one (to the background id to count it as background)"
        )
    background = by_name.get("background", 0)
    lut = np.array([background] + [by_name[v.casefold()] for v in vocabulary], dtype=np.int64)
    names: dict[int, list[str]] = {background: ["background"]}
    for name, gid in class_map.items():
        if name.casefold() != "background" and name.casefold() in norm:
            names.setdefault(gid, []).append(norm[name.casefold()])
    for name, gid in class_map.items():  # ids only named by a list map entry that is not in the vocabulary
        names.setdefault(gid, [name])
    return lut, {gid: " / ".join(ns) for gid, ns in names.items()}


def list_ground_truth(prefix: str) -> tuple[object, dict[str, str]]:
    """(fs, {stem: path}) of the PNG label maps below `prefix` (recursively)."""
    try:
        fs, root = url_to_fs(prefix)
        exists = fs.exists(root)
    except (ImportError, ValueError, OSError) as exc:
        raise EvaluationError(f"ground truth {prefix!r}: cannot open it ({exc})") from exc
    if not exists:
        raise EvaluationError(f"ground truth {prefix!r} does not exist")
    paths = sorted(p for p in fs.find(root) if p.lower().endswith(".png"))
    if not paths:
        raise EvaluationError(f"ground truth {prefix!r} holds no .png label maps")
    stems: dict[str, str] = {}
    for path in paths:
        stem = posixpath.splitext(posixpath.basename(path))[0]
        if stem in stems:
            raise EvaluationError(
                f"ground truth has two label maps with stem {stem!r}: {stems[stem]} and {path}"
            )
        stems[stem] = path
    return fs, stems


def read_ground_truth(fs, path: str) -> np.ndarray:
    """(H, W) integer label map of one ground-truth PNG (palette indices for palette PNGs)."""
    with fs.open(path, "rb") as handle:
        data = handle.read()
    try:
        return decode_label_png(data)
    except ValueError as exc:
        raise EvaluationError(
            f"ground truth {path}: {exc} (expected a grey or palette PNG of class ids)"
        ) from exc


def read_stems(path: str) -> set[str]:
    """Stems listed in a split file: one stem, path or URI per line; blank lines and # comments skipped."""
    try:
        fs, p = url_to_fs(path)
        with fs.open(p, "rt") as handle:
            lines = handle.read().splitlines()
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"cannot read the split file {path!r}: {exc}") from exc
    return {stem_of(line.split("#", 1)[0].strip()) for line in lines if line.split("#", 1)[0].strip()}


def in_holdout(stem: str, fraction: float, seed: int) -> bool:
    """Whether `stem` falls in the held-out (eval) fraction: a per-image hash, independent of the others."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def parse_grid(spec: str) -> np.ndarray:
    """Candidate thresholds from ``start:stop:step`` (stop included) or a comma list."""
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step <= 0:
                raise ValueError("step must be > 0")
            values = np.arange(start, stop + step / 2, step)
        else:
            values = np.array([float(x) for x in spec.split(",") if x.strip()])
    except ValueError as exc:
        raise EvaluationError(
            f"--tau-grid {spec!r}: expected start:stop:step or a comma list ({exc})"
        ) from exc
    if values.size == 0 or values.min() < 0 or values.max() > 1:
        raise EvaluationError(f"--tau-grid {spec!r}: thresholds must lie in [0, 1] (the stored score scale)")
    return np.round(values, 6)


def load_fitted(path: str) -> dict[str, dict]:
    """method -> fitted record from a fitted.json (keyed by method, or one flat record with "method")."""
    try:
        fs, p = url_to_fs(path)
        with fs.open(p, "rt") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"cannot read fitted values {path!r}: {exc}") from exc
    if isinstance(data, dict) and "method" in data:
        data = {data["method"]: data}
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "tau" in v for v in data.values()):
        raise EvaluationError(f"{path}: not a fitted.json written by jobs.evaluate --fit")
    return data


# --- evaluation ---------------------------------------------------------------------------------------


@dataclass
class Protocol:
    """Which images fit and which are reported, and why."""

    kind: str  # "all", "lists" or "holdout"
    fit: set[str] = field(default_factory=set)
    eval: set[str] = field(default_factory=set)
    holdout: float | None = None
    seed: int | None = None
    excluded_fitted: int = 0  # eval images dropped because a --fitted tau was fitted on them


def make_protocol(args, matched: set[str]) -> Protocol:
    """Split the matched stems into fit and eval sets from the command-line options."""
    if (args.fit_split or args.eval_split) and args.holdout is not None:
        raise EvaluationError("give either --fit-split/--eval-split or --holdout, not both")
    if args.fit_split or args.eval_split:
        fit = read_stems(args.fit_split) & matched if args.fit_split else set()
        evl = read_stems(args.eval_split) & matched if args.eval_split else matched - fit
        if args.eval_split and args.fit_split is None and args.fit:
            fit = matched - evl
        overlap = fit & evl
        if overlap:
            raise EvaluationError(
                f"{len(overlap)} images are in both the fit and the eval split (e.g. {sorted(overlap)[:3]}): "
                "fitting on reported images is what this protocol forbids"
            )
        return Protocol("lists", fit if args.fit else set(), evl)
    if args.holdout is not None or args.fit:
        fraction = DEFAULT_HOLDOUT if args.holdout is None else args.holdout
        if not 0 < fraction < 1:
            raise EvaluationError(f"--holdout must be in (0, 1), got {fraction}")
        evl = {s for s in matched if in_holdout(s, fraction, args.seed)}
        return Protocol("holdout", matched - evl, evl, fraction, args.seed)
    return Protocol("all", set(), set(matched))


def stems_to_uris(uris) -> dict[str, str]:
    """{stem: uri}; EvaluationError when two different URIs share a stem (they cannot be matched by stem)."""
    out: dict[str, str] = {}
    for uri in sorted(uris):
        stem = stem_of(uri)
        if stem in out:
            raise EvaluationError(
                f"two images share the stem {stem!r} ({out[stem]}, {uri}): cannot match by stem"
            )
        out[stem] = uri
    return out


@dataclass
class Predictions:
    """One method's matched mask rows and the ground truth each is scored against."""

    method: str
    table: pa.Table  # columns uri, label_map_png, scores_png
    row_of: dict[str, int]  # stem -> row of `table`
    gt_fs: object
    gt_paths: dict[str, str]  # stem -> ground-truth PNG path
    lut: np.ndarray  # (1 + K,) prediction label -> ground-truth id

    def pairs(self, stems: set[str]):
        """(ground truth (H, W), mask row dict) of each stem, in stem order."""
        for stem in sorted(stems):
            i = self.row_of[stem]
            row = {name: self.table[name][i].as_py() for name in self.table.column_names}
            yield read_ground_truth(self.gt_fs, self.gt_paths[stem]), row

    def job_labels(self, row: dict, size: tuple[int, int]) -> np.ndarray:
        """The job's label map, in ground-truth ids, resized (nearest) to `size`."""
        label = decode_label_png(row["label_map_png"])
        if label.size and int(label.max()) >= len(self.lut):
            raise EvaluationError(
                f"{row['uri']}: label {int(label.max())} is beyond the vocabulary ({len(self.lut) - 1} classes)"
            )
        return self.lut[resize_nearest(label, size)]

    def foreground(self, row: dict, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(best class score, best class label) per pixel at `size`, from the saved scores."""
        if row.get("scores_png") is None:
            raise EvaluationError(
                f"method {self.method!r}: {row['uri']} has no saved scores (scores_png), which refitting or "
                "applying a threshold needs; re-run the job with --save-scores"
            )
        scores = decode_scores_png(row["scores_png"])
        if scores.shape[0] != len(self.lut):
            raise EvaluationError(
                f"{row['uri']}: scores hold {scores.shape[0]} channels, the vocabulary needs {len(self.lut)} (1 + K)"
            )
        return foreground_from_scores(scores, size)


def _pad(cms: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad the last two (N, N) axes of `cms` to (n, n)."""
    extra = n - cms.shape[-1]
    return cms if extra <= 0 else np.pad(cms, [(0, 0)] * (cms.ndim - 2) + [(0, extra), (0, extra)])


def sweep(preds: Predictions, stems: set[str], grid: np.ndarray) -> np.ndarray:
    """(T, N, N) confusion matrices summed over `stems`, one per background threshold of `grid`."""
    total = np.zeros((len(grid), 1, 1), dtype=np.int64)
    for gt, row in preds.pairs(stems):
        fg_score, fg_label = preds.foreground(row, gt.shape)
        valid = gt[gt != IGNORE_INDEX]
        n = max(int(preds.lut.max()), int(valid.max()) if valid.size else 0, total.shape[-1] - 1) + 1
        cms = confusion_by_threshold(fg_score, fg_label, gt, grid, preds.lut, n, IGNORE_INDEX)
        total = _pad(total, n) + cms
    return total


def choose_tau(grid: np.ndarray, cms: np.ndarray) -> tuple[float, float, list]:
    """(tau, its mIoU, curve): the best mIoU's threshold; ties -> the middle of the tied thresholds."""
    scores = np.array([mean_iou(cm) for cm in cms])
    if np.isnan(scores).all():
        raise EvaluationError("the fit split has no counted pixels (all ignore?); cannot fit tau")
    best = np.nanmax(scores)
    tied = np.flatnonzero(scores >= best - 1e-12)
    pick = tied[len(tied) // 2]
    return float(grid[pick]), float(scores[pick]), [[float(t), _num(s)] for t, s in zip(grid, scores)]


def evaluate_split(
    preds: Predictions, stems: set[str], tau: float | None
) -> tuple[ConfusionMatrix, ConfusionMatrix | None]:
    """(cm of the evaluated labels, cm of the job's own labels when `tau` relabels them, else None)."""
    size = int(preds.lut.max()) + 1
    evaluated = ConfusionMatrix(size, IGNORE_INDEX)
    as_run = ConfusionMatrix(size, IGNORE_INDEX) if tau is not None else None
    for gt, row in preds.pairs(stems):
        job = preds.job_labels(row, gt.shape)
        if tau is None:
            evaluated.update(job, gt)
            continue
        fg_score, fg_label = preds.foreground(row, gt.shape)
        evaluated.update(np.where(fg_score > tau, preds.lut[fg_label], preds.lut[0]), gt)
        as_run.update(job, gt)
    return evaluated, as_run


def _num(x) -> float | None:
    """JSON-safe float: NaN -> None."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _summary(cm: ConfusionMatrix) -> dict:
    return {"images": cm.images, "miou": _num(cm.miou()), "pixel_accuracy": _num(cm.accuracy())}


def evaluate_method(
    args, preds: Predictions, protocol: Protocol, grid: np.ndarray, fitted: dict, run: dict
) -> dict:
    """One method's entry of metrics.json: tau (job's, fitted here, from --fitted or --tau) and figures."""
    method = preds.method
    entry: dict = {}
    tau, source = None, "job"
    if args.fit:
        if not protocol.fit:
            raise EvaluationError(
                f"method {method!r}: the fit split is empty; give --fit-split or a larger --holdout share"
            )
        tau, fit_miou, curve = choose_tau(grid, sweep(preds, protocol.fit, grid))
        source = "fit"
        entry["fit"] = {
            "method": method,
            "param": "tau",
            "tau": tau,
            "fit_miou": fit_miou,
            "n_fit": len(protocol.fit),
            "grid": [float(t) for t in grid],
            "curve": curve,
            "run_id": run["run_id"],
            "vocab_hash": run["vocab_hash"],
            "fit_stems": sorted(protocol.fit),
        }
    elif args.tau is not None:
        tau, source = args.tau, "given"
    elif fitted:
        if method not in fitted:
            raise EvaluationError(
                f"{args.fitted} holds no fitted tau for method {method!r} (it has {sorted(fitted)})"
            )
        record = fitted[method]
        if record.get("vocab_hash") not in (None, run["vocab_hash"]):
            print(
                f"warning: {args.fitted} was fitted on another vocabulary ({record['vocab_hash']})",
                file=sys.stderr,
            )
        tau, source = float(record["tau"]), "fitted"
        before = len(protocol.eval)
        protocol.eval -= set(record.get("fit_stems", ()))  # never report on the images tau was fitted on
        protocol.excluded_fitted = before - len(protocol.eval)
    if not protocol.eval:
        raise EvaluationError(
            f"method {method!r}: the eval split is empty (no matched image left to report on)"
        )
    cm, as_run = evaluate_split(preds, protocol.eval, tau)
    entry.update(
        {
            "tau": tau,
            "tau_source": source,
            **_summary(cm),
            "iou": [_num(x) for x in iou_per_class(cm.cm)],
            "confusion_matrix": cm.cm.tolist(),
            "as_run": _summary(as_run) if as_run is not None else None,
            "protocol": {
                "split": protocol.kind,
                "holdout": protocol.holdout,
                "seed": protocol.seed,
                "n_fit": len(protocol.fit),
                "n_eval": len(protocol.eval),
                "excluded_fitted": protocol.excluded_fitted,
            },
        }
    )
    return entry


def run(args) -> dict:
    """Evaluate per the parsed command line; writes nothing. Returns the result dict (metrics.json)."""
    if sum(x is not None for x in (args.fit, args.fitted, args.tau)) > 1:
        raise EvaluationError("give at most one of --fit, --fitted and --tau")
    try:
        run_id, vocabulary, _ = resolve_run(args.output, args.run_id)
    except OutputError as exc:
        raise EvaluationError(str(exc)) from exc
    lut, gt_names = build_lut(vocabulary, load_class_map(args.class_map))
    gt_fs, gt_paths = list_ground_truth(args.gt)
    grid = parse_grid(args.tau_grid)
    fitted = load_fitted(args.fitted) if args.fitted else {}

    index = read_table(args.output, "masks", ["uri", "method", "vocab_hash", "model"], run_id=run_id)
    if index.num_rows == 0:
        raise EvaluationError(f"OUTPUT {args.output!r} has no committed masks (run {run_id!r})")
    hashes = sorted(set(index["vocab_hash"].to_pylist()))
    if len(hashes) > 1:
        raise EvaluationError(
            f"OUTPUT holds runs with different vocabularies ({hashes}); pick one with --run-id"
        )
    uris_by_method: dict[str, set[str]] = {}
    for uri, method in zip(index["uri"].to_pylist(), index["method"].to_pylist()):
        uris_by_method.setdefault(method, set()).add(uri)
    methods = args.method or [m for m in sorted(uris_by_method) if m not in UNEVALUABLE]
    wrong = [m for m in methods if m not in uris_by_method or m in UNEVALUABLE]
    if wrong:
        raise EvaluationError(
            f"cannot evaluate methods {wrong}: OUTPUT has {sorted(uris_by_method)} "
            f"({UNEVALUABLE[0]} names segments, not classes)"
        )

    result = {
        "output": args.output,
        "run_id": run_id,
        "gt": args.gt,
        "class_map": args.class_map,
        "vocabulary": vocabulary,
        "vocab_hash": hashes[0],
        "model": index["model"][0].as_py(),
        "ignore_index": IGNORE_INDEX,
        "methods": {},
    }
    for method in methods:
        uri_of = stems_to_uris(uris_by_method[method])
        matched = set(uri_of) & set(gt_paths)
        if not matched:
            raise EvaluationError(
                f"no prediction of {method!r} matches a ground-truth file by stem: predictions like "
                f"{sorted(uri_of)[:3]}, ground truth like {sorted(gt_paths)[:3]}"
            )
        columns = ["uri", "label_map_png", "scores_png"]
        table = read_table(args.output, "masks", columns, run_id, [method], uris={uri_of[s] for s in matched})
        first_row = {uri: i for i, uri in reversed(list(enumerate(table["uri"].to_pylist())))}
        preds = Predictions(method, table, {s: first_row[uri_of[s]] for s in matched}, gt_fs, gt_paths, lut)
        entry = evaluate_method(args, preds, make_protocol(args, matched), grid, fitted, result)
        entry["matching"] = {
            "predictions": len(uri_of),
            "ground_truth": len(gt_paths),
            "matched": len(matched),
            "predictions_without_gt": sorted(set(uri_of) - matched)[:20],
            "gt_without_prediction": len(set(gt_paths) - set(uri_of)),
        }
        result["methods"][method] = entry
    n = max(len(e["iou"]) for e in result["methods"].values())
    for e in result["methods"].values():  # one class list for all methods
        e["iou"] += [None] * (n - len(e["iou"]))
        e["confusion_matrix"] = _pad(np.array(e["confusion_matrix"]), n).tolist()
    result["classes"] = [
        {"id": i, "name": gt_names.get(i, f"class {i}"), "in_class_map": i in gt_names} for i in range(n)
    ]
    return result


# --- output -------------------------------------------------------------------------------------------


def write_outputs(result: dict, out: str) -> list[str]:
    """Writes metrics.json, metrics.md and (after --fit) fitted.json under `out`; returns their paths."""
    fs, root = url_to_fs(out)
    fs.makedirs(root, exist_ok=True)
    files = {"metrics.json": json.dumps(result, indent=1) + "\n", "metrics.md": to_markdown(result)}
    fits = {m: e["fit"] for m, e in result["methods"].items() if e.get("fit")}
    if fits:
        files["fitted.json"] = json.dumps(fits, indent=1) + "\n"
    written = []
    for name, text in files.items():
        path = posixpath.join(root, name)
        with fs.open(path, "wt") as handle:
            handle.write(text)
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("output", metavar="OUTPUT", help="the segment job's OUTPUT (folder or fsspec URL)")
    p.add_argument("--gt", required=True, help="folder/prefix of ground-truth PNG label maps (255 = ignore)")
    p.add_argument(
        "--class-map", required=True, help="vocabulary name -> ground-truth id (JSON or `name: id` lines)"
    )
    p.add_argument("--method", action="append", help="evaluate only this method (repeatable); default: all")
    p.add_argument("--run-id", help="which run of OUTPUT (default: the latest invocation's)")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = run(args)
        written = write_outputs(result, args.out)
    except EvaluationError as exc:
        parser.exit(2, f"error: {exc}\n")
    sys.stdout.write(to_markdown(result))
    print("\nwrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
