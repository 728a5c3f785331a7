"""diffseg.codecs.stats: COCO RLE via pycocotools, components and per-class statistics."""

from __future__ import annotations

import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from diffseg.codecs.stats import STAT_KEYS, compute_class_stats, count_components, mask_to_rle

# pycocotools' own decode trips a numpy 2 DeprecationWarning about __array__(copy=...): not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def scene() -> np.ndarray:
    """20x30 map: class 1 = two 4x4 squares, class 2 = one L-shape, class 4 = two diagonal pixels."""
    labels = np.zeros((20, 30), dtype=np.uint8)
    labels[1:5, 1:5] = 1  # 16 px
    labels[10:14, 20:24] = 1  # 16 px
    labels[8:18, 2:4] = 2  # vertical bar 10x2 = 20 px
    labels[16:18, 4:12] = 2  # foot 2x8 = 16 px -> L of 36 px
    labels[0, 29] = 4
    labels[1, 28] = 4  # touches (0, 29) diagonally only
    return labels


NAMES = ["cat", "dog", "sky", "tree"]


# --- RLE and components -----------------------------------------------------------------------------


def test_mask_rle_decodes_back_via_pycocotools():
    mask = np.random.default_rng(3).random((31, 17)) > 0.6
    rle = mask_to_rle(mask)
    assert rle["size"] == [31, 17] and isinstance(rle["counts"], str)
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"]})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_count_components_uses_8_connectivity():
    mask = np.zeros((5, 5), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # a diagonal: one component
    mask[0, 4] = True  # isolated
    mask[4, 0:5] = True  # a bar
    assert count_components(mask) == 3
    assert count_components(np.zeros((3, 3), bool)) == 0
    assert count_components(np.ones((1, 1), bool)) == 1


def test_count_components_matches_skimage_on_random_masks():
    measure = pytest.importorskip("skimage.measure")
    rng = np.random.default_rng(4)
    for density in (0.2, 0.45, 0.6):
        mask = rng.random((64, 80)) < density
        _, expected = measure.label(mask, connectivity=2, return_num=True)
        assert count_components(mask) == expected


def test_spiral_component_is_one():
    """A long snake forces many union rounds in a naive implementation."""
    mask = np.zeros((41, 41), dtype=bool)
    mask[::4, 1:-1] = True
    for i, row in enumerate(range(0, 37, 4)):
        col = 1 if i % 2 else 39
        mask[row : row + 5, col] = True
    assert count_components(mask) == 1


# --- per-class statistics ---------------------------------------------------------------------------


def test_stats_on_constructed_scene():
    labels = scene()
    stats = compute_class_stats(labels, NAMES)
    assert [s["class_id"] for s in stats] == [1, 2, 4]  # class 3 (sky) is absent: not reported
    by_id = {s["class_id"]: s for s in stats}
    for s in stats:
        assert tuple(s) == STAT_KEYS
        assert s["class_name"] == NAMES[s["class_id"] - 1]
        assert math.isnan(s["score_mean"]) and math.isnan(s["score_max"])
        assert s["rle_size"] == [20, 30]
    assert by_id[1]["pixel_count"] == 32 and by_id[1]["components"] == 2
    assert by_id[2]["pixel_count"] == 36 and by_id[2]["components"] == 1
    assert by_id[4]["pixel_count"] == 2 and by_id[4]["components"] == 1
    assert by_id[1]["fraction"] == pytest.approx(32 / 600)
    assert by_id[1]["bbox_xywh"] == [1, 1, 23, 13]
    assert by_id[2]["bbox_xywh"] == [2, 8, 10, 10]
    assert by_id[4]["bbox_xywh"] == [28, 0, 2, 2]


def test_stats_rle_and_bbox_agree_with_pycocotools():
    labels = scene()
    for s in compute_class_stats(labels, NAMES):
        mask = labels == s["class_id"]
        rle = {"size": s["rle_size"], "counts": s["rle_counts"]}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert s["rle_counts"] == reference["counts"].decode("ascii")
        assert s["bbox_xywh"] == [int(v) for v in mask_utils.toBbox(reference)]


def test_stats_random_label_map_uint16_many_classes():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 300, (40, 50)).astype(np.uint16)
    labels[:, -1] = 299  # a class touching the last column (no trailing background run)
    names = [f"c{k}" for k in range(1, 300)]
    stats = compute_class_stats(labels, names)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    assert [s["class_id"] for s in stats] == ids.tolist()
    assert [s["pixel_count"] for s in stats] == counts.tolist()
    measure = pytest.importorskip("skimage.measure")
    for s in stats[::25] + stats[-1:]:
        mask = labels == s["class_id"]
        assert mask_utils.decode({"size": s["rle_size"], "counts": s["rle_counts"]}).astype(
            bool
        ).tolist() == (mask.tolist())
        assert s["components"] == measure.label(mask, connectivity=2, return_num=True)[1]


def test_stats_scores_at_model_resolution():
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[:4, :4] = 1  # top-left quarter -> score cell (0, 0) of a 2x2 grid
    labels[4:, :] = 2  # bottom half -> cells (1, 0) and (1, 1)
    labels[7, 7] = 3  # one pixel: owns no cell at 2x2 -> falls back to the cell holding it, (1, 1)
    scores = np.zeros((4, 2, 2), dtype=np.float32)
    scores[1] = [[0.9, 0.1], [0.0, 0.0]]
    scores[2] = [[0.0, 0.0], [0.2, 0.6]]
    scores[3] = [[0.0, 0.0], [0.0, 0.7]]
    stats = {s["class_id"]: s for s in compute_class_stats(labels, ["a", "b", "c"], scores)}
    assert stats[1]["score_mean"] == pytest.approx(0.9) and stats[1]["score_max"] == pytest.approx(0.9)
    assert stats[2]["score_mean"] == pytest.approx(0.4) and stats[2]["score_max"] == pytest.approx(0.6)
    assert stats[3]["score_mean"] == pytest.approx(0.7) and stats[3]["score_max"] == pytest.approx(0.7)


def test_stats_errors_name_the_problem():
    labels = scene()
    with pytest.raises(ValueError, match="class id 4 but only 2"):
        compute_class_stats(labels, NAMES[:2])
    with pytest.raises(ValueError, match=r"C > 4"):
        compute_class_stats(labels, NAMES, np.zeros((3, 4, 4), np.float32))


def test_stats_background_only_and_one_pixel():
    assert compute_class_stats(np.zeros((5, 5), np.uint8), NAMES) == []
    (only,) = compute_class_stats(np.ones((1, 1), np.uint8), NAMES, np.ones((2, 3, 3), np.float32))
    assert only["pixel_count"] == 1 and only["fraction"] == 1.0 and only["bbox_xywh"] == [0, 0, 1, 1]
    assert only["score_mean"] == 1.0 and only["components"] == 1


def test_stats_big_map_with_few_classes_is_fast():
    import time

    labels = np.zeros((3000, 4000), dtype=np.uint16)
    labels[100:900, 200:1500] = 7
    labels[2000:2900, 3000:3900] = 1200
    names = [f"c{k}" for k in range(1, 2001)]
    start = time.perf_counter()
    stats = compute_class_stats(labels, names, np.random.default_rng(6).random((2001, 64, 64)))
    elapsed = time.perf_counter() - start
    assert [s["class_id"] for s in stats] == [7, 1200]
    assert stats[0]["pixel_count"] == 800 * 1300
    assert elapsed < 5.0, f"compute_class_stats took {elapsed:.1f}s on a 12 Mpx map with 2 classes"


# --- statistics at the photo's size from the stored (argmax-size) map ---------------------------------


def blobby(rng, shape, classes: int) -> np.ndarray:
    """A label map of blocks of random sizes (regions, holes, diagonal touches), ids 0..classes."""
    h, w = shape
    coarse = rng.integers(0, classes + 1, (h // 3 + 2, w // 3 + 2))
    rows = np.sort(rng.integers(0, coarse.shape[0], h))
    cols = np.sort(rng.integers(0, coarse.shape[1], w))
    return coarse[np.ix_(rows, cols)].astype(np.uint8)


SIZES = [  # (stored map, photo): the job's 2:1, odd ratios, 1 px, equal, and downscales
    ((69, 102), (138, 204)), ((23, 31), (61, 47)), ((1, 9), (5, 30)), ((17, 17), (17, 17)),
    ((30, 40), (11, 13)), ((12, 5), (31, 3)), ((40, 40), (41, 79)),
]


@pytest.mark.parametrize("small_shape,size", SIZES)
def test_stats_from_the_small_map_equal_those_of_the_upscaled_map(small_shape, size):
    from diffseg.codecs.upscale import upscale_labels

    rng = np.random.default_rng(sum(small_shape) + sum(size))
    for trial, classes in enumerate((1, 4, 12)):
        small = blobby(rng, small_shape, classes) if trial != 2 else rng.integers(0, classes + 1, small_shape)
        small = small.astype(np.uint8)
        names = [f"c{k}" for k in range(1, classes + 1)]
        scores = rng.random((classes + 1, 5, 7)).astype(np.float32)
        full = upscale_labels(small, *size)
        from_small = compute_class_stats(small, names, scores, size=size)
        assert from_small == compute_class_stats(full, names, scores)
        ids, counts = np.unique(full[full > 0], return_counts=True)
        assert [s["class_id"] for s in from_small] == ids.tolist()
        assert [s["pixel_count"] for s in from_small] == counts.tolist()


@pytest.mark.parametrize("small_shape,size", SIZES)
def test_stats_from_the_small_map_match_pycocotools_and_skimage_on_the_full_mask(small_shape, size):
    from diffseg.codecs.upscale import upscale_labels

    measure = pytest.importorskip("skimage.measure")
    rng = np.random.default_rng(7 + sum(size))
    small = blobby(rng, small_shape, 5)
    full = upscale_labels(small, *size)
    for s in compute_class_stats(small, NAMES + ["e"], size=size):
        mask = full == s["class_id"]
        assert s["rle_size"] == list(size)
        np.testing.assert_array_equal(mask_utils.decode({"size": s["rle_size"], "counts": s["rle_counts"]}), mask)
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert s["rle_counts"] == reference["counts"].decode("ascii")
        assert s["bbox_xywh"] == [int(v) for v in mask_utils.toBbox(reference)]
        assert s["components"] == measure.label(mask, connectivity=2, return_num=True)[1]


def test_components_survive_a_nearest_upscale_diagonals_included():
    small = np.zeros((4, 4), np.uint8)
    small[0, 0] = small[1, 1] = 1  # one diagonal component
    small[3, 3] = 1  # another
    small[0, 3] = 2
    (one, two) = compute_class_stats(small, ["a", "b"], size=(13, 7))  # rows repeat 4,3,3,3; cols 2,2,2,1
    assert one["components"] == 2 and two["components"] == 1
    assert one["pixel_count"] == 4 * 2 + 3 * 2 + 3 * 1  # the blocks of cells (0, 0), (1, 1), (3, 3)
    assert two["bbox_xywh"] == [6, 0, 1, 4]


def test_scores_of_a_tiny_class_at_the_photos_size():
    """A class owning no score cell falls back to the cells under its upscaled pixels."""
    small = np.zeros((8, 8), np.uint8)
    small[7, 7] = 3
    scores = np.zeros((4, 2, 2), np.float32)
    scores[3] = [[0.1, 0.2], [0.3, 0.7]]
    (only,) = compute_class_stats(small, ["a", "b", "c"], scores, size=(16, 24))
    assert only["pixel_count"] == 6 and only["score_mean"] == pytest.approx(0.7)
