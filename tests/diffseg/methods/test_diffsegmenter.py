"""DiffSegmenter on planted attention maps: regions we construct must be recovered."""

import torch

from diffseg.capture import CapturedMaps, SelfAttention
from diffseg.methods import get
from diffseg.methods.common import rank_weights
from diffseg.methods.diffsegmenter import DiffSegmenterParams


def planted_regions(side):
    """(side, side) ints: 1 = left third, 2 = lower-right square, 0 = background."""
    r = torch.zeros(side, side, dtype=torch.long)
    r[:, : side // 3] = 1
    r[side // 2 :, side * 2 // 3 :] = 2
    return r


def planted_maps(sides=(32, 16, 8, 4), tokens=12, spans=([2], [4, 5], [7]), seed=0):
    """Class 1 and 2 attend strongly inside their regions; class 3 (absent) gets faint uniform noise."""
    g = torch.Generator().manual_seed(seed)
    maps = CapturedMaps()
    for side in sides:
        regions = planted_regions(side).flatten()
        probs = torch.full((1, side * side, tokens), 0.005)
        probs += 0.01 * torch.rand(probs.shape, generator=g)
        for cls, span in ((1, spans[0]), (2, spans[1])):
            inside = regions == cls
            for t in span:
                probs[0, inside, t] = 0.3 + 0.05 * torch.rand(int(inside.sum()), generator=g)
        probs[0, :, 0] = 0
        probs[0, :, 0] = 1 - probs[0].sum(-1)  # the start token takes the rest, as in SD
        maps.cross[side] = probs
    finest = max(sides)
    regions = planted_regions(finest).flatten()
    q = torch.nn.functional.one_hot(regions, 3).float()[None, None] * 20  # attend within one's region
    maps.self_attn[finest] = SelfAttention([("layer", q, q, 1.0)])
    return maps, [list(s) for s in spans]


def iou(a, b):
    return (a & b).sum().item() / max(1, (a | b).sum().item())


def test_planted_regions_are_recovered_and_the_absent_class_is_filtered():
    maps, spans = planted_maps()
    scores = get("diffsegmenter")(maps, spans)
    assert scores.shape == (1, 4, 32, 32)
    assert torch.all(scores[:, 0] == DiffSegmenterParams().tau)
    assert torch.isinf(scores[0, 3]).all() and (scores[0, 3] < 0).all()
    labels = scores[0].argmax(0)
    truth = planted_regions(32)
    for cls in (0, 1, 2):
        assert iou(labels == cls, truth == cls) >= 0.9, cls


def test_self_attention_propagation_sharpens_boundaries_blurred_by_coarse_levels():
    maps, spans = planted_maps()
    truth = planted_regions(32)
    fn = get("diffsegmenter")
    sharp = fn(maps, spans)[0].argmax(0)
    blurred = fn(maps, spans, DiffSegmenterParams(propagate=False))[0].argmax(0)
    assert iou(sharp == 2, truth == 2) > iou(blurred == 2, truth == 2)


def test_filter_can_be_disabled():
    maps, spans = planted_maps()
    scores = get("diffsegmenter")(maps, spans, DiffSegmenterParams(filter_ratio=0.0))
    assert torch.isfinite(scores).all()


def test_level_weights_by_rank_keep_the_coarsest_and_renormalise():
    w = rank_weights([64, 32, 16, 8], (0.3, 0.5, 0.1, 0.1))
    assert w == {8: 0.3, 16: 0.5, 32: 0.1, 64: 0.1}
    w3 = rank_weights([16, 8, 4], (0.3, 0.5, 0.1, 0.1))
    assert abs(w3[4] - 0.3 / 0.9) < 1e-9 and abs(w3[8] - 0.5 / 0.9) < 1e-9 and abs(w3[16] - 0.1 / 0.9) < 1e-9
