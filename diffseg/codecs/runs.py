"""Runs of equal labels, the material of every statistic in :mod:`diffseg.codecs.stats`.

Everything here works on a small (h, w) label map plus :class:`Bands`, the nearest resize that takes it
to the size the statistics are reported at (the photo's size; :mod:`diffseg.codecs.upscale`), without
building the full-size map:

- row runs of the kept map give the connected components (:func:`count_components_from_runs`);
- column runs of the kept map, measured in output rows and repeated once per output column, give the
  runs of the full map in column-major order: COCO RLE, areas and boxes (:func:`full_column_runs`).

The kept map is the small map restricted to the source rows/columns the resize uses (all of them when
upscaling); each kept cell (i, j) becomes an ``r_i x c_j`` block of output pixels with ``r_i, c_j >= 1``.

**Components survive the blow-up.** 8-connected components of the full map are those of the kept map,
one for one: pixels of one block are connected; two pixels in different blocks are 8-adjacent only if
their blocks' cells are 8-adjacent in the kept map (output rows y and y + 1 come from kept rows equal or
consecutive, as the bands are contiguous and in order; the same for columns), and 8-adjacent cells give
8-adjacent blocks (their facing edges or corners touch). So the graph of same-label adjacent blocks is
the kept map's graph, and components map one to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffseg.codecs.upscale import source_bands


@dataclass(frozen=True)
class Bands:
    """A nearest resize (h, w) -> (H, W) as blocks: kept source rows/cols and their output offsets.

    rows (h',), cols (w',): kept source indices, increasing; row_offsets (h' + 1,), col_offsets (w' + 1,):
    kept row m covers output rows ``row_offsets[m] .. row_offsets[m + 1] - 1`` (last entry H), likewise
    columns. ``identity`` when (h, w) == (H, W).
    """

    rows: np.ndarray
    cols: np.ndarray
    row_offsets: np.ndarray
    col_offsets: np.ndarray
    identity: bool

    @classmethod
    def of(cls, shape: tuple[int, int], size: tuple[int, int]) -> Bands:
        """The bands of a nearest resize from `shape` (h, w) to `size` (H, W)."""
        (h, w), (height, width) = shape, size
        if (h, w) == (height, width):
            return cls(np.arange(h), np.arange(w), np.arange(h + 1), np.arange(w + 1), True)
        rows, row_repeats = source_bands(h, height)
        cols, col_repeats = source_bands(w, width)
        return cls(rows, cols, _offsets(row_repeats), _offsets(col_repeats), False)

    def keep(self, labels: np.ndarray) -> np.ndarray:
        """The (h', w') kept map: `labels` itself when every source row and column is used."""
        if len(self.rows) == labels.shape[0] and len(self.cols) == labels.shape[1]:
            return labels
        return labels[np.ix_(self.rows, self.cols)]


def _offsets(repeats: np.ndarray) -> np.ndarray:
    out = np.zeros(len(repeats) + 1, dtype=np.int64)
    np.cumsum(repeats, out=out[1:])
    return out


def row_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def column_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maximal vertical runs of equal labels within each column, background included, in column-major order.

    Returns (col, first row, end row (exclusive), label), each (N,) int64. Found from row-to-row changes
    (a row-major pass) and a sort of the change points, never a transposed copy of the map.
    """
    height, width = labels.shape
    change = np.flatnonzero(labels[1:] != labels[:-1])  # (height - 1, width) row-major positions
    keys = np.concatenate((np.arange(width, dtype=np.int64) * height,  # every column starts a run
                           (change % width) * height + change // width + 1))
    keys.sort()
    cols = keys // height
    first = keys - cols * height
    end = np.append(keys[1:], width * height) - cols * height  # the next key starts the next run or column
    return cols, first, end, labels[first, cols].astype(np.int64)


def full_column_runs(col_runs: tuple, bands: Bands) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of the full (H, W) map in column-major order (COCO RLE order), background included.

    `col_runs`: :func:`column_runs` of the kept map. Each kept column's runs are measured in output rows
    and repeated once per output column of its band; runs that meet across a column end are joined.
    Returns (start, length, label), each (N,) int64, start = position in the column-major flattening.
    """
    cols, first, end, values = col_runs
    lengths = bands.row_offsets[end] - bands.row_offsets[first]
    if not bands.identity:
        per_col = np.bincount(cols, minlength=len(bands.cols))
        col_start = np.zeros(len(per_col), dtype=np.int64)
        np.cumsum(per_col[:-1], out=col_start[1:])
        source = np.repeat(np.arange(len(per_col)), np.diff(bands.col_offsets))  # (W,) kept column of each
        counts = per_col[source]
        index = np.repeat(col_start[source] - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        values, lengths = values[index], lengths[index]
    joined = np.empty(len(values), dtype=bool)
    joined[0] = False
    np.equal(values[1:], values[:-1], out=joined[1:])  # only at a column end: runs are maximal within columns
    if joined.any():
        heads = np.flatnonzero(~joined)
        values, lengths = values[heads], np.add.reduceat(lengths, heads)
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts, lengths, values


def count_components_from_runs(runs: tuple, width: int) -> np.ndarray:
    """Count 8-connected components per label from :func:`row_runs` output (int64 array indexed by label).

    Runs in adjacent rows with the same label touch when their column spans overlap or meet diagonally;
    the runs are joined by a vectorised union-find (hook larger roots onto smaller ones, then pointer-jump).
    """
    rows, first, last, values = runs
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
    parent = union_roots(n, src[same], dst[same])
    roots = parent == np.arange(n)
    return np.bincount(values[roots], minlength=int(values.max()) + 1)


def union_roots(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
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


def rles_per_label(
    size: tuple[int, int], starts: np.ndarray, lengths: np.ndarray, values: np.ndarray, present: list[int]
) -> tuple[list[str], np.ndarray]:
    """COCO compressed RLE strings and boxes of the `present` labels, from :func:`full_column_runs`.

    `present`: every non-zero label of `values`, increasing (ValueError otherwise).
    Returns (one ``counts`` string per label, as ``pycocotools.mask.encode`` writes it; (P, 4) int64
    boxes [x, y, w, h] as ``pycocotools.mask.toBbox`` gives them). All labels are encoded in one
    vectorised pass: runs sorted by label, counts alternate the gap before each run and its length (a
    label's first count is its leading gap, possibly 0; a zero tail is omitted, as pycocotools does).
    """
    height, width = size
    total = height * width
    present = np.asarray(present, dtype=np.int64)
    keys = values.astype(np.uint16) if present[-1] <= 0xFFFF else values  # a radix sort for 16-bit keys
    order = np.argsort(keys, kind="stable")  # by label, each label's runs in increasing position
    bounds = np.searchsorted(keys[order], np.append(present, present[-1] + 1))
    runs_per = np.diff(bounds)  # (P,) runs of each present label
    if (runs_per == 0).any() or bounds[-1] - bounds[0] != np.count_nonzero(values):
        raise ValueError(f"present {present.tolist()} must list every non-zero label of the runs, increasing")
    order = order[bounds[0]:bounds[-1]]
    run_start, run_length = starts[order], lengths[order]
    run_end = run_start + run_length
    first_run = np.zeros(len(present), dtype=np.int64)
    np.cumsum(runs_per[:-1], out=first_run[1:])
    previous_end = np.empty_like(run_end)
    previous_end[0] = 0
    previous_end[1:] = run_end[:-1]
    previous_end[first_run] = 0
    last_end = run_end[first_run + runs_per - 1]
    tails = total - last_end
    # counts of each label: gap, length per run, then its tail when non-zero
    sizes = 2 * runs_per + (tails > 0)
    offsets = np.zeros(len(present) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    counts = np.empty(offsets[-1], dtype=np.int64)
    run_slot = np.repeat(offsets[:-1] - 2 * first_run, runs_per) + 2 * np.arange(len(order))
    counts[run_slot] = run_start - previous_end
    counts[run_slot + 1] = run_length
    counts[offsets[1:][tails > 0] - 1] = tails[tails > 0]
    strings = _coco_strings(counts, offsets)
    boxes = _boxes(run_start, run_end - 1, runs_per, height)
    return strings, boxes


def _coco_strings(counts: np.ndarray, offsets: np.ndarray) -> list[str]:
    """pycocotools' ``rleToString`` of each sequence ``counts[offsets[p]:offsets[p + 1]]``, vectorised.

    Each count from the fourth on (index i > 2 of its own sequence, as pycocotools does) is replaced by
    its difference with the count two before, then written in the fewest 5-bit two's-complement groups
    that hold it, low group first, one character each: 48 + group, + 32 when more groups follow.
    """
    x = counts.copy()
    index = np.arange(len(x)) - np.repeat(offsets[:-1], np.diff(offsets))
    delta = np.flatnonzero(index > 2)
    x[delta] -= counts[delta - 2]
    magnitude = np.where(x < 0, ~x, x)  # a negative value needs as many groups as its complement
    groups = (np.frexp(magnitude.astype(np.float64))[1] + 5) // 5  # ceil((bit length + 1) / 5), >= 1
    ends = np.zeros(len(x) + 1, dtype=np.int64)
    np.cumsum(groups, out=ends[1:])
    group = np.arange(ends[-1]) - np.repeat(ends[:-1], groups)
    chars = (np.repeat(x, groups) >> (5 * group)) & 0x1F
    chars += 48 + 32 * (group < np.repeat(groups, groups) - 1)
    text = chars.astype(np.uint8).tobytes().decode("ascii")
    char_offsets = ends[offsets]
    return [text[a:b] for a, b in zip(char_offsets[:-1], char_offsets[1:])]


def _boxes(first: np.ndarray, last: np.ndarray, runs_per: np.ndarray, height: int) -> np.ndarray:
    """(P, 4) [x, y, w, h] of each label from its runs' first/last column-major positions (grouped by label).

    A run that crosses a column end covers the bottom of one column and the top of the next: its rows
    span the whole height (pycocotools' rleToBbox says the same).
    """
    heads = np.zeros(len(runs_per), dtype=np.int64)
    np.cumsum(runs_per[:-1], out=heads[1:])
    x0, y0 = np.divmod(first, height)
    x1, y1 = np.divmod(last, height)
    crosses = x1 > x0
    y0 = np.where(crosses, 0, y0)
    y1 = np.where(crosses, height - 1, y1)
    xs, xe = np.minimum.reduceat(x0, heads), np.maximum.reduceat(x1, heads)
    ys, ye = np.minimum.reduceat(y0, heads), np.maximum.reduceat(y1, heads)
    return np.stack([xs, ys, xe - xs + 1, ye - ys + 1], axis=1)
