"""MaskDiffusion (Kawano & Aoki 2024): class prototypes in frozen U-Net decoder feature space.

- Features: the decoder block inputs (``maps.features``, after the skip concatenation) at every level
  except the ``skip_finest_features`` finest (default 1: 8/16/32 on SD 1.5 at 512; 0 adds 64),
  bilinear to the finest level used, concatenated, L2-normalised per pixel. The reference code feeds
  them through ODISE's trained projection layers; here they are the raw frozen-SD features.
- Class attention A_c: per-layer cross-attention (head mean, mean over the class's tokens) of the
  ``cross_levels`` coarsest levels (default 2: 8 and 16 on SD 1.5, the paper's "<= 16x16"), bilinear
  to the features' size, mean over those layers, divided by its maximum.
- Prototype p_c = Sigma_x f(x) A_c(x) / Sigma_x A_c(x), L2-normalised (the reference does not
  normalise it); score_c(x) = f(x) . p_c, a cosine in [-1, 1].
- Background: the constant ``background`` cosine (provisional, like DiffSegmenter's tau, until fitted).
  Category filter (our addition): DiffSegmenter's evidence test on the raw class attention.
Scores come at the features' common size (the finest feature level used).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffseg.capture import CapturedMaps, Needs
from diffseg.methods.common import (
    assemble_scores,
    relative_evidence_keep,
    resize_maps,
    span_maps,
    top_fraction_mean,
)

NEEDS = Needs(cross=True, cross_layers=True, features=True)


@dataclass(frozen=True)
class MaskDiffusionParams:
    skip_finest_features: int = 1  # feature levels left out, finest first (paper: 8/16/32; 0 adds 64)
    cross_levels: int = 2  # cross-attention from this many coarsest levels (paper: <= 16x16 on SD 1.5)
    background: float = 0.5  # cosine below which a pixel is background; provisional until fitted
    filter_ratio: float = 0.2  # keep a class if its evidence >= this x the best class's; 0 = no filter
    evidence_fraction: float = 0.02  # evidence = mean of this top fraction of the raw class attention

    def __post_init__(self):
        if self.skip_finest_features < 0 or self.cross_levels < 1:
            raise ValueError(
                f"skip_finest_features={self.skip_finest_features} must be >= 0 and "
                f"cross_levels={self.cross_levels} >= 1"
            )


def decoder_features(maps: CapturedMaps, skip_finest: int = 1) -> torch.Tensor:
    """(B, C, s, s) float32: the decoder features of all levels but the `skip_finest` finest, bilinear
    to the finest level used (s), concatenated along channels, L2-normalised per pixel."""
    sides = sorted(maps.features, reverse=True)
    used = sides[skip_finest:]
    if not used:
        raise ValueError(
            f"no decoder features left: captured levels {sides}, skip_finest_features={skip_finest} "
            "(the method needs Needs.features)"
        )
    side = used[0]
    cat = torch.cat([resize_maps(maps.features[r].float(), side) for r in used], 1)
    return F.normalize(cat, dim=1)


def class_attention(maps: CapturedMaps, spans: list[list[int]], levels: int, side: int) -> torch.Tensor:
    """(B, K, side, side) float32: mean over the cross-attention layers of the `levels` coarsest levels
    of each class's span-mean map, bilinear to `side` (raw: not normalised)."""
    coarse = maps.levels[-levels:]
    missing = [r for r in coarse if r not in maps.cross_layers]
    if missing:
        raise ValueError(f"per-layer cross-attention missing at {missing} (Needs.cross_layers)")
    layers = [resize_maps(span_maps(x, spans), side) for r in coarse for x in maps.cross_layers[r]]
    return torch.stack(layers, 0).mean(0)


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


def maskdiffusion(maps: CapturedMaps, spans: list[list[int]], params: MaskDiffusionParams | None = None):
    """Captured maps + K class spans -> scores (B, 1 + K, s, s) float32 at the features' common size s;
    channel 0 = the background cosine."""
    p = params or MaskDiffusionParams()
    f = decoder_features(maps, p.skip_finest_features)
    raw = class_attention(maps, spans, p.cross_levels, f.shape[-1])
    scores = prototype_scores(f, raw)
    keep = None
    if p.filter_ratio > 0:
        keep = relative_evidence_keep(top_fraction_mean(raw, p.evidence_fraction), p.filter_ratio)
    return assemble_scores(p.background, scores, keep)
