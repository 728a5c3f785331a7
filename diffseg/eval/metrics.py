"""Segmentation metrics on label maps: confusion matrix, per-class IoU, mIoU, pixel accuracy.

Pure numpy; no model, no IO. Conventions:

- A confusion matrix ``cm`` is an (N, N) int64 array, **rows = ground truth, columns = prediction**,
  ``cm[g, p]`` = number of pixels of ground-truth class ``g`` predicted as ``p``.
- Ground-truth pixels equal to ``ignore_index`` (PASCAL VOC: 255, object borders and "difficult"
  regions) are left out of every figure.
- ``iou_per_class`` is NaN for a class that appears neither in the ground truth nor in the prediction
  (0/0); ``mean_iou`` is the mean over the other classes. This is the usual dataset-level mIoU: the
  confusion matrix is summed over all images first, then the IoU is taken once.

It also turns stored per-class scores back into label maps for a chosen background threshold, so that
``jobs.evaluate`` can refit that threshold on a held-out split without re-running the model
(:func:`foreground_from_scores`, :func:`confusion_by_threshold`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ConfusionMatrix",
    "confusion_by_threshold",
    "confusion_matrix",
    "foreground_from_scores",
    "iou_per_class",
    "mean_iou",
    "pixel_accuracy",
    "resize_bilinear",
    "resize_nearest",
]


def _valid_pairs(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None):
    """Flattened (gt, pred) int64 pairs of the pixels that count; validates labels and shapes."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    g = gt.reshape(-1).astype(np.int64, copy=False)
    p = pred.reshape(-1).astype(np.int64, copy=False)
    if ignore_index is not None:
        keep = g != ignore_index
        g, p = g[keep], p[keep]
    for name, arr in (("ground-truth", g), ("predicted", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            bad = arr[(arr < 0) | (arr >= num_classes)][0]
            raise ValueError(
                f"{name} label {int(bad)} is outside [0, {num_classes}) "
                f"(ignore_index={ignore_index}); pass a larger num_classes or map the label"
            )
    return g, p


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """(N, N) int64 confusion matrix of one prediction against its ground truth.

    pred, gt: integer label maps of the same shape (any dims). Rows are ground truth, columns are
    prediction. Ground-truth pixels equal to ``ignore_index`` are skipped (``None``: none skipped).
    Any other label outside [0, num_classes) raises ValueError.
    """
    g, p = _valid_pairs(pred, gt, num_classes, ignore_index)
    counts = np.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """(N,) float64 intersection over union per class: cm[c, c] / (row_c + col_c - cm[c, c]).

    NaN for a class absent from both ground truth and prediction.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes that appear in the ground truth or the prediction (NaN if none)."""
    iou = iou_per_class(cm)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    """Share of counted pixels whose predicted class is right: trace / total (NaN for an empty matrix)."""
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


class ConfusionMatrix:
    """A running confusion matrix over many images.

    ``update(pred, gt)`` adds one image. The matrix grows when a label >= the current size shows up
    (ground truth may hold classes the vocabulary never predicts), so the class count need not be
    known in advance; pass ``num_classes`` to fix the minimum size.
    """

    def __init__(self, num_classes: int = 1, ignore_index: int | None = 255):
        self.ignore_index = ignore_index
        self.cm = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.images = 0

    @property
    def num_classes(self) -> int:
        return self.cm.shape[0]

    def grow(self, num_classes: int) -> None:
        """Enlarge the matrix to at least ``num_classes`` (new rows/columns are zero)."""
        extra = num_classes - self.num_classes
        if extra > 0:
            self.cm = np.pad(self.cm, ((0, extra), (0, extra)))

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: pred, gt integer label maps of the same shape."""
        gt = np.asarray(gt)
        valid = gt if self.ignore_index is None else gt[gt != self.ignore_index]
        top = max(int(valid.max()) if valid.size else 0, int(np.asarray(pred).max()) if np.size(pred) else 0)
        self.grow(top + 1)
        self.add(confusion_matrix(pred, gt, self.num_classes, self.ignore_index))

    def add(self, cm: np.ndarray) -> None:
        """Add a precomputed (n, n) matrix (n <= num_classes grows nothing; larger grows)."""
        n = cm.shape[0]
        self.grow(n)
        self.cm[:n, :n] += cm
        self.images += 1

    def iou(self) -> np.ndarray:
        return iou_per_class(self.cm)

    def miou(self) -> float:
        return mean_iou(self.cm)

    def accuracy(self) -> float:
        return pixel_accuracy(self.cm)


# --- stored scores -> label maps ---------------------------------------------------------------------


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) float32 linear interpolation weights, half-pixel centres, edges clamped
    (the same sampling as torch ``interpolate(mode="bilinear", align_corners=False)``)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w_hi = src - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - w_hi)
    np.add.at(m, (rows, hi), w_hi)
    return m.astype(np.float32)


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (C, h, w) float maps to (C, H, W) float32; size = (H, W)."""
    height, width = size
    maps = np.asarray(maps, dtype=np.float32)
    ry = _interp_matrix(height, maps.shape[-2])
    rx = _interp_matrix(width, maps.shape[-1])
    return (ry @ maps) @ rx.T


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) array to (H, W) (pixel centres; dtype kept)."""
    height, width = size
    h, w = label.shape[:2]
    if (h, w) == (height, width):
        return label
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    return label[rows[:, None], cols[None, :]]


def foreground_from_scores(
    scores: np.ndarray, size: tuple[int, int], max_side: int = 1024, chunk: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Best foreground class and its score per pixel, at ``size`` = (H, W).

    scores: (1 + K, h, w) float per-class scores (channel 0 = background, ignored here).
    Returns (fg_score (H, W) float32, fg_label (H, W) int32 in 1..K). The label map for a background
    threshold tau is ``where(fg_score > tau, fg_label, 0)``: exactly the argmax over
    [tau, s_1, ..., s_K] upsampled bilinearly (a tie goes to background, as argmax takes the first).
    Like the Segmenter, the scores are upsampled to at most ``max_side`` px on the long side and the
    result is resized (nearest) to ``size`` beyond that; classes are upsampled ``chunk`` at a time so
    memory stays at O(chunk x H x W).
    """
    height, width = size
    k = scores.shape[0] - 1
    if k < 1:
        raise ValueError(f"scores need a background channel and at least one class, got shape {scores.shape}")
    # a class removed by the category filter is -inf; bilinear weights would turn it into NaN and NaN
    # compares false everywhere, so make it a large finite negative first (it never wins a pixel)
    scores = np.where(np.isneginf(scores), np.float32(-1e9), scores)
    scale = min(1.0, max_side / max(height, width))
    work = (max(1, round(height * scale)), max(1, round(width * scale)))
    best = np.full(work, -np.inf, dtype=np.float32)
    label = np.zeros(work, dtype=np.int32)
    for start in range(1, k + 1, chunk):
        up = resize_bilinear(scores[start : start + chunk], work)
        arg = up.argmax(axis=0)
        top = np.take_along_axis(up, arg[None], axis=0)[0]
        better = top > best
        best = np.where(better, top, best)
        label = np.where(better, arg.astype(np.int32) + start, label)
    return resize_nearest(best, size), resize_nearest(label, size)


def confusion_by_threshold(
    fg_score: np.ndarray,
    fg_label: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    lut: np.ndarray,
    num_classes: int,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """(T, N, N) confusion matrices of one image, one per background threshold.

    fg_score, fg_label: from :func:`foreground_from_scores` (labels in the prediction's own ids);
    lut: (1 + K,) int array mapping prediction ids to ground-truth ids (lut[0] = background id);
    thresholds: (T,) candidate background thresholds; num_classes: N, larger than every id.
    """
    thresholds = np.asarray(thresholds, dtype=np.float32)
    lut = np.asarray(lut, dtype=np.int64)
    g = np.asarray(gt).reshape(-1).astype(np.int64)
    s = np.asarray(fg_score, dtype=np.float32).reshape(-1)
    fg = lut[np.asarray(fg_label).reshape(-1)]
    if ignore_index is not None:
        keep = g != ignore_index
        g, s, fg = g[keep], s[keep], fg[keep]
    g, fg = _valid_pairs(fg, g, num_classes, None)
    out = np.empty((len(thresholds), num_classes, num_classes), dtype=np.int64)
    bg = g * num_classes + lut[0]
    fg_key = g * num_classes + fg
    for i, tau in enumerate(thresholds):
        key = np.where(s > tau, fg_key, bg)
        out[i] = np.bincount(key, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    return out
