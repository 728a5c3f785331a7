"""diffseg.codecs.upscale: the nearest resize of stored label maps is torch's, bit for bit, without torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffseg.codecs.upscale import nearest_source_index, source_bands, upscale_labels


def torch_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """What the Segmenter did on the device before the argmax-size map was stored."""
    t = torch.from_numpy(labels.astype(np.int64))
    out = F.interpolate(t[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
    return out.numpy().astype(labels.dtype)


def test_source_index_is_torchs_for_every_pair_of_small_sizes_and_the_photo_sizes():
    targets = [*range(1, 70), 691, 1024, 1382, 2048, 3000, 4000, 6000, 7999, 8191]
    for source in [*range(1, 70), 512, 563, 691, 768, 1000, 1023, 1024]:
        column = torch.arange(source, dtype=torch.float32)[None, None, :, None]
        for target in targets + [2 * source, 3 * source - 1]:
            expected = F.interpolate(column, size=(target, 1), mode="nearest")[0, 0, :, 0].long().numpy()
            assert np.array_equal(nearest_source_index(source, target), expected), (source, target)


@pytest.mark.parametrize("small,size", [((691, 1024), (1382, 2048)), ((7, 5), (23, 9)), ((5, 9), (3, 4)),
                                        ((1, 1), (17, 31)), ((64, 64), (64, 64)), ((10, 12), (20, 7))])
def test_upscale_equals_torch_interpolate(small, size):
    labels = np.random.default_rng(0).integers(0, 300, small).astype(np.uint16)
    np.testing.assert_array_equal(upscale_labels(labels, *size), torch_nearest(labels, *size))
    eight = (labels % 256).astype(np.uint8)
    out = upscale_labels(eight, *size)
    assert out.dtype == np.uint8 and np.array_equal(out, torch_nearest(eight, *size))


def test_upscale_to_the_same_size_is_the_map_itself():
    labels = np.zeros((3, 4), np.uint8)
    assert upscale_labels(labels, 3, 4) is labels


def test_bands_cover_the_target_in_order():
    kept, repeats = source_bands(691, 1382)
    assert kept.tolist() == list(range(691)) and set(repeats.tolist()) == {2}
    kept, repeats = source_bands(9, 4)  # a downscale skips source rows
    assert repeats.sum() == 4 and np.array_equal(np.repeat(kept, repeats), nearest_source_index(9, 4))


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="target size must be positive"):
        upscale_labels(np.zeros((2, 2), np.uint8), 0, 3)
    with pytest.raises(ValueError, match=r"non-empty \(h, w\)"):
        upscale_labels(np.zeros((2, 2, 3), np.uint8), 4, 4)
