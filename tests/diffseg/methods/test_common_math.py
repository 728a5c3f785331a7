"""Shared math of the methods: batched Otsu against scikit-image, PAMR, cosine sums through attention."""

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from diffseg.capture import SelfAttention
from diffseg.methods.common import (
    cosine_sums,
    otsu_threshold,
    otsu_threshold_from_histogram,
    pamr,
)


def random_rows(rng, n_rows=24, n=500):
    """Rows of different shapes: bimodal mixtures, uniform, skewed, heavy ties."""
    rows = []
    for i in range(n_rows):
        kind = i % 4
        if kind == 0:
            a = rng.normal(rng.uniform(-2, 0), 0.3, n // 3)
            b = rng.normal(rng.uniform(0.5, 3), rng.uniform(0.1, 1), n - n // 3)
            rows.append(np.concatenate([a, b]))
        elif kind == 1:
            rows.append(rng.uniform(0, 1, n))
        elif kind == 2:
            rows.append(rng.exponential(1.0, n) ** 2)
        else:
            rows.append(rng.integers(0, 5, n).astype(float) / 4)
    return np.stack(rows)


@pytest.mark.parametrize("bins", [256, 32])
def test_otsu_agrees_with_skimage_within_one_bin(bins):
    rows = random_rows(np.random.default_rng(0))
    got = otsu_threshold(torch.tensor(rows, dtype=torch.float32).view(4, 6, -1), bins=bins).view(-1)
    for row, t in zip(rows, got.tolist()):
        ref = threshold_otsu(row.astype(np.float32), nbins=bins)
        width = (row.max() - row.min()) / bins
        assert abs(t - ref) <= width * 1.001, (t, ref, width)


def test_otsu_from_histograms_matches_skimage_exactly():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 100, (16, 64)).astype(np.float64)
    centers = np.sort(rng.uniform(-5, 5, (16, 64)), axis=1)
    got = otsu_threshold_from_histogram(torch.tensor(counts), torch.tensor(centers))
    for c, x, t in zip(counts, centers, got.tolist()):
        assert t == pytest.approx(threshold_otsu(hist=(c, x)), abs=1e-12)


def test_otsu_of_a_constant_row_selects_nothing():
    x = torch.full((2, 3, 10), 0.25)
    t = otsu_threshold(x)
    assert t.shape == (2, 3) and torch.all(t == 0.25)
    assert not (x > t[..., None]).any()
    with pytest.raises(ValueError, match="bins=1"):
        otsu_threshold(x, bins=1)


def step_image(side=16, col=8):
    img = torch.zeros(1, 3, side, side)
    img[..., col:] = 1.0
    return img


def test_pamr_keeps_a_constant_mask_constant():
    image = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    masks = torch.full((2, 4, 12, 12), 0.7)
    out = pamr(image, masks, iterations=10, dilations=(1, 2))
    assert torch.allclose(out, masks, atol=1e-6)


def test_pamr_on_a_constant_image_gives_no_nan():
    masks = torch.rand(1, 2, 10, 10, generator=torch.Generator().manual_seed(0))
    out = pamr(torch.full((1, 3, 10, 10), 0.5), masks)
    assert torch.isfinite(out).all()
    assert out.min() >= masks.min() - 1e-6 and out.max() <= masks.max() + 1e-6  # convex averaging


def test_pamr_sharpens_a_blurred_edge_where_the_image_has_the_step():
    side, col = 16, 8
    x = torch.arange(side, dtype=torch.float32)
    ramp = torch.sigmoid((x - col + 0.5) / 2.0)  # blurred step of the mask around the image's step
    masks = ramp.expand(1, 1, side, side).clone()
    truth = (x >= col).float().expand(side, side)
    out = pamr(step_image(side, col), masks, iterations=10)
    jump_before = (masks[0, 0, :, col] - masks[0, 0, :, col - 1]).mean()
    jump_after = (out[0, 0, :, col] - out[0, 0, :, col - 1]).mean()
    assert jump_after > jump_before + 0.1
    assert (out[0, 0] - truth).abs().mean() < (masks[0, 0] - truth).abs().mean()


def random_attention(b=2, heads=3, side=6, d=5, layers=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    entries = []
    for i in range(layers):
        q = torch.randn(b, heads, side * side, d, generator=g)
        k = torch.randn(b, heads, side * side, d, generator=g)
        entries.append((f"layer{i}", q, k, 0.7))
    return SelfAttention(entries)


def test_attention_rows_in_chunks_equal_the_materialised_mean_map():
    sa = random_attention()
    brute = sum(torch.softmax(q @ k.transpose(-1, -2) * scale, -1).mean(1) for _, q, k, scale in sa.entries) / 2
    chunks = list(sa.row_chunks(max_elements=1000))  # B=2 x heads=3 x N=36 logits a row: 4 rows
    assert [c[:2] for c in chunks] == [(start, start + 4) for start in range(0, 36, 4)]
    assert torch.allclose(torch.cat([r for _, _, r in chunks], 1), brute, atol=1e-6)
    assert torch.allclose(sa.dense(max_elements=1000), brute, atol=1e-6)
    assert torch.allclose(sa.dense(), brute, atol=1e-6)


def test_cosine_sums_equal_the_brute_force_sum_in_any_chunking():
    sa = random_attention()
    s = sa.dense()  # (B, N, N)
    w = (torch.rand(2, 36, 3, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    unit = s / s.norm(dim=-1, keepdim=True)
    brute = unit @ unit.transpose(1, 2) @ w  # sum over seeds of cos(S[p], S[s])
    for budget in (1 << 25, 100):
        assert torch.allclose(cosine_sums(sa, w, max_elements=budget), brute, atol=1e-4)


def test_otsu_split_is_exact_when_the_lower_cluster_fills_part_of_the_threshold_bin():
    """skimage returns the threshold bin's centre, so low values above it would count as foreground;
    ours returns the largest value of the lower class, so `x > t` is exactly the two clusters."""
    g = torch.Generator().manual_seed(0)
    low = 0.003 * torch.rand(2, 48, generator=g)  # all inside the first of 256 bins over [0, 1]
    high = 0.6 + 0.4 * torch.rand(2, 16, generator=g)
    high[:, 0] = 1.0
    low[:, 0] = 0.0
    x = torch.cat([low, high], -1)
    t = otsu_threshold(x)
    assert torch.equal(x > t[:, None], torch.cat([torch.zeros_like(low), torch.ones_like(high)], -1).bool())


def test_cosine_sums_read_dense_self_attention_maps_too():
    """A capture in self_mode="dense" keeps (B, N, N) maps instead of queries and keys."""
    sa = random_attention(layers=1)
    dense = SelfAttention([], {"layer0": sa.dense()})
    w = (torch.rand(2, 36, 2, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    assert torch.allclose(cosine_sums(dense, w), cosine_sums(sa, w, max_elements=100), atol=1e-4)
