"""Output encodings and per-class statistics: the ``masks/`` and ``stats/`` tables of DESIGN.md.

- Label maps (H, W) travel as PNG: uint8 as 8-bit grey, uint16 (more than 255 classes) as 16-bit grey;
  :func:`decode_label_png` gives back the same dtype and values.
- Scores (1 + K, h, w) travel as one tall 16-bit grey PNG of shape ((1 + K) * h, w): channel c occupies
  rows ``c*h .. (c+1)*h - 1``. Each channel has its own linear scale, kept in the PNG text chunk
  ``diffseg-scores`` as JSON ``{"version": 2, "offset": [...], "scale": [...]}`` (one float per
  channel); code 0 is -inf (a class removed by the category filter), code q >= 1 is
  ``offset[c] + scale[c] * (q - 1)``. Without diffseg (Pillow + numpy)::

      im = PIL.Image.open(io.BytesIO(png)); meta = json.loads(im.text["diffseg-scores"])
      q = np.asarray(im).astype(np.float64).reshape(len(meta["offset"]), -1, im.width)
      off, sc = (np.asarray(meta[k])[:, None, None] for k in ("offset", "scale"))
      scores = np.where(q == 0, -np.inf, off + sc * (q - 1))

  Older runs wrote 8-bit PNGs (``round(clip(x, 0, 1) * 255)``, -inf as 0); they still decode.
- One COCO compressed RLE per class present (``pycocotools.mask.decode({"size": [h, w], "counts": s})``
  decodes it), with ``bbox_xywh`` equal to ``pycocotools.mask.toBbox`` of that RLE.
- Connected components use 8-connectivity (diagonal neighbours touch), matching how a region looks.

Statistics are computed from runs of equal labels (row runs for components, column runs for RLE), found
once for the whole label map, so the cost is a few passes over the map plus work proportional to the
number of runs, whatever the number of classes in the vocabulary.

**Scores at model resolution.** ``score_mean``/``score_max`` of class k are the mean/max of score
channel k over the cells of the label map resized (nearest, pixel-centre sampling) to the scores' (h, w).
A class too small to own any cell at that resolution instead uses the cells that contain its pixels
(each full-resolution pixel maps to the score cell containing its centre; the mean is weighted by
pixel count), so a present class always has finite statistics when its channel is finite.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image
from PIL.PngImagePlugin import PngInfo

STAT_KEYS = (
    "class_id", "class_name", "pixel_count", "fraction", "bbox_xywh", "score_mean", "score_max",
    "components", "rle_counts", "rle_size",
)  # fmt: skip
"""The keys of every dict returned by :func:`compute_class_stats`, in the ``stats/`` table's order."""


def encode_label_png(label_map: np.ndarray) -> bytes:
    """Encode an (H, W) uint8 label map as an 8-bit grey PNG, or an (H, W) uint16 one as 16-bit grey."""
    array = np.asarray(label_map)
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16) or array.size == 0:
        raise ValueError(
            f"a label map must be a non-empty (H, W) uint8 or uint16 array, got shape {array.shape} dtype "
            f"{array.dtype}; cast it with .astype(np.uint8) (up to 255 classes) or np.uint16"
        )
    # uint8 -> mode "L" (8-bit grey PNG); little-endian uint16 -> mode "I;16" (16-bit grey PNG)
    image = Image.fromarray(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_label_png(data: bytes) -> np.ndarray:
    """Decode a label-map PNG into (H, W) uint8 (8-bit PNG) or uint16 (16-bit PNG), values unchanged.

    Palette PNGs (as in PASCAL VOC) give their palette indices.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        mode = image.mode
        if mode in ("L", "P"):
            return np.array(image, dtype=np.uint8)
        if mode.startswith("I;16") or mode == "I":
            array = np.asarray(image)
            if array.size and (array.min() < 0 or array.max() > 0xFFFF):
                raise ValueError(f"label PNG holds values outside 0..65535 (mode {mode!r})")
            return array.astype(np.uint16)
    raise ValueError(f"a label-map PNG must be single-channel grey or palette, got mode {mode!r}")


SCORES_KEY = "diffseg-scores"
"""The PNG text chunk of a 16-bit scores PNG: JSON ``{"version": 2, "offset": [C floats], "scale":
[C floats]}`` (module docstring)."""

_SCORE_LEVELS = 65534  # finite values take codes 1..65535; code 0 is -inf


def encode_scores_png(scores: np.ndarray) -> bytes:
    """Encode (C, h, w) float scores as one tall (C*h, w) 16-bit grey PNG, each channel on its own scale.

    Channel c's finite values are mapped linearly from [min_c, max_c] onto codes 1..65535
    (``code = 1 + round((x - offset_c) / scale_c)``, ``scale_c = (max_c - min_c) / 65534``, 0 for a
    constant channel, which is then exact); -inf and NaN are code 0; +inf is the channel's top code.
    Offsets and scales go into the PNG text chunk :data:`SCORES_KEY`. The error of a value is at most
    scale_c / 2, i.e. 1/131068 of its channel's range.
    """
    array = np.asarray(scores)
    if array.ndim != 3 or array.size == 0 or array.dtype.kind not in "fiu":
        raise ValueError(
            f"scores must be a non-empty (C, h, w) float array, got shape {array.shape} dtype {array.dtype}"
        )
    values = array.astype(np.float64)
    channels, height, width = values.shape
    finite = np.isfinite(values)
    codes = np.zeros(values.shape, dtype=np.uint16)
    offsets, scales = [], []
    for c in range(channels):
        kept = values[c][finite[c]]
        lo = float(kept.min()) if kept.size else 0.0
        hi = float(kept.max()) if kept.size else 0.0
        scale = (hi - lo) / _SCORE_LEVELS if hi > lo else 0.0
        level = np.rint((values[c] - lo) / scale) if scale else np.zeros((height, width))
        level = np.where(values[c] == np.inf, _SCORE_LEVELS, level)
        codes[c] = np.where(finite[c] | (values[c] == np.inf), 1 + np.clip(level, 0, _SCORE_LEVELS), 0)
        offsets.append(lo)
        scales.append(scale)
    info = PngInfo()
    info.add_text(SCORES_KEY, json.dumps({"version": 2, "offset": offsets, "scale": scales}))
    image = Image.fromarray(np.ascontiguousarray(codes.reshape(channels * height, width), dtype="<u2"))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def decode_scores_png(data: bytes, channels: int | None = None) -> np.ndarray:
    """Decode a scores PNG into (C, h, w) float32 scores.

    A 16-bit PNG from :func:`encode_scores_png` gives the scores back to within half a step of each
    channel's scale, with -inf where they were -inf (or NaN); its channel count is read from the text
    chunk. An older 8-bit PNG (values ``round(clip(x, 0, 1) * 255)``, -inf stored as 0) gives values in
    [0, 1]; its maps are assumed square (``C = height // width``) unless ``channels`` is passed.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, text, stacked = image.mode, dict(getattr(image, "text", {}) or {}), np.asarray(image)
    except OSError as exc:  # not an image, truncated
        raise ValueError(f"scores are not a readable PNG: {exc}") from exc
    if mode == "L":
        return _split_channels(stacked, channels).astype(np.float32) / np.float32(255.0)
    if SCORES_KEY not in text or not (mode.startswith("I;16") or mode == "I"):
        raise ValueError(
            f"a scores PNG must be 16-bit grey with a {SCORES_KEY!r} text chunk (or 8-bit grey), got mode "
            f"{mode!r} and text keys {sorted(text)}"
        )
    try:
        meta = json.loads(text[SCORES_KEY])
        offset = np.asarray(meta["offset"], dtype=np.float64)
        scale = np.asarray(meta["scale"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the {SCORES_KEY!r} text chunk of a scores PNG is unreadable: {exc}") from exc
    if channels is not None and channels != len(offset):
        raise ValueError(f"this scores PNG holds {len(offset)} channels, not channels={channels}")
    codes = _split_channels(stacked, len(offset)).astype(np.float64)
    values = offset[:, None, None] + scale[:, None, None] * (codes - 1)
    return np.where(codes == 0, -np.inf, values).astype(np.float32)


def _split_channels(stacked: np.ndarray, channels: int | None) -> np.ndarray:
    """A tall (C*h, w) array -> (C, h, w); C = height // width when None (square maps)."""
    height, width = stacked.shape
    if channels is None:
        if height % width:
            raise ValueError(
                f"cannot infer the channel count of a {width}x{height} scores PNG: its height is not a "
                "multiple of its width (the maps are not square); pass channels="
            )
        channels = height // width
    if channels < 1 or height % channels:
        raise ValueError(f"a scores PNG of height {height} cannot hold channels={channels} equal maps")
    return stacked.reshape(channels, height // channels, width)


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
    counts = _count_components_per_label(array.astype(np.uint8))
    return int(counts[1]) if len(counts) > 1 else 0


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


def encode_segmentation(seg, vocab_names: list[str], save_scores: bool = False) -> tuple[dict, list[dict]]:
    """One image's result for one method (a diffseg.segmenter.Segmentation) as what the tables store: the
    masks row (``width``, ``height``, ``method``, ``label_map_png``, ``classes``, ``scores_png``: None
    without `save_scores`) and its :func:`compute_class_stats` rows (class names: the vocabulary's, or
    the result's own for methods that name their segments)."""
    height, width = seg.label_map.shape
    mask = {"width": int(width), "height": int(height), "method": seg.method,
            "label_map_png": encode_label_png(seg.label_map), "classes": list(seg.classes),
            "scores_png": encode_scores_png(seg.scores) if save_scores else None}
    return mask, compute_class_stats(seg.label_map, seg.label_names(vocab_names), scores=seg.scores)


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
