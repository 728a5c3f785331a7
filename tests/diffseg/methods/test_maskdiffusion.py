"""MaskDiffusion and its unsupervised variant on planted decoder features and cross-attention."""

import pytest
import torch

from diffseg.capture import CapturedMaps
from diffseg.methods import get, namer, needs
from diffseg.methods.maskdiffusion import (
    MaskDiffusionParams,
    class_attention,
    decoder_features,
    prototype_scores,
)
from diffseg.methods.unsupervised import UnsupervisedParams, choose_k, kmeans, name_segments

SIDES = (32, 16, 8, 4)  # features used by default: 16, 8, 4 (the finest is left out); cross: 8 and 4
CHANNELS = {32: 16, 16: 48, 8: 64, 4: 80}


def planted_regions(side, variant=0):
    """(side, side) ints on a grid every level resolves: 1 = left quarter, 2 = lower-right block, 0 =
    background; variant 1 mirrors it, variant 2 adds a third region (3 = top-right block)."""
    r = torch.zeros(side, side, dtype=torch.long)
    q = side // 4
    r[:, :q] = 1
    r[2 * q :, 2 * q :] = 2
    if variant == 2:
        r[: q, 3 * q :] = 3
    return r.flip(-1) if variant == 1 else r


def planted_maps(variants=(0,), tokens=10, spans=([2], [4, 5], [7]), noise=0.3, seed=0):
    """Features: one random direction per (image, region, level) plus noise; cross-attention: class c's
    tokens attend inside region c (class 3 is absent: faint uniform attention)."""
    g = torch.Generator().manual_seed(seed)
    maps = CapturedMaps()
    for side in SIDES:
        feats, layers = [], [[], []]
        for v in variants:
            regions = planted_regions(side, v)
            dirs = torch.randn(4, CHANNELS[side], generator=g) * side / 4  # finer levels are sharper
            f = dirs[regions].permute(2, 0, 1) + noise * torch.randn(CHANNELS[side], side, side, generator=g)
            feats.append(f)
            flat = regions.flatten()
            for layer in layers:
                probs = 0.005 + 0.01 * torch.rand(side * side, tokens, generator=g)
                for cls, span in ((1, spans[0]), (2, spans[1])):
                    for t in span:
                        probs[flat == cls, t] = 0.3 + 0.05 * torch.rand(int((flat == cls).sum()), generator=g)
                probs[:, 0] = 0
                probs[:, 0] = 1 - probs.sum(-1)
                layer.append(probs)
        maps.features[side] = torch.stack(feats)
        maps.cross_layers[side] = [torch.stack(layer) for layer in layers]
        maps.cross[side] = torch.stack(maps.cross_layers[side]).mean(0)
    return maps, [list(s) for s in spans]


def iou(a, b):
    return (a & b).sum().item() / max(1, (a | b).sum().item())


def test_default_takes_the_argmax_over_classes_with_no_background():
    maps, spans = planted_maps(variants=(0, 1))
    scores = get("maskdiffusion")(maps, spans)
    assert scores.shape == (2, 4, 16, 16) and scores.dtype == torch.float32  # the features' common size
    assert MaskDiffusionParams().background is None
    assert torch.all(scores[:, 0] == float("-inf"))  # the paper: no background channel
    assert torch.isinf(scores[:, 3]).all()  # the absent class is filtered
    best = scores[:, 1:3].amax(1).flatten(1)
    assert torch.allclose(best.amin(-1), torch.zeros(2)) and torch.allclose(best.amax(-1), torch.ones(2))
    for b, v in enumerate((0, 1)):
        labels, truth = scores[b].argmax(0), planted_regions(16, v)
        assert (labels > 0).all()
        for cls in (1, 2):
            assert (labels[truth == cls] == cls).float().mean() >= 0.95, (b, cls)


def test_background_threshold_is_relative_to_the_image_own_similarities():
    maps, spans = planted_maps(variants=(0, 1))
    t = 0.5
    scores = get("maskdiffusion")(maps, spans, MaskDiffusionParams(background=t))
    assert torch.all(scores[:, 0] == t)
    f = decoder_features(maps)
    cos = prototype_scores(f, class_attention(maps, spans, 2, 16))[:, :2]  # classes 1, 2 (3 is filtered)
    best = cos.amax(1)
    lo, hi = best.flatten(1).amin(-1)[:, None, None], best.flatten(1).amax(-1)[:, None, None]
    expected_background = best < lo + t * (hi - lo)
    assert torch.equal(scores.argmax(1) == 0, expected_background)
    for b, v in enumerate((0, 1)):  # and it is the planted background
        labels, truth = scores[b].argmax(0), planted_regions(16, v)
        for cls in (0, 1, 2):
            assert iou(labels == cls, truth == cls) >= 0.9, (b, cls)
    # the same threshold on features scaled by any positive factor and shifted cosines: same labels
    shifted = CapturedMaps(cross=maps.cross, cross_layers=maps.cross_layers,
                           features={r: 7.0 * x for r, x in maps.features.items()})
    assert torch.equal(get("maskdiffusion")(shifted, spans, MaskDiffusionParams(background=t)).argmax(1),
                       scores.argmax(1))


def test_each_level_weighs_the_same_whatever_its_width():
    """Planted: a 2560-channel level that says nothing (the same vector at every pixel) and a 640-channel
    level with orthogonal vectors in two halves. Per-level normalisation: the cosine across the halves is
    the mean of the levels' cosines, (1 + 0) / 2; raw concatenation lets width decide: 2560 / 3200."""
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(2560, generator=g)
    wide = (wide / wide.norm() * 2560**0.5)[None, :, None, None].expand(1, 2560, 4, 4)  # |f|^2 = width
    halves = torch.zeros(1, 640, 8, 8)
    halves[0, :320, :, :4] = 2.0**0.5  # left half: the first 320 channels, |f|^2 = 640 = width
    halves[0, 320:, :, 4:] = 2.0**0.5  # right half: the other 320
    maps = CapturedMaps(features={8: halves, 4: wide})
    for norm, expected in (("per_level", 0.5), ("concat", 2560 / 3200)):
        f = decoder_features(maps, skip_finest=0, feature_norm=norm)[0]
        assert f.shape == (3200, 8, 8)
        assert abs(float(f[:, 0, 0] @ f[:, 0, 7]) - expected) < 1e-5, norm
    with pytest.raises(ValueError, match="feature_norm='width'"):
        MaskDiffusionParams(feature_norm="width")


def test_features_are_unit_vectors_at_the_finest_level_used():
    maps, _ = planted_maps()
    f = decoder_features(maps, skip_finest=1)
    assert f.shape == (1, CHANNELS[16] + CHANNELS[8] + CHANNELS[4], 16, 16)
    assert torch.allclose(f.norm(dim=1), torch.ones(1, 16, 16), atol=1e-5)
    assert decoder_features(maps, skip_finest=0).shape[-1] == 32
    with pytest.raises(ValueError, match="skip_finest_features=4"):
        decoder_features(maps, skip_finest=4)
    n = needs("maskdiffusion")
    assert n.features and n.cross


def test_unsupervised_finds_the_number_of_regions_and_the_regions():
    maps, _ = planted_maps(variants=(0, 2))
    scores = get("maskdiffusion-unsupervised")(maps, None)
    p = UnsupervisedParams()
    assert scores.shape == (2, 1 + p.k_max, 16, 16)
    assert torch.isinf(scores[:, 0]).all() and (scores[:, 0] < 0).all()  # no background channel
    for b, n_regions in enumerate((3, 4)):
        used = torch.isfinite(scores[b].flatten(1)).all(-1)
        assert used.tolist() == [False] + [True] * n_regions + [False] * (p.k_max - n_regions)
        labels, truth = scores[b].argmax(0), planted_regions(16, (0, 2)[b])
        sizes = [int((labels == j).sum()) for j in range(1, n_regions + 1)]
        assert sizes == sorted(sizes, reverse=True)  # numbered by decreasing size
        for region in range(n_regions):
            best = max(iou(labels == j, truth == region) for j in range(1, n_regions + 1))
            assert best >= 0.9, (b, region)


def test_unsupervised_with_a_given_k_returns_exactly_the_planted_segments_every_time():
    maps, _ = planted_maps(variants=(2,))  # background 112 px, two regions of 64 px, one block of 16 px
    p = UnsupervisedParams(k=4)
    a = get("maskdiffusion-unsupervised")(maps, None, p)
    assert a.shape == (1, 5, 16, 16) and torch.isinf(a[0, 0]).all()  # K = 4 segment channels
    labels, truth = a[0].argmax(0), planted_regions(16, 2)
    segment = {region: set(labels[truth == region].tolist()) for region in range(4)}
    assert all(len(ids) == 1 for ids in segment.values())  # each planted region is one whole segment
    assert segment[0] == {1} and segment[3] == {4}  # numbered by decreasing size: 112 px first, 16 px last
    assert segment[1] | segment[2] == {2, 3}  # the two 64 px regions take 2 and 3
    assert torch.equal(get("maskdiffusion-unsupervised")(maps, None, p), a)  # same call, same bits


def test_segments_are_named_by_cross_attention_overlap():
    maps, spans = planted_maps()
    scores = get("maskdiffusion-unsupervised")(maps, None)
    names = namer("maskdiffusion-unsupervised")(maps, spans, scores, ["cat", "dog", "absent"], None)
    labels, truth = scores[0].argmax(0), planted_regions(16)
    by_region = {}
    for j in range(1, 4):
        region = int(truth[labels == j].mode().values)
        by_region[region] = names[0][j - 1]
    assert by_region == {0: by_region[0], 1: "cat", 2: "dog"}
    assert by_region[0].startswith("segment ")  # the background overlaps no class strongly
    assert names[0][3:] == [f"segment {j}" for j in range(4, 9)]  # unused channels
    assert name_segments(maps, [], scores, [], None)[0][:3] == ["segment 1", "segment 2", "segment 3"]


def test_eigengap_and_kmeans_helpers():
    values = torch.tensor([0.0, 0.01, 0.02, 0.9, 0.95, 1.0], dtype=torch.float64)
    assert choose_k(values, 2, 4) == 3
    assert choose_k(values, 4, 5) == 5
    assert choose_k(values, 2, 10) == 3  # k_max beyond the values available is clamped
    x = torch.cat([torch.zeros(5, 2), torch.ones(5, 2) * 10])
    labels = kmeans(x, 2, torch.Generator().manual_seed(0))
    assert len(set(labels[:5].tolist())) == 1 and len(set(labels[5:].tolist())) == 1 and labels[0] != labels[5]
    with pytest.raises(ValueError, match="k_min=3, k_max=2"):
        UnsupervisedParams(k_min=3, k_max=2)
