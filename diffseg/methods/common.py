"""Shared math of the methods: per-class maps from token spans, normalisation, level weighting.

Pure functions on tensors; sizes come from the tensors' shapes, never from literals.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def minmax(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalises (B, K, ...) per (b, k) over the trailing dimensions into [0, 1]."""
    flat = x.flatten(2)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(eps)).view_as(x)


def span_maps(cross: torch.Tensor, spans: list[list[int]]) -> torch.Tensor:
    """(B, r*r, T) cross-attention -> (B, K, r, r): for each class the mean over its span's tokens."""
    b, n, _ = cross.shape
    side = math.isqrt(n)
    cols = [cross[:, :, span].mean(-1) for span in spans]
    return torch.stack(cols, 1).view(b, len(spans), side, side)


def resize_maps(x: torch.Tensor, side: int, mode: str = "bilinear") -> torch.Tensor:
    """(B, C, r, r) -> (B, C, side, side); identity when already that size."""
    if x.shape[-1] == side:
        return x
    return F.interpolate(x, size=(side, side), mode=mode, align_corners=False)


def rank_weights(sides: list[int], weights_coarsest_first: tuple[float, ...]) -> dict[int, float]:
    """Per-level weights by rank (DESIGN.md "Levels").

    `weights_coarsest_first` lists weights from the coarsest level up (DiffSegmenter: 0.3, 0.5, 0.1,
    0.1 for 8, 16, 32, 64 on SD 1.5). The coarsest present level takes the first weight, the next the
    second, and so on; with fewer levels the finest weights are dropped, with more levels the extra
    finest ones take the last weight; the result is renormalised to sum to 1.
    """
    ordered = sorted(sides)  # coarsest first
    raw = [weights_coarsest_first[min(i, len(weights_coarsest_first) - 1)] for i in range(len(ordered))]
    total = sum(raw)
    if total <= 0:
        raise ValueError(f"level weights {weights_coarsest_first} must have a positive sum")
    return {s: w / total for s, w in zip(ordered, raw)}


def top_fraction_mean(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, K, ...) -> (B, K): mean of the largest `fraction` of each map's values (a robust peak)."""
    flat = x.flatten(2)
    k = max(1, int(round(flat.shape[-1] * fraction)))
    return flat.topk(k, dim=-1).values.mean(-1)


def relative_evidence_keep(evidence: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, K) evidence -> (B, K) bool: classes whose evidence is at least `ratio` x the image's best."""
    best = evidence.max(-1, keepdim=True).values.clamp_min(1e-12)
    return evidence >= ratio * best


def assemble_scores(background: torch.Tensor | float, classes: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """(B, K, h, w) class scores + background (scalar or (B, 1, h, w)) -> (B, 1 + K, h, w).

    Classes with keep == False get -inf, so the argmax never picks them.
    """
    b, _, h, w = classes.shape
    if not torch.is_tensor(background):
        background = torch.full((b, 1, h, w), float(background), dtype=classes.dtype, device=classes.device)
    if keep is not None:
        classes = classes.masked_fill(~keep[:, :, None, None], float("-inf"))
    return torch.cat([background.to(classes.dtype), classes], 1)
