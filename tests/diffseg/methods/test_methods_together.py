"""All methods on one capture of the tiny pipeline: same masks as alone, shapes at non-square sizes."""

import numpy as np
import pytest

from diffseg import Segmenter
from diffseg.methods.seediff import SeeDiffParams
from diffseg.methods.unsupervised import UnsupervisedParams
from diffseg.recipes import RECIPES, SHARED_RECIPE

VOCAB = ["cat", "potted plant", "tv monitor"]
COMPARED = ["diffsegmenter", "seediff", "maskdiffusion"]
ALL = [*COMPARED, "maskdiffusion-unsupervised"]
# score side per method at 128 px on the tiny pipeline (latent 16: levels 16, 8, 4, 2)
SCORE_SHAPES = {
    "diffsegmenter": (1 + len(VOCAB), 16, 16),  # finest level
    "seediff": (1 + len(VOCAB), 16, 16),  # finest level
    "maskdiffusion": (1 + len(VOCAB), 8, 8),  # the features' common size (finest left out)
    "maskdiffusion-unsupervised": (1 + UnsupervisedParams().k_max, 8, 8),
}


@pytest.fixture(scope="module")
def together(tiny_pipe, sample_photos):
    photos = [sample_photos["chelsea"]]  # 300x451: non-square (one image keeps the comparison fast)
    seg = Segmenter(tiny_pipe, VOCAB, method=ALL, resolution=128)
    return photos, seg.segment(photos)


def test_one_capture_gives_each_method_the_masks_it_gives_alone(tiny_pipe, together):
    photos, results = together
    shared = {k: RECIPES[SHARED_RECIPE][k] for k in ("timesteps", "template", "separator", "noise")}
    for method in COMPARED:  # alone, with the recipe several methods share (each paper's own differs)
        alone = Segmenter(tiny_pipe, VOCAB, method=method, resolution=128, **shared).segment_method(photos)
        for a, b in zip(alone, results[method]):
            assert np.allclose(a.scores, b.scores, atol=1e-5), method
            assert np.array_equal(a.label_map, b.label_map), method
            assert a.classes == b.classes


def test_shapes_and_dtypes_at_non_square_sizes(together):
    photos, results = together
    assert set(results) == set(ALL)
    for method in ALL:
        for photo, res in zip(photos, results[method]):
            assert res.method == method
            assert res.label_map.shape == photo.shape[:2] and res.label_map.dtype == np.uint8
            assert res.scores.shape == SCORE_SHAPES[method] and res.scores.dtype == np.float32
            assert not np.isnan(res.scores).any()
            present = sorted(int(i) for i in np.unique(res.label_map) if i)
            assert res.class_ids == present and len(res.classes) == len(present)


def test_unsupervised_segments_carry_class_or_segment_names(together):
    _, results = together
    for res in results["maskdiffusion-unsupervised"]:
        assert 0 not in np.unique(res.label_map)  # no background: every pixel is in a segment
        for cid, name in zip(res.class_ids, res.classes):
            assert name in VOCAB or name == f"segment {cid}"


def test_seediff_with_pamr_and_the_per_class_context(tiny_pipe, sample_photos):
    photo = sample_photos["rocket"]
    seg = Segmenter(tiny_pipe, VOCAB, method=["seediff", "maskdiffusion"], resolution=128, context="per_class",
                    params={"seediff": SeeDiffParams(pamr=True)})
    out = seg.segment([photo])
    res = out["seediff"][0]
    assert res.label_map.shape == photo.shape[:2]
    assert res.scores.shape == SCORE_SHAPES["seediff"] and np.all(res.scores[0] == np.float32(0.8))
    assert out["maskdiffusion"][0].scores.shape == SCORE_SHAPES["maskdiffusion"]
