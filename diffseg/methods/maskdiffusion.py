"""MaskDiffusion (Kawano & Aoki 2024): class prototypes in frozen U-Net decoder feature space.

- Features: the decoder block inputs (``maps.features``, after the skip concatenation) at every level
  except the ``skip_finest_features`` finest (default 1: 8/16/32 on SD 1.5 at 512; 0 adds 64),
  bilinear to the finest level used. ``feature_norm="per_level"`` (default): each level is
  L2-normalised per pixel before the levels are concatenated, so every level weighs the same in a
  cosine whatever its channel count (SD 1.5's 2560-channel 8x8 level would otherwise outweigh the
  960-channel 32x32 one by width alone); ``"concat"``: the raw levels are concatenated (a level weighs
  by its norm, which grows with its width). The concatenation is then L2-normalised per pixel. The
  reference code feeds the features through ODISE's trained projection layers; here they are the raw
  frozen-SD features.
- Class attention A_c: per-layer cross-attention (head mean, mean over the class's tokens) of the
  ``cross_levels`` coarsest levels (default 2: 8 and 16 on SD 1.5, the paper's "<= 16x16"), bilinear
  to the features' size, mean over those layers, divided by its maximum.
- Prototype p_c = Sigma_x f(x) A_c(x) / Sigma_x A_c(x), L2-normalised (the reference does not
  normalise it); cos_c(x) = f(x) . p_c.
- Scores: per image, the cosines rescaled by one affine map so that the best class's cosine spans
  [0, 1] over the image: score_c(x) = (cos_c(x) - lo) / (hi - lo), lo and hi the min and max over x of
  max_c cos_c(x) (kept classes). The argmax over classes is the paper's; the scale makes a background
  threshold relative to the image's own similarities, and is the scale jobs.evaluate fits on.
- Background: none by default (channel 0 = -inf), as the paper takes the argmax over classes.
  ``background = t`` makes channel 0 the constant t: a pixel is background when its best cosine is
  below lo + t (hi - lo), i.e. in the lowest fraction t of the image's range of best cosines.
- Category filter (our addition): DiffSegmenter's evidence test on the raw class attention, each
  map relative to its chunk's start token (diffseg.methods.common.evidence_maps).
Scores come at the features' common size (the finest feature level used).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffseg.capture import CapturedMaps, Needs
from diffseg.methods.common import (
    CHUNK_LENGTH,
    assemble_scores,
    relative_evidence_keep,
    resize_maps,
    span_and_evidence_maps,
    span_maps,
    top_fraction_mean,
)

NEEDS = Needs(cross=True, cross_layers=True, features=True)
FEATURE_NORMS = ("per_level", "concat")


@dataclass(frozen=True)
class MaskDiffusionParams:
    skip_finest_features: int = 1  # feature levels left out, finest first (paper: 8/16/32; 0 adds 64)
    cross_levels: int = 2  # cross-attention from this many coarsest levels (paper: <= 16x16 on SD 1.5)
    background: float | None = None  # None: no background (paper); t: relative threshold (docstring)
    chunk_length: int = CHUNK_LENGTH  # tokens per text chunk (evidence is taken relative to each chunk)
    feature_norm: str = "per_level"  # "per_level": each level unit-length before concatenating; "concat": raw
    filter_ratio: float = 0.2  # keep a class if its evidence >= this x the best class's; 0 = no filter
    evidence_fraction: float = 0.02  # evidence = mean of this top fraction of the raw class attention

    def __post_init__(self):
        if self.skip_finest_features < 0 or self.cross_levels < 1:
            raise ValueError(
                f"skip_finest_features={self.skip_finest_features} must be >= 0 and "
                f"cross_levels={self.cross_levels} >= 1"
            )
        if self.feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm={self.feature_norm!r} is not one of {', '.join(FEATURE_NORMS)}")


def decoder_features(maps: CapturedMaps, skip_finest: int = 1, feature_norm: str = "per_level") -> torch.Tensor:
    """(B, C, s, s) float32: the decoder features of all levels but the `skip_finest` finest, bilinear
    to the finest level used (s), each level L2-normalised per pixel first when `feature_norm` is
    "per_level" (so levels weigh equally, whatever their widths), concatenated along channels,
    L2-normalised per pixel."""
    sides = sorted(maps.features, reverse=True)
    used = sides[skip_finest:]
    if not used:
        raise ValueError(
            f"no decoder features left: captured levels {sides}, skip_finest_features={skip_finest} "
            "(the method needs Needs.features)"
        )
    side = used[0]
    levels = [resize_maps(maps.features[r].float(), side) for r in used]
    if feature_norm == "per_level":
        levels = [F.normalize(x, dim=1) for x in levels]
    return F.normalize(torch.cat(levels, 1), dim=1)


def class_attention(maps: CapturedMaps, spans: list[list[int]], levels: int, side: int,
                    chunk_length: int | None = None) -> torch.Tensor:
    """(B, K, side, side) float32: mean over the cross-attention layers of the `levels` coarsest levels
    of each class's span-mean map, bilinear to `side` (raw: not normalised). With `chunk_length`, each
    map is the filter's evidence instead: relative to its chunk's start token (evidence_maps)."""
    raw, evidence = class_attentions(maps, spans, levels, side, chunk_length)
    return raw if evidence is None else evidence


def class_attentions(maps: CapturedMaps, spans: list[list[int]], levels: int, side: int,
                     chunk_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(raw, evidence) :func:`class_attention` maps from one span-mean pass per layer: raw without
    `chunk_length`, evidence with it (None when `chunk_length` is None)."""
    coarse = maps.levels[-levels:]
    missing = [r for r in coarse if r not in maps.cross_layers]
    if missing:
        raise ValueError(f"per-layer cross-attention missing at {missing} (Needs.cross_layers)")
    raws, evidences = [], []
    for r in coarse:
        for x in maps.cross_layers[r]:
            if chunk_length is None:
                raws.append(resize_maps(span_maps(x, spans), side))
            else:
                means, evidence = span_and_evidence_maps(x, spans, chunk_length)
                raws.append(resize_maps(means, side))
                evidences.append(resize_maps(evidence, side))
    raw = torch.stack(raws, 0).mean(0)
    return raw, torch.stack(evidences, 0).mean(0) if chunk_length is not None else None


def prototype_scores(features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """features (B, C, s, s) unit vectors, attention (B, K, s, s) >= 0 -> cosine scores (B, K, s, s).

    Each class map is divided by its maximum, the prototype is the attention-weighted mean feature,
    normalised; the score is each pixel's cosine to it."""
    a = attention.flatten(2).clamp_min(0)
    a = a / a.amax(-1, keepdim=True).clamp_min(1e-12)
    f = features.flatten(2)  # (B, C, N)
    protos = (a @ f.transpose(1, 2)) / a.sum(-1, keepdim=True).clamp_min(1e-12)  # (B, K, C)
    protos = F.normalize(protos, dim=-1)
    return (protos @ f).view(attention.shape)


def relative_scores(cosines: torch.Tensor, keep: torch.Tensor | None, eps: float = 1e-8) -> torch.Tensor:
    """(B, K, s, s) cosines -> the same affinely rescaled per image so that the best kept class's
    cosine spans [0, 1] over the image (module docstring); classes with keep False become -inf."""
    if keep is not None:
        cosines = cosines.masked_fill(~keep[:, :, None, None], float("-inf"))
    best = cosines.amax(1).flatten(1)  # (B, s*s)
    lo, hi = best.amin(-1)[:, None, None, None], best.amax(-1)[:, None, None, None]
    return (cosines - lo) / (hi - lo).clamp_min(eps)


def maskdiffusion(maps: CapturedMaps, spans: list[list[int]], params: MaskDiffusionParams | None = None):
    """Captured maps + K class spans -> scores (B, 1 + K, s, s) float32 at the features' common size s:
    per-image rescaled cosines (module docstring); channel 0 = -inf, or the relative background t."""
    p = params or MaskDiffusionParams()
    f = decoder_features(maps, p.skip_finest_features, p.feature_norm)
    raw, evidence = class_attentions(maps, spans, p.cross_levels, f.shape[-1],
                                     p.chunk_length if p.filter_ratio > 0 else None)
    keep = None
    if p.filter_ratio > 0:
        keep = relative_evidence_keep(top_fraction_mean(evidence, p.evidence_fraction), p.filter_ratio)
    scores = relative_scores(prototype_scores(f, raw), keep)
    background = float("-inf") if p.background is None else p.background
    return assemble_scores(background, scores, None)
