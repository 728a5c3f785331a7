"""DiffSegmenter (Wang et al., TIP 2025): cross-attention gives semantics, self-attention gives shape.

Per class: mean over the class's tokens of the cross-attention at every captured level (mean over
layers and heads, done by the capture), bilinear to the finest level, min-max per class, weighted by
level rank (0.3/0.5/0.1/0.1 coarsest→finest on SD 1.5) -> c; one propagation through the mean
self-attention of the finest level, m = S·c; min-max; background = the constant tau.

Category filter (the paper's BLIP+CLIP filter was never released and needs weights SD lacks): an
attention-evidence test measured BEFORE min-max, so min-max cannot turn an absent class's faint,
uniform attention into a full-strength map. A class's evidence is the mean of the top
``evidence_fraction`` of its raw, level-weighted cross-attention, each level's map divided per pixel by
the attention of its chunk's start token (diffseg.methods.common.evidence_maps: so a class's place in
the vocabulary, e.g. in a later, shorter 77-token chunk, does not change its evidence); it is kept when
its evidence is at least ``filter_ratio`` x the strongest class's evidence in that image.
``filter_ratio = 0`` disables it.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffseg.capture import CapturedMaps, Needs
from diffseg.methods.common import (
    CHUNK_LENGTH,
    assemble_scores,
    minmax,
    rank_weights,
    relative_evidence_keep,
    resize_maps,
    span_and_evidence_maps,
    top_fraction_mean,
)

NEEDS = Needs(cross=True, self_attn=frozenset({(0, "all")}))


@dataclass(frozen=True)
class DiffSegmenterParams:
    level_weights: tuple[float, ...] = (0.3, 0.5, 0.1, 0.1)  # coarsest -> finest (paper, SD 1.5)
    tau: float = 0.4  # background score; provisional until fitted on a held-out split (jobs.evaluate)
    filter_ratio: float = 0.2  # keep a class if its evidence >= this x the best class's; 0 = no filter
    evidence_fraction: float = 0.02  # evidence = mean of this top fraction of the raw map
    propagate: bool = True  # m = S·c through the finest level's mean self-attention
    chunk_length: int = CHUNK_LENGTH  # tokens per text chunk (evidence is taken relative to each chunk)


def weighted_cross(maps: CapturedMaps, spans: list[list[int]], weights: tuple[float, ...],
                   chunk_length: int = CHUNK_LENGTH):
    """Returns (evidence, normalised) level-weighted class maps, each (B, K, R, R) at the finest level
    R: evidence from the raw maps relative to their chunk's start token (evidence_maps), normalised =
    the min-maxed span means."""
    sides = maps.levels
    finest = sides[0]
    w = rank_weights(sides, weights)
    raw = normed = None
    for side in sides:
        cross = maps.cross[side]
        means, evidence = span_and_evidence_maps(cross, spans, chunk_length)
        evidence = resize_maps(evidence, finest) * w[side]
        raw = evidence if raw is None else raw + evidence
        normed_level = minmax(resize_maps(means, finest)) * w[side]
        normed = normed_level if normed is None else normed + normed_level
    return raw, normed


def diffsegmenter(maps: CapturedMaps, spans: list[list[int]], params: DiffSegmenterParams | None = None):
    """Captured maps + K class spans -> scores (B, 1 + K, R, R) float32; channel 0 = tau."""
    p = params or DiffSegmenterParams()
    raw, c = weighted_cross(maps, spans, p.level_weights, p.chunk_length)
    b, k, side, _ = c.shape
    if p.propagate:
        values = c.flatten(2).transpose(1, 2)  # (B, R*R, K)
        c = maps.self_attn[side].propagate(values).transpose(1, 2).reshape(b, k, side, side)
    m = minmax(c)
    keep = relative_evidence_keep(top_fraction_mean(raw, p.evidence_fraction), p.filter_ratio) if p.filter_ratio > 0 else None
    return assemble_scores(p.tau, m, keep)
