"""SeeDiff (Park, Jo, Baik 2025): cross-attention gives seeds, multi-scale self-attention grows them.

Per class (docs/methods.md has the full account):

1. Seed map C at the seed level: for every cross-attention layer there (down and up), the mean over
   the class's tokens of the head-mean map, min-max per layer; a layer whose raw map is nearly flat is
   scaled by ``flat_weight``; the layers are summed; min-max. "Nearly flat" is the paper's test: the
   variance of the HEAD-SUMMED map below ``flat_variance`` (1e-4). Our maps are head means (H heads:
   the sum is H x the mean), so the test is variance(head mean) < flat_variance / H^2, with H the head
   count at the seed level: ``heads`` when given, else ``maps.heads[side]`` when the capture records
   it, else 8 (SD 1.x at every level; SD 2.x has 5/10/20/20 from 64 to 8, i.e. 20 at 16x16).
2. Seeds F = Otsu(C^2) (pixels above the threshold); E(p) = Sigma_{s in F} cos(S[p, :], S[s, :]) with S
   the first decoder self-attention layer at that level; min-max.
3. At each finer level up to the finest: I = bicubic up of E; background seeds B = complement of
   Otsu(I^2); G(p) = Sigma_{s in B} cos(S[p], S[s]); E = minmax((1 - minmax(G)) * minmax(I)).
4. Optional PAMR on the image, min-max; the background score is the threshold (0.3 without PAMR, 0.8
   with it); classes compete by score (argmax).

Levels by rank (DESIGN.md "Levels"): the seed level is the level of rank ``seed_rank`` (finest = 0;
rank 2 = 16x16 for SD 1.5 at 512) when it has a captured first decoder self-attention layer; otherwise
(fewer levels, or no decoder self-attention there) the coarsest level of lower rank that has one.
Refinement runs at every finer level with a first decoder self-attention layer. Scores come at the
finest captured level.

Category filter (our addition; the paper knows its class is present): the same attention-evidence
test as DiffSegmenter, on the raw seed-level cross-attention before any min-max, relative to each
chunk's start token (diffseg.methods.common.evidence_maps). ``filter_ratio = 0`` disables it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffseg.capture import CapturedMaps, Needs
from diffseg.methods.common import (
    CHUNK_LENGTH,
    assemble_scores,
    cosine_sums,
    evidence_maps,
    minmax,
    otsu_threshold,
    pamr,
    relative_evidence_keep,
    resize_maps,
    span_maps,
    top_fraction_mean,
)

SEED_RANK = 2  # the paper's 16x16 seed level on SD 1.5 at 512 (64, 32, 16, 8 are ranks 0..3)
DEFAULT_HEADS = 8  # SD 1.x's head count at every level, when neither params nor the capture say
NEEDS = Needs(
    cross=True,
    cross_layers=True,
    self_attn=frozenset({(rank, "first_up") for rank in range(SEED_RANK + 1)}),
)


@dataclass(frozen=True)
class SeeDiffParams:
    seed_rank: int = SEED_RANK  # seed level by rank (finest = 0); only ranks NEEDS captures are usable
    flat_variance: float = 1e-4  # paper: a layer is flat when its HEAD-SUMMED map's variance is below this
    heads: int | None = None  # heads at the seed level; None = maps.heads[side] if captured, else DEFAULT_HEADS
    flat_weight: float = 0.01  # factor for a nearly flat cross-attention layer (paper)
    otsu_bins: int = 256  # histogram bins of every Otsu threshold
    pamr: bool = False  # refine the final maps on the image with PAMR (paper: optional)
    pamr_iterations: int = 10  # PAMR iterations (paper)
    pamr_dilations: tuple[int, ...] = (1,)  # PAMR neighbourhood dilations, 3x3 each (paper: 1)
    pamr_temperature: float = 0.2  # affinity = softmax(-|dI| / (temperature * (local std + eps)))
    pamr_upsample: int = 1  # PAMR at this multiple of the score side; >1 returns scores that large
    threshold: float | None = None  # background score; None = 0.3 without PAMR, 0.8 with it (paper)
    filter_ratio: float = 0.2  # keep a class if its evidence >= this x the best class's; 0 = no filter
    evidence_fraction: float = 0.02  # evidence = mean of this top fraction of the raw seed-level map
    chunk_length: int = CHUNK_LENGTH  # tokens per text chunk (evidence is taken relative to each chunk)
    row_budget: int = 1 << 25  # values in one chunk of self-attention logits (bounds memory)

    def __post_init__(self):
        if self.seed_rank < 0:
            raise ValueError(f"seed_rank={self.seed_rank} must be >= 0")
        if self.heads is not None and self.heads < 1:
            raise ValueError(f"heads={self.heads} must be >= 1 (the attention heads at the seed level)")
        if self.otsu_bins < 2:
            raise ValueError(f"otsu_bins={self.otsu_bins} must be >= 2")
        if self.pamr_upsample < 1 or self.pamr_iterations < 0 or not self.pamr_dilations:
            raise ValueError(
                f"pamr_upsample={self.pamr_upsample} must be >= 1, pamr_iterations={self.pamr_iterations} "
                f">= 0 and pamr_dilations={self.pamr_dilations} non-empty"
            )

    @property
    def background(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return 0.8 if self.pamr else 0.3


def seediff_levels(maps: CapturedMaps, seed_rank: int = SEED_RANK) -> list[int]:
    """Sides SeeDiff works at, seed level first then finer ones up to the finest (module docstring)."""
    sides = maps.levels
    usable = [
        r
        for rank, r in enumerate(sides)
        if rank <= seed_rank and r in maps.first_up and r in maps.self_attn
        and maps.first_up[r] in maps.self_attn[r].layers
    ]
    if not usable:
        raise ValueError(
            f"seediff needs the first decoder self-attention layer at a level of rank <= {seed_rank}; "
            f"captured levels {sides}, decoder layers {sorted(maps.first_up)}"
        )
    return sorted(usable)


def seed_heads(maps: CapturedMaps, side: int, heads: int | None = None) -> int:
    """The head count the flat-layer test scales by at `side` (module docstring, step 1)."""
    if heads is not None:
        return heads
    return int(maps.heads.get(side, DEFAULT_HEADS))  # the capture records each level's head count


def seed_maps(layers: list[torch.Tensor], spans: list[list[int]], flat_variance: float, flat_weight: float):
    """Per-layer cross maps [(B, r*r, T)] -> C (B, K, r, r): per layer span mean, min-max, nearly flat
    layers (variance of the raw head-mean map < flat_variance, already divided by heads^2) scaled by
    flat_weight; summed over layers; min-max."""
    total = None
    for layer in layers:
        raw = span_maps(layer, spans)
        weight = torch.where(raw.flatten(2).var(-1) < flat_variance, flat_weight, 1.0)
        term = minmax(raw) * weight[..., None, None]
        total = term if total is None else total + term
    return minmax(total)


def _grow(sa, seeds: torch.Tensor, budget: int) -> torch.Tensor:
    """(B, K, r, r) 0/1 seeds -> (B, K, r, r) summed cosine similarity of S's rows to the seeds' rows."""
    b, k, r, _ = seeds.shape
    sums = cosine_sums(sa, seeds.flatten(2).transpose(1, 2), budget)  # (B, r*r, K)
    return sums.transpose(1, 2).reshape(b, k, r, r)


def _above_otsu(x: torch.Tensor, bins: int) -> torch.Tensor:
    """(B, K, r, r) -> float 0/1 mask of x > Otsu(x) per map."""
    t = otsu_threshold(x.flatten(2), bins)
    return (x > t[..., None, None]).float()


def seediff(maps: CapturedMaps, spans: list[list[int]], params: SeeDiffParams | None = None) -> torch.Tensor:
    """Captured maps + K class spans -> scores (B, 1 + K, R, R) float32 at the finest captured level R
    (R x pamr_upsample with PAMR upsampling); channel 0 = the threshold."""
    p = params or SeeDiffParams()
    ladder = seediff_levels(maps, p.seed_rank)
    seed_side = ladder[0]
    if seed_side not in maps.cross_layers:
        raise ValueError(f"seediff reads per-layer cross-attention at {seed_side} (Needs.cross_layers)")
    flat = p.flat_variance / seed_heads(maps, seed_side, p.heads) ** 2  # head-summed -> head-mean variance
    c = seed_maps(maps.cross_layers[seed_side], spans, flat, p.flat_weight)
    sa = maps.self_attn[seed_side].select([maps.first_up[seed_side]])
    e = minmax(_grow(sa, _above_otsu(c * c, p.otsu_bins), p.row_budget))
    for side in ladder[1:]:
        i = minmax(resize_maps(e, side, mode="bicubic"))
        background = 1.0 - _above_otsu(i * i, p.otsu_bins)
        sa = maps.self_attn[side].select([maps.first_up[side]])
        g = minmax(_grow(sa, background, p.row_budget))
        e = minmax((1.0 - g) * i)
    finest = maps.levels[0]
    e = minmax(resize_maps(e, finest, mode="bicubic"))
    if p.pamr:
        if maps.image is None:
            raise ValueError("seediff with pamr=True needs maps.image (the model-resolution input)")
        side = finest * p.pamr_upsample
        image = F.interpolate(maps.image.float().to(e.device), size=(side, side), mode="bilinear",
                              antialias=True, align_corners=False)
        e = minmax(resize_maps(e, side, mode="bicubic"))
        e = minmax(pamr(image, e, p.pamr_iterations, p.pamr_dilations, p.pamr_temperature))
    keep = None
    if p.filter_ratio > 0:
        raw = evidence_maps(maps.cross[seed_side], spans, p.chunk_length)
        keep = relative_evidence_keep(top_fraction_mean(raw, p.evidence_fraction), p.filter_ratio)
    return assemble_scores(p.background, e, keep)
