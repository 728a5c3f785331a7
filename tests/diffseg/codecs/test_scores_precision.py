"""Saved scores reproduce the job's own labels: real tiny-model scores of every method, through the PNG."""

import numpy as np
import pytest
import torch

from diffseg import Segmenter
from diffseg.codecs.masks import decode_scores_png, encode_scores_png
from diffseg.segmentation import scores_to_label_map

VOCAB = ["cat", "potted plant", "tv monitor", "sofa"]
METHODS = ["diffsegmenter", "seediff", "maskdiffusion", "maskdiffusion-unsupervised"]


def agreement(seg, decoded: np.ndarray, max_side: int) -> float:
    """Fraction of pixels where the label map recomputed from `decoded` scores equals the job's."""
    labels = scores_to_label_map(torch.from_numpy(decoded), seg.label_map.shape, max_side, seg.label_map.dtype)
    return float((labels == seg.label_map).mean())


@pytest.fixture(scope="module")
def results(tiny_pipe, sample_photos):
    seg = Segmenter(tiny_pipe, VOCAB, method=METHODS, resolution=128)
    photos = [sample_photos["chelsea"], sample_photos["coffee"]]
    return seg, seg.segment(photos)


@pytest.mark.parametrize("method", METHODS)
def test_argmax_of_the_saved_scores_reproduces_the_job_labels(results, method):
    seg, out = results
    for s in out[method]:
        decoded = decode_scores_png(encode_scores_png(s.scores))
        assert decoded.shape == s.scores.shape
        assert np.array_equal(np.isneginf(decoded), np.isneginf(s.scores))  # filtered classes stay -inf
        assert agreement(s, decoded, seg.config.max_label_side) >= 0.999, method


def test_evaluation_reads_saved_scores_with_a_filtered_class_as_the_job_does():
    from diffseg.eval.metrics import foreground_from_scores

    rng = np.random.default_rng(0)
    scores = rng.random((4, 8, 8)).astype(np.float32)
    scores[0] = 0.4  # tau
    scores[2] = -np.inf  # a class the category filter removed
    job = scores_to_label_map(torch.from_numpy(scores), (24, 24), 1024)
    fg_score, fg_label = foreground_from_scores(decode_scores_png(encode_scores_png(scores)), (24, 24))
    refit = np.where(fg_score > 0.4, fg_label, 0)
    assert float((refit == job).mean()) >= 0.999
