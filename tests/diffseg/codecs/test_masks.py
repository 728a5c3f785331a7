"""diffseg.codecs.masks: PNG round trips of label maps and scores, and a result as its table rows."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from diffseg.codecs.masks import (
    decode_label_map,
    decode_label_png,
    decode_scores_png,
    encode_label_png,
    encode_scores_png,
)

# --- PNG encodings ----------------------------------------------------------------------------------


def test_label_png_round_trip_uint8():
    labels = np.random.default_rng(0).integers(0, 256, (17, 23), dtype=np.uint8)
    data = encode_label_png(labels)
    assert Image.open(io.BytesIO(data)).mode == "L"
    back = decode_label_png(data)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)


def test_label_png_round_trip_uint16_beyond_255_classes():
    labels = np.random.default_rng(1).integers(0, 65536, (19, 7), dtype=np.uint16)
    labels[0, 0], labels[0, 1] = 256, 65535
    data = encode_label_png(labels)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode.startswith("I;16")  # a real 16-bit PNG, not an 8-bit one with wrapped values
    back = decode_label_png(data)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 2), np.int32), np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), float)]
)
def test_label_png_rejects_other_shapes_and_dtypes(bad):
    with pytest.raises(ValueError, match=str(bad.dtype)):
        encode_label_png(bad)


def test_scores_png_round_trip_within_half_a_step_of_each_channel():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(5, 16, 16)).astype(np.float32)
    scores[1] *= 1e-3  # a channel of tiny differences keeps them: each channel has its own scale
    scores[0] = 0.4  # constant background threshold: exact
    scores[3] = -np.inf  # class removed by the category filter
    scores[4, 0, 0] = np.nan  # read back as -inf
    data = encode_scores_png(scores)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode.startswith("I;16") and image.size == (16, 5 * 16)
    back = decode_scores_png(data)
    assert back.shape == (5, 16, 16) and back.dtype == np.float32
    assert np.all(back[0] == np.float32(0.4)) and np.all(back[3] == -np.inf) and back[4, 0, 0] == -np.inf
    for c in (1, 2, 4):
        finite = np.isfinite(scores[c])
        span = scores[c][finite].max() - scores[c][finite].min()
        assert np.abs(back[c][finite] - scores[c][finite]).max() <= span / 65534 / 2 * 1.01 + 1e-7


def test_scores_png_decodes_with_pillow_and_numpy_alone():
    """The recipe of the module docstring (and docs/job.md) gives what decode_scores_png gives."""
    import json

    scores = np.random.default_rng(5).random((3, 8, 8)).astype(np.float32)
    scores[2] = -np.inf
    png = encode_scores_png(scores)
    im = Image.open(io.BytesIO(png))
    meta = json.loads(im.text["diffseg-scores"])
    q = np.asarray(im).astype(np.float64).reshape(len(meta["offset"]), -1, im.width)
    off, sc = (np.asarray(meta[k])[:, None, None] for k in ("offset", "scale"))
    plain = np.where(q == 0, -np.inf, off + sc * (q - 1))
    np.testing.assert_array_equal(plain.astype(np.float32), decode_scores_png(png))


def test_old_8_bit_scores_png_still_decodes():
    old = np.array([[0, 51], [255, 102], [0, 0], [204, 255]], dtype=np.uint8)  # 2 channels of 2x2
    buffer = io.BytesIO()
    Image.fromarray(old).save(buffer, format="PNG")
    back = decode_scores_png(buffer.getvalue())
    np.testing.assert_allclose(back, old.reshape(2, 2, 2) / 255.0, atol=1e-7)


def test_scores_png_channel_count_comes_from_the_png():
    scores = np.full((3, 4, 5), 0.5, dtype=np.float32)  # a 5 x 12 PNG: 12 is no multiple of 5
    data = encode_scores_png(scores)
    assert decode_scores_png(data).shape == (3, 4, 5)
    with pytest.raises(ValueError, match="channels=5"):
        decode_scores_png(data, channels=5)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((12, 5), dtype=np.uint8)).save(buffer, format="PNG")  # old, non-square
    with pytest.raises(ValueError, match="channels"):
        decode_scores_png(buffer.getvalue())
    assert decode_scores_png(buffer.getvalue(), channels=3).shape == (3, 4, 5)
    with pytest.raises(ValueError, match="not a readable PNG"):
        decode_scores_png(b"these bytes are no PNG")


def test_a_segmentation_encodes_to_the_masks_row_and_stats_rows_the_tables_store():
    from diffseg.codecs.masks import encode_segmentation
    from diffseg.segmentation import Segmentation

    labels = np.zeros((6, 8), np.uint8)
    labels[:3, :4], labels[3:, 4:] = 1, 3
    scores = np.random.default_rng(0).random((4, 3, 4), dtype=np.float32)
    seg = Segmentation(labels, scores, ["cat", "car"], "seediff")
    mask, stats = encode_segmentation(seg, ["cat", "dog", "car"])
    assert (mask["width"], mask["height"], mask["method"], mask["classes"]) == (8, 6, "seediff", ["cat", "car"])
    assert np.array_equal(decode_label_png(mask["label_map_png"]), labels) and mask["scores_png"] is None
    assert [s["class_name"] for s in stats] == ["cat", "car"] and [s["pixel_count"] for s in stats] == [12, 12]
    with_scores, _ = encode_segmentation(seg, ["cat", "dog", "car"], save_scores=True)
    assert decode_scores_png(with_scores["scores_png"]).shape == scores.shape
    # a method that names its own segments (unsupervised clustering): its names, not the vocabulary's
    own = Segmentation(labels, scores, ["segment 1", "dog-ish"], "maskdiffusion-unsupervised", class_ids=[1, 3])
    assert [s["class_name"] for s in encode_segmentation(own, ["cat"])[1]] == ["segment 1", "dog-ish"]


def test_label_pngs_are_standard_pngs_any_reader_decodes():
    """The fast encoder's bytes (unfiltered rows, Z_RLE) read back with Pillow alone, CRCs checked."""
    rng = np.random.default_rng(2)
    for labels in (rng.integers(0, 20, (37, 53)).astype(np.uint8), np.full((1, 1), 7, np.uint8),
                   rng.integers(0, 40000, (9, 300)).astype(np.uint16)):
        data = encode_label_png(labels)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # chunk CRCs and structure
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.size == labels.shape[::-1]
            assert image.mode == ("L" if labels.dtype == np.uint8 else "I;16")
            np.testing.assert_array_equal(np.asarray(image).astype(labels.dtype), labels)


def test_label_map_decodes_at_the_photos_size_as_the_segmenter_resized_it():
    import torch
    import torch.nn.functional as F

    from diffseg.segmentation import scores_to_labels

    rng = np.random.default_rng(4)
    for height, width in [(1382, 2048), (1001, 1537), (300, 2000), (700, 500)]:
        scores = torch.from_numpy(rng.normal(size=(6, 16, 16)).astype(np.float32))
        small, _ = scores_to_labels(scores, (height, width), 1024)
        assert max(small.shape) == min(1024, max(height, width))
        # the Segmenter's former device-side resize of the argmax map
        full = F.interpolate(torch.from_numpy(small)[None, None].float(), size=(height, width), mode="nearest")
        expected = full[0, 0].long().numpy().astype(np.uint8)
        decoded = decode_label_map(encode_label_png(small), width, height)
        assert decoded.shape == (height, width) and np.array_equal(decoded, expected)
    with pytest.raises(ValueError, match="must be positive"):
        decode_label_map(encode_label_png(small), 0, 5)


def test_the_job_stores_the_argmax_size_map_and_stats_at_the_photos_size():
    from diffseg.codecs.masks import encode_segmentation
    from diffseg.codecs.stats import compute_class_stats
    from diffseg.segmentation import Segmentation

    small = np.random.default_rng(5).integers(0, 4, (10, 15)).astype(np.uint8)
    scores = np.random.default_rng(6).random((4, 3, 4), dtype=np.float32)
    seg = Segmentation(small, scores, ["cat", "dog", "car"], "seediff", class_ids=[1, 2, 3], size=(21, 31))
    assert seg.label_map.shape == (21, 31)
    stored, stats = encode_segmentation(seg, ["cat", "dog", "car"], argmax_size=True)
    assert (stored["height"], stored["width"]) == (21, 31)
    assert np.array_equal(decode_label_png(stored["label_map_png"]), small)
    assert np.array_equal(decode_label_map(stored["label_map_png"], 31, 21), seg.label_map)
    assert stats == compute_class_stats(seg.label_map, ["cat", "dog", "car"], scores)
    full, full_stats = encode_segmentation(seg, ["cat", "dog", "car"])  # the library's default: photo size
    assert np.array_equal(decode_label_png(full["label_map_png"]), seg.label_map) and full_stats == stats
