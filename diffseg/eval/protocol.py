"""The honest protocol: which images fit the background threshold, which are reported, and the fit itself.

- **Splits.** Either lists of stems (a FIT list, an EVAL list, or both; one alone means "the rest" for
  the other) or a holdout by stem hash: an image is in EVAL when the first 8 bytes of
  sha256(f"{seed}:{stem}"), read as a fraction of 2**64, are below the holdout share, so an image's split
  never depends on the other images (it stays put when the dataset grows).
- **Fitting tau.** For each threshold of a grid, label = argmax over [tau, s_1..s_K] (the scores
  upsampled to the ground truth's size); the confusion matrices are summed over the FIT images, and the
  tau of the best mIoU wins (ties: the middle of the tied thresholds).

Pure functions on values (stems, arrays, grids); reading split files is :func:`read_stems`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from diffseg.eval.errors import EvaluationError
from diffseg.eval.ground_truth import IGNORE_INDEX
from diffseg.eval.metrics import confusion_by_threshold, mean_iou
from diffseg.lake.read import stem_of

DEFAULT_GRID = "0.05:0.95:0.05"  # candidate background thresholds for fitting tau (19 values)
DEFAULT_HOLDOUT = 0.5  # share of images held out for evaluation when fitting without a split


@dataclass(frozen=True)
class Split:
    """How to split matched images: stem lists (``fit``/``eval``, None = not given) or a holdout share."""

    fit: frozenset[str] | None = None  # stems to fit on
    eval: frozenset[str] | None = None  # stems to report on
    holdout: float | None = None  # share held out for EVAL, by stem hash (DEFAULT_HOLDOUT when fitting)
    seed: int = 0  # seed of the holdout hash


@dataclass
class Protocol:
    """Which images fit and which are reported, and why."""

    kind: str  # "all", "lists" or "holdout"
    fit: set[str] = field(default_factory=set)
    eval: set[str] = field(default_factory=set)
    holdout: float | None = None
    seed: int | None = None
    excluded_fitted: int = 0  # eval images dropped because a given fitted tau was fitted on them


def read_stems(path: str) -> frozenset[str]:
    """Stems listed in a split file: one stem, path or URI per line; blank lines and # comments skipped."""
    from fsspec.core import url_to_fs

    try:
        fs, p = url_to_fs(path)
        with fs.open(p, "rt") as handle:
            lines = handle.read().splitlines()
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"cannot read the split file {path!r}: {exc}") from exc
    return frozenset(
        stem_of(line.split("#", 1)[0].strip()) for line in lines if line.split("#", 1)[0].strip()
    )


def in_holdout(stem: str, fraction: float, seed: int) -> bool:
    """Whether `stem` falls in the held-out (eval) fraction: a per-image hash, independent of the others."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def make_protocol(matched: set[str], split: Split, fitting: bool) -> Protocol:
    """Split the `matched` stems into FIT and EVAL sets.

    `fitting`: whether tau is fitted (without a split, it holds out DEFAULT_HOLDOUT; without fitting
    the FIT set is empty). Without lists or holdout and not fitting: every matched stem is EVAL.
    """
    lists = split.fit is not None or split.eval is not None
    if lists and split.holdout is not None:
        raise EvaluationError("give either --fit-split/--eval-split or --holdout, not both")
    if lists:
        fit = split.fit & matched if split.fit is not None else set()
        evl = split.eval & matched if split.eval is not None else matched - fit
        if split.eval is not None and split.fit is None and fitting:
            fit = matched - evl
        overlap = fit & evl
        if overlap:
            raise EvaluationError(
                f"{len(overlap)} images are in both the fit and the eval split (e.g. {sorted(overlap)[:3]}): "
                "fitting on reported images is what this protocol forbids"
            )
        return Protocol("lists", set(fit) if fitting else set(), set(evl))
    if split.holdout is not None or fitting:
        fraction = DEFAULT_HOLDOUT if split.holdout is None else split.holdout
        if not 0 < fraction < 1:
            raise EvaluationError(f"--holdout must be in (0, 1), got {fraction}")
        evl = {s for s in matched if in_holdout(s, fraction, split.seed)}
        return Protocol("holdout", matched - evl, evl, fraction, split.seed)
    return Protocol("all", set(), set(matched))


def parse_grid(spec: str) -> np.ndarray:
    """(T,) candidate thresholds from ``start:stop:step`` (stop included) or a comma list, rounded to 1e-6."""
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


def pad_confusion(cms: np.ndarray, n: int) -> np.ndarray:
    """`cms` (..., N, N) zero-padded on its last two axes to (..., n, n) (unchanged when N >= n)."""
    extra = n - cms.shape[-1]
    return cms if extra <= 0 else np.pad(cms, [(0, 0)] * (cms.ndim - 2) + [(0, extra), (0, extra)])


def sweep(
    images: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], grid: np.ndarray, lut: np.ndarray
) -> np.ndarray:
    """(T, N, N) int64 confusion matrices summed over `images`, one per background threshold of `grid`.

    images: (fg_score (H, W) float, fg_label (H, W) int in 1..K, gt (H, W) int) per image, as
    :func:`diffseg.eval.metrics.foreground_from_scores` gives them at the ground truth's size;
    lut: (1 + K,) prediction label -> ground-truth id. N = 1 + the largest id seen (IGNORE_INDEX aside).
    """
    total = np.zeros((len(grid), 1, 1), dtype=np.int64)
    for fg_score, fg_label, gt in images:
        valid = gt[gt != IGNORE_INDEX]
        n = max(int(lut.max()), int(valid.max()) if valid.size else 0, total.shape[-1] - 1) + 1
        cms = confusion_by_threshold(fg_score, fg_label, gt, grid, lut, n, IGNORE_INDEX)
        total = pad_confusion(total, n) + cms
    return total


def choose_tau(grid: np.ndarray, cms: np.ndarray) -> tuple[float, float, list[list]]:
    """(tau, its mIoU, curve) from (T,) thresholds and their (T, N, N) confusion matrices.

    The best mIoU's threshold; several tied -> the middle one of them. curve: [[tau, mIoU or None], ...].
    EvaluationError when no threshold has a counted pixel.
    """
    scores = np.array([mean_iou(cm) for cm in cms])
    if np.isnan(scores).all():
        raise EvaluationError("the fit split has no counted pixels (all ignore?); cannot fit tau")
    best = np.nanmax(scores)
    tied = np.flatnonzero(scores >= best - 1e-12)
    pick = tied[len(tied) // 2]
    return float(grid[pick]), float(scores[pick]), [[float(t), json_number(s)] for t, s in zip(grid, scores)]


def json_number(x) -> float | None:
    """JSON-safe float: NaN (and None) -> None."""
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)
