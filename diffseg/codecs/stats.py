"""Per-class statistics of a label map: the ``stats/`` table of DESIGN.md.

- One COCO compressed RLE per class present (``pycocotools.mask.decode({"size": [h, w], "counts": s})``
  decodes it), with ``bbox_xywh`` equal to ``pycocotools.mask.toBbox`` of that RLE.
- Connected components use 8-connectivity (diagonal neighbours touch), matching how a region looks.

**At the photo's size, from the stored map.** The job stores the label map at the argmax size
(:mod:`diffseg.codecs.upscale`); ``compute_class_stats(small, names, size=(H, W))`` reports every
statistic exactly as ``compute_class_stats(upscale_labels(small, H, W), names)`` would, without building
the full map: areas and RLE from the small map's column runs measured in output rows and repeated per
output column, components from its row runs (they survive a nearest upscale one for one: the proof is in
:mod:`diffseg.codecs.runs`). The cost is a few passes over the small map plus work proportional to the
number of runs, whatever the number of classes in the vocabulary.

**Scores at model resolution.** ``score_mean``/``score_max`` of class k are the mean/max of score
channel k over the cells of the (full-size) label map resized (nearest, pixel-centre sampling) to the
scores' (h, w). A class too small to own any cell at that resolution instead uses the cells that contain
its pixels (each full-resolution pixel maps to the score cell containing its centre; the mean is
weighted by pixel count), so a present class always has finite statistics when its channel is finite.
"""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils

from diffseg.codecs.runs import (
    Bands,
    column_runs,
    count_components_from_runs,
    full_column_runs,
    rles_per_label,
    row_runs,
)
from diffseg.codecs.upscale import nearest_source_index

STAT_KEYS = (
    "class_id", "class_name", "pixel_count", "fraction", "bbox_xywh", "score_mean", "score_max",
    "components", "rle_counts", "rle_size",
)  # fmt: skip
"""The keys of every dict returned by :func:`compute_class_stats`, in the ``stats/`` table's order."""


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of an (H, W) boolean mask: ``{"size": [H, W], "counts": str}``."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {array.shape}")
    rle = mask_utils.encode(np.asfortranarray(array.astype(bool, copy=False), dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def count_components(mask: np.ndarray) -> int:
    """Number of 8-connected components of True pixels in an (H, W) boolean mask."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {array.shape}")
    if array.size == 0:
        return 0
    counts = count_components_from_runs(row_runs(array.astype(np.uint8)), array.shape[1])
    return int(counts[1]) if len(counts) > 1 else 0


def compute_class_stats(
    label_map: np.ndarray, class_names: list[str], scores: np.ndarray | None = None,
    size: tuple[int, int] | None = None,
) -> list[dict]:
    """One statistics dict per class present in a label map (0 = background, k = class_names[k-1]).

    ``label_map``: (h, w) integer ids. ``size``: (H, W) the statistics are reported at, the map being
    nearest-resized to it (:func:`diffseg.codecs.upscale.upscale_labels`; the job passes the photo's size
    with its stored argmax-size map); default: the map's own size.
    ``scores`` is optional (C, hs, ws) float with channel k scoring class k (C > the largest id present).
    Each dict has the keys of :data:`STAT_KEYS`: ``class_id`` int, ``class_name`` str, ``pixel_count``
    int, ``fraction`` float (of all pixels), ``bbox_xywh`` [x, y, w, h] ints, ``score_mean`` and
    ``score_max`` floats (NaN without scores; see the module docstring), ``components`` int (8-connected),
    ``rle_counts`` str and ``rle_size`` [H, W]. Classes are listed by increasing id; background and
    absent classes are not listed.
    """
    labels = _check_label_map(label_map)
    height, width = (int(size[0]), int(size[1])) if size is not None else labels.shape
    if height < 1 or width < 1:
        raise ValueError(f"size must be a positive (H, W), got {size!r}")
    bands = Bands.of(labels.shape, (height, width))
    kept = bands.keep(labels)
    col_runs = column_runs(kept)
    starts, lengths, values = full_column_runs(col_runs, bands)
    largest = int(values.max())
    if largest > len(class_names):
        raise ValueError(
            f"label map holds class id {largest} but only {len(class_names)} class names were given "
            "(ids 1..K name class_names[0..K-1]); pass the full vocabulary"
        )
    counts = np.bincount(values, weights=lengths, minlength=largest + 1).astype(np.int64)
    present = [int(k) for k in np.flatnonzero(counts[1:]) + 1]
    if not present:
        return []
    kept_rows = row_runs(kept)
    components = count_components_from_runs(kept_rows, kept.shape[1])
    score_stats = _score_stats(labels, bands, kept_rows, present, scores, (height, width))
    rles, boxes = rles_per_label((height, width), starts, lengths, values, present)
    stats = []
    for k, rle, bbox in zip(present, rles, boxes.tolist()):
        stats.append(
            {
                "class_id": k,
                "class_name": class_names[k - 1],
                "pixel_count": int(counts[k]),
                "fraction": float(counts[k]) / float(height * width),
                "bbox_xywh": bbox,
                "score_mean": score_stats[k][0],
                "score_max": score_stats[k][1],
                "components": int(components[k]),
                "rle_counts": rle,
                "rle_size": [int(height), int(width)],
            }
        )
    return stats


def _check_label_map(label_map: np.ndarray) -> np.ndarray:
    """Validate an (H, W) non-negative integer label map and return it as an unsigned array."""
    array = np.asarray(label_map)
    if array.ndim != 2 or array.size == 0 or array.dtype.kind not in "iu":
        raise ValueError(
            f"a label map must be a non-empty (H, W) integer array, got shape {array.shape} dtype {array.dtype}"
        )
    if array.dtype.kind == "i":
        if array.min() < 0:
            raise ValueError(f"a label map cannot hold negative ids (found {int(array.min())})")
        array = array.astype(np.uint16 if array.max() <= 0xFFFF else np.uint32)
    return array


def _score_stats(
    labels: np.ndarray, bands: Bands, kept_rows: tuple, present: list[int], scores: np.ndarray | None,
    size: tuple[int, int],
) -> dict[int, tuple[float, float]]:
    """(mean, max) of each present class's score channel at the scores' resolution (module docstring)."""
    if scores is None:
        return {k: (float("nan"), float("nan")) for k in present}
    array = np.asarray(scores)
    if array.ndim != 3 or array.shape[0] <= max(present) or array.shape[1] < 1 or array.shape[2] < 1:
        raise ValueError(
            f"scores must be (C, h, w) with a channel for every class present (C > {max(present)}), "
            f"got shape {array.shape}"
        )
    height, width = size
    _, h, w = array.shape
    rows = np.minimum(((np.arange(h) + 0.5) * height / h).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * width / w).astype(np.int64), width - 1)
    # full-size pixel (y, x) is labels[source row of y, source col of x]
    small = labels[np.ix_(nearest_source_index(labels.shape[0], height)[rows],
                          nearest_source_index(labels.shape[1], width)[cols])]
    result = {}
    missing = []
    for k in present:
        cells = array[k][small == k]
        if cells.size:
            result[k] = (float(cells.mean(dtype=np.float64)), float(cells.max()))
        else:
            missing.append(k)
    if missing:  # tiny classes: sample the score cells that contain their pixels
        run_rows, first, last, values = kept_rows
        for k in missing:
            sel = values == k
            # each kept run is a block of output rows x output columns
            row0, row1 = bands.row_offsets[run_rows[sel]], bands.row_offsets[run_rows[sel] + 1]
            col0, col1 = bands.col_offsets[first[sel]], bands.col_offsets[last[sel] + 1]
            reps = row1 - row0
            full_rows = np.repeat(row0 - (np.cumsum(reps) - reps), reps) + np.arange(reps.sum())
            col0, col1 = np.repeat(col0, reps), np.repeat(col1, reps)
            lengths = col1 - col0
            pix_rows = np.repeat(full_rows, lengths)
            pix_cols = np.repeat(col0 - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
            cell_r = np.minimum(((pix_rows + 0.5) * h / height).astype(np.int64), h - 1)
            cell_c = np.minimum(((pix_cols + 0.5) * w / width).astype(np.int64), w - 1)
            sampled = array[k][cell_r, cell_c]
            result[k] = (float(sampled.mean(dtype=np.float64)), float(sampled.max()))
    return result
