"""Nearest resizes of label maps, reproducing ``torch.nn.functional.interpolate(mode="nearest")`` exactly.

The Segmenter takes the argmax at most ``max_label_side`` px on the long side (the *argmax size*) and
the job stores that map; the photo's size is recorded beside it. :func:`upscale_labels` gives the map at
the photo's size, byte for byte what the Segmenter's former device-side resize gave
(``F.interpolate(labels[None, None].float(), size=(H, W), mode="nearest")``), so a reader never needs
torch.

A nearest resize is separable: output row ``y`` takes source row ``rows[y]`` and output column ``x``
source column ``cols[x]`` (:func:`nearest_source_index`), both non-decreasing with steps of 0 or 1 when
upscaling. Statistics at the photo's size are computed from the small map and these index maps
(:mod:`diffseg.codecs.stats`): each kept source row ``i`` becomes a band of ``row_repeats[i] >= 1``
output rows, each kept column a band of ``col_repeats[j] >= 1`` output columns (:func:`source_bands`),
so the full map is the small map with every cell blown up into an ``r_i x c_j`` block of its label.
"""

from __future__ import annotations

import numpy as np


def nearest_source_index(source: int, target: int) -> np.ndarray:
    """Source index (target,) int64 of each of `target` output positions in a nearest resize from `source`.

    PyTorch's legacy ``mode="nearest"`` rule (aten/src/ATen/native/UpSample.h, ``nearest_idx``, the same
    on CPU and CUDA): identity when the sizes are equal, ``x >> 1`` when ``target == 2 * source``,
    otherwise ``min(floor(x * scale), source - 1)`` with ``scale = float32(source) / target`` and the
    product taken in float32.
    """
    if source < 1 or target < 1:
        raise ValueError(f"sizes must be positive, got source={source} target={target}")
    out = np.arange(target, dtype=np.int64)
    if target == source:
        return out
    if target == 2 * source:
        return out >> 1
    scale = np.float32(np.float32(source) / np.float32(target))
    index = np.floor(out.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(index, source - 1)


def upscale_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) label map -> (height, width) of the same dtype by nearest resize (:func:`nearest_source_index`).

    Equal to ``F.interpolate(t[None, None].float(), size=(height, width), mode="nearest")`` cast back,
    for upscales and downscales alike. A map already (height, width) is returned as is, without a copy.
    """
    array = np.asarray(labels)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"a label map must be a non-empty (h, w) array, got shape {array.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"the target size must be positive, got height={height} width={width}")
    h, w = array.shape
    if (h, w) == (height, width):
        return array
    cols = nearest_source_index(w, width)
    wide = array if w == width else np.take(array, cols, axis=1)
    return wide if h == height else np.take(wide, nearest_source_index(h, height), axis=0)


def source_bands(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """The source positions a nearest resize keeps and how many output positions each becomes.

    Returns (kept (n,) int64 increasing source indices, repeats (n,) int64 >= 1, summing to `target`):
    output positions ``offsets[m] .. offsets[m + 1] - 1`` (``offsets`` = 0 then the cumulative sum of
    repeats) all take source ``kept[m]``. Every source position is kept when upscaling (target >= source).
    """
    counts = np.bincount(nearest_source_index(source, target), minlength=source)
    kept = np.flatnonzero(counts)
    return kept, counts[kept]
