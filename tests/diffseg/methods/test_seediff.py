"""SeeDiff on planted attention maps: seeds from cross-attention grow into the regions we construct."""

import pytest
import torch

from diffseg.capture import CapturedMaps, SelfAttention
from diffseg.methods import get, needs
from diffseg.methods.seediff import SeeDiffParams, seed_maps, seediff_levels

SIDES = (32, 16, 8, 4)  # ranks 0..3: the seed level (rank 2) is 8 here, refinement at 16 then 32


def planted_regions(side, flip=False):
    """(side, side) ints: 1 = left third, 2 = lower-right block, 0 = background (mirrored if flip)."""
    r = torch.zeros(side, side, dtype=torch.long)
    r[:, : side // 3] = 1
    r[side // 2 :, side * 2 // 3 :] = 2
    return r.flip(-1) if flip else r


def planted_cross(regions, tokens, spans, g, strength=0.3):
    """(N, T) probabilities: the tokens of class c attend inside region c; class 3 gets faint noise."""
    flat = regions.flatten()
    probs = torch.full((flat.numel(), tokens), 0.005) + 0.01 * torch.rand(flat.numel(), tokens, generator=g)
    for cls, span in ((1, spans[0]), (2, spans[1])):
        inside = flat == cls
        for t in span:
            probs[inside, t] = strength + 0.05 * torch.rand(int(inside.sum()), generator=g)
    probs[:, 0] = 0
    probs[:, 0] = 1 - probs.sum(-1)
    return probs


def planted_maps(batch_flips=(False,), tokens=12, spans=([2], [4, 5], [7]), first_up_sides=SIDES[:3], seed=0):
    """Cross maps (two layers per level, one faint) and region-following self-attention per image."""
    g = torch.Generator().manual_seed(seed)
    maps = CapturedMaps()
    for side in SIDES:
        layers = []
        for strength in (0.3, 0.05):
            layers.append(torch.stack([planted_cross(planted_regions(side, f), tokens, spans, g, strength)
                                       for f in batch_flips]))
        maps.cross_layers[side] = layers
        maps.cross[side] = torch.stack(layers).mean(0)
        if side in first_up_sides:
            name = f"up.{side}.attn1"
            q = torch.stack([torch.nn.functional.one_hot(planted_regions(side, f).flatten(), 3).float()
                             for f in batch_flips])[:, None] * 20
            q = q + 0.1 * torch.randn(q.shape, generator=g)
            maps.self_attn[side] = SelfAttention([(f"down.{side}.attn1", q.flip(-1), q, 1.0), (name, q, q, 1.0)])
            maps.first_up[side] = name
    return maps, [list(s) for s in spans]


def iou(a, b):
    return (a & b).sum().item() / max(1, (a | b).sum().item())


def test_seeds_grow_into_the_planted_regions_and_the_absent_class_is_filtered():
    flips = (False, True)
    maps, spans = planted_maps(batch_flips=flips)
    scores = get("seediff")(maps, spans)
    assert scores.shape == (2, 4, 32, 32) and scores.dtype == torch.float32
    assert torch.all(scores[:, 0] == 0.3)  # threshold without PAMR
    assert torch.isinf(scores[:, 3]).all() and (scores[:, 3] < 0).all()
    for b, flip in enumerate(flips):
        labels = scores[b].argmax(0)
        truth = planted_regions(32, flip)
        for cls in (0, 1, 2):
            assert iou(labels == cls, truth == cls) >= 0.9, (b, cls)


def test_seed_level_is_rank_two_or_the_coarsest_with_a_decoder_self_attention():
    maps, _ = planted_maps()
    assert seediff_levels(maps) == [8, 16, 32]
    assert seediff_levels(maps, seed_rank=1) == [16, 32]
    fewer, _ = planted_maps(first_up_sides=(32, 16))
    assert seediff_levels(fewer) == [16, 32]
    none, _ = planted_maps(first_up_sides=())
    with pytest.raises(ValueError, match="first decoder self-attention"):
        seediff_levels(none)


def test_method_declares_what_it_reads():
    n = needs("seediff")
    assert n.cross_layers and {(0, "first_up"), (1, "first_up"), (2, "first_up")} <= n.self_attn


def test_nearly_flat_layers_are_down_weighted_in_the_seed_map():
    g = torch.Generator().manual_seed(0)
    regions = planted_regions(8)
    strong = planted_cross(regions, 12, [[2], [4]], g)[None]
    flat = torch.full_like(strong, 1 / 12) + 1e-5 * torch.rand(strong.shape, generator=g)
    truth = (regions == 1).float()
    weighted = seed_maps([strong, flat], [[2]], flat_variance=1e-6, flat_weight=0.01)[0, 0]
    unweighted = seed_maps([strong, flat], [[2]], flat_variance=0.0, flat_weight=0.01)[0, 0]
    assert (weighted - truth).abs().mean() < 0.05
    assert (unweighted - truth).abs().mean() > (weighted - truth).abs().mean() + 0.05


def test_pamr_option_thresholds_at_point_eight_and_needs_the_image():
    maps, spans = planted_maps()
    with pytest.raises(ValueError, match="maps.image"):
        get("seediff")(maps, spans, SeeDiffParams(pamr=True))
    truth = planted_regions(32)
    image = (truth == 1).float()[None, None].expand(1, 3, 32, 32).clone()
    image[:, 1] = (truth == 2).float()
    maps.image = torch.nn.functional.interpolate(image, size=(64, 64), mode="nearest")
    scores = get("seediff")(maps, spans, SeeDiffParams(pamr=True))
    assert scores.shape == (1, 4, 32, 32) and torch.all(scores[:, 0] == 0.8)
    labels = scores[0].argmax(0)
    assert iou(labels == 1, truth == 1) >= 0.9 and iou(labels == 2, truth == 2) >= 0.9
    bigger = get("seediff")(maps, spans, SeeDiffParams(pamr=True, pamr_upsample=2, threshold=0.5))
    assert bigger.shape == (1, 4, 64, 64) and torch.all(bigger[:, 0] == 0.5)


def test_bad_params_name_the_bad_value():
    with pytest.raises(ValueError, match="pamr_upsample=0"):
        SeeDiffParams(pamr_upsample=0)
    with pytest.raises(ValueError, match="seed_rank=-1"):
        SeeDiffParams(seed_rank=-1)


def test_flat_layer_threshold_is_the_paper_1e4_on_head_summed_maps_scaled_by_the_head_count():
    """A seed-level layer whose head-mean variance is 6e-7 is flat with SD 1.x's 8 heads (head-summed
    variance 64 x 6e-7 < 1e-4) but not with SD 2.x's 20 heads at 16x16 (400 x 6e-7 > 1e-4)."""
    maps, spans = planted_maps()
    seed_side = seediff_levels(maps)[0]
    regions = planted_regions(seed_side).flatten()
    weak = torch.full_like(maps.cross_layers[seed_side][1], 1 / 12)
    inside = (regions == 2).float()
    weak[0, :, 2] += (6e-7 / inside.var(unbiased=True)) ** 0.5 * inside  # class 1's token, region 2
    assert abs(float(weak[0, :, 2].var()) - 6e-7) < 1e-9
    maps.cross_layers[seed_side][1] = weak
    run = lambda **kw: get("seediff")(maps, spans, SeeDiffParams(**kw))  # noqa: E731
    nothing_flat = run(flat_weight=1.0)
    assert torch.equal(run(heads=20), nothing_flat)
    assert not torch.allclose(run(heads=8), nothing_flat)
    assert torch.equal(run(), run(heads=8))  # no head count anywhere: SD 1.x's 8
    maps.heads = {seed_side: 20}  # a capture that records the head count per level
    assert torch.equal(run(), nothing_flat)
    with pytest.raises(ValueError, match="heads=0"):
        SeeDiffParams(heads=0)
