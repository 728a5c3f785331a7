"""The post-processing as it was before issue 21 (kept for ``python -m jobs.bench.postproc`` only, so the
benchmark measures BEFORE and AFTER in one run): the label map upscaled to the photo's size, then encoded
with Pillow's default PNG settings, its ids from ``np.unique`` and its statistics from a transposed copy
(column runs), one pycocotools call per class. Results are identical to the new code's; never import this
outside the benchmark.
"""

from __future__ import annotations

import io

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image


def encode_label_png(label_map: np.ndarray) -> bytes:
    """Pillow's PNG of an (H, W) uint8/uint16 label map with its default settings (zlib level 6)."""
    array = np.asarray(label_map)
    image = Image.fromarray(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def label_ids(label_map: np.ndarray) -> list[int]:
    """The Segmenter's former class ids: np.unique over the full-size map."""
    return [int(i) for i in np.unique(label_map) if i > 0]


def to_uint8(labels) -> np.ndarray:
    """The Segmenter's former cast: the full-size int64 map copied off the device, then cast to uint8."""
    return labels.cpu().numpy().astype(np.uint8)


def decode_and_resize(data: bytes, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """decode_batch's former path: decode every pixel, then resize to the square."""
    from diffseg.codecs.images import decode_image, resize_square

    image = decode_image(data)
    return resize_square(image, side), image.shape[:2]


def compute_class_stats(
    label_map: np.ndarray, class_names: list[str], scores: np.ndarray | None = None
) -> list[dict]:
    """One statistics dict per class present in an (H, W) label map (0 = background, k = class_names[k-1]).

    ``scores`` is optional (C, h, w) float with channel k scoring class k (C > the largest id present).
    Each dict has the keys of :data:`STAT_KEYS`: ``class_id`` int, ``class_name`` str, ``pixel_count``
    int, ``fraction`` float (of all pixels), ``bbox_xywh`` [x, y, w, h] ints, ``score_mean`` and
    ``score_max`` floats (NaN without scores; see the module docstring), ``components`` int (8-connected),
    ``rle_counts`` str and ``rle_size`` [H, W]. Classes are listed by increasing id; background and
    absent classes are not listed.
    """
    labels = _check_label_map(label_map)
    height, width = labels.shape
    col_starts, col_lengths, col_values = _column_runs(labels)
    largest = int(col_values.max())
    if largest > len(class_names):
        raise ValueError(
            f"label map holds class id {largest} but only {len(class_names)} class names were given "
            "(ids 1..K name class_names[0..K-1]); pass the full vocabulary"
        )
    counts = np.bincount(col_values, weights=col_lengths, minlength=largest + 1).astype(np.int64)
    present = [int(k) for k in np.flatnonzero(counts) if k > 0]
    if not present:
        return []
    row_runs = _row_runs(labels)
    score_stats = _score_stats(labels, row_runs, present, scores)
    components = _count_components_from_runs(row_runs, width)
    rles = _rles_per_label((height, width), col_starts, col_lengths, col_values, present)
    stats = []
    for k in present:
        rle = rles[k]
        bbox = mask_utils.toBbox(rle)
        stats.append(
            {
                "class_id": k,
                "class_name": class_names[k - 1],
                "pixel_count": int(counts[k]),
                "fraction": float(counts[k]) / float(height * width),
                "bbox_xywh": [int(round(v)) for v in bbox],
                "score_mean": score_stats[k][0],
                "score_max": score_stats[k][1],
                "components": int(components[k]),
                "rle_counts": rle["counts"].decode("ascii"),
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


def _row_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maximal horizontal runs of equal non-zero labels: (row, first col, last col, label), each (N,) int64."""
    height, width = labels.shape
    flat = labels.ravel()
    change = np.empty(flat.size, dtype=bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::width] = True  # a run never crosses a row end
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], flat.size) - 1
    values = flat[starts].astype(np.int64)
    keep = values != 0
    starts, ends, values = starts[keep], ends[keep], values[keep]
    return starts // width, starts % width, ends % width, values


def _count_components_per_label(labels: np.ndarray) -> np.ndarray:
    """Count 8-connected components of each label of an (H, W) map: an int64 array indexed by label."""
    return _count_components_from_runs(_row_runs(labels), labels.shape[1])


def _count_components_from_runs(row_runs: tuple, width: int) -> np.ndarray:
    """Count 8-connected components per label from :func:`_row_runs` output (int64 array indexed by label).

    Runs in adjacent rows with the same label touch when their column spans overlap or meet diagonally;
    the runs are joined by a vectorised union-find (hook larger roots onto smaller ones, then pointer-jump).
    """
    rows, first, last, values = row_runs
    n = len(values)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    stride = width + 2  # keys of different rows never interleave, even at col - 1 and col + 1
    start_key = rows * stride + first
    end_key = rows * stride + last
    # candidate partners of run b: the runs in row b-1 with last >= first_b - 1 and first <= last_b + 1
    lo = np.searchsorted(end_key, (rows - 1) * stride + first - 1, side="left")
    hi = np.searchsorted(start_key, (rows - 1) * stride + last + 1, side="right")
    widths = np.maximum(hi - lo, 0)
    src = np.repeat(np.arange(n), widths)
    offsets = np.arange(widths.sum()) - np.repeat(np.cumsum(widths) - widths, widths)
    dst = np.repeat(lo, widths) + offsets
    same = values[src] == values[dst]
    parent = _union_roots(n, src[same], dst[same])
    roots = parent == np.arange(n)
    return np.bincount(values[roots], minlength=int(values.max()) + 1)


def _union_roots(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Root (smallest node id) of each of n nodes' connected component, given undirected edges u-v."""
    parent = np.arange(n)
    while u.size:
        pu, pv = parent[u], parent[v]
        open_edges = pu != pv
        if not open_edges.any():
            break
        u, v, pu, pv = u[open_edges], v[open_edges], pu[open_edges], pv[open_edges]
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:  # pointer jumping until every node points at a root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def _column_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of equal labels in column-major order (COCO RLE order), background included.

    Returns (start, length, label), each (N,) int64, starts increasing, positions in the column-major
    flattening of the (H, W) map.
    """
    flat = labels.T.ravel()  # a column-major copy, as COCO RLE counts run
    change = np.empty(flat.size, dtype=bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, flat.size))
    return starts, lengths, flat[starts].astype(np.int64)


def _rles_per_label(
    size: tuple[int, int], starts: np.ndarray, lengths: np.ndarray, values: np.ndarray, present: list[int]
) -> dict[int, dict]:
    """COCO compressed RLE (pycocotools dict, counts bytes) of each present label, from column runs."""
    height, width = size
    total = height * width
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    rles = {}
    for k in present:
        begin, end = np.searchsorted(sorted_values, [k, k + 1])
        run_ids = order[begin:end]  # increasing position, as the sort is stable
        run_starts, run_lengths = starts[run_ids], lengths[run_ids]
        gaps = run_starts - np.concatenate(([0], run_starts[:-1] + run_lengths[:-1]))
        counts = np.empty(2 * len(run_ids), dtype=np.int64)
        counts[0::2], counts[1::2] = gaps, run_lengths
        tail = total - int(run_starts[-1] + run_lengths[-1])
        counts_list = counts.tolist() + ([tail] if tail else [])  # pycocotools omits a zero tail
        rles[k] = mask_utils.frPyObjects({"counts": counts_list, "size": [height, width]}, height, width)
    return rles


def _score_stats(
    labels: np.ndarray, row_runs: tuple, present: list[int], scores: np.ndarray | None
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
    height, width = labels.shape
    _, h, w = array.shape
    rows = np.minimum(((np.arange(h) + 0.5) * height / h).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * width / w).astype(np.int64), width - 1)
    small = labels[np.ix_(rows, cols)]  # nearest resize to (h, w), sampling pixel centres
    result = {}
    missing = []
    for k in present:
        cells = array[k][small == k]
        if cells.size:
            result[k] = (float(cells.mean(dtype=np.float64)), float(cells.max()))
        else:
            missing.append(k)
    if missing:  # tiny classes: sample the score cells that contain their pixels
        run_rows, first, last, values = row_runs
        for k in missing:
            sel = values == k
            lengths = last[sel] - first[sel] + 1
            pix_rows = np.repeat(run_rows[sel], lengths)
            pix_cols = np.repeat(first[sel], lengths) + (
                np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            )
            cell_r = np.minimum(((pix_rows + 0.5) * h / height).astype(np.int64), h - 1)
            cell_c = np.minimum(((pix_cols + 0.5) * w / width).astype(np.int64), w - 1)
            sampled = array[k][cell_r, cell_c]
            result[k] = (float(sampled.mean(dtype=np.float64)), float(sampled.max()))
    return result
