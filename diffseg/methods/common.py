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


CHUNK_LENGTH = 77  # tokens per text chunk of the joint context (CLIP's model_max_length)


def chunk_starts(tokens: int, spans: list[list[int]], chunk_length: int) -> list[int] | None:
    """The start-token column of each span's chunk, or None when the token axis holds no start tokens.

    The joint context is ``tokens / chunk_length`` chunks, each opening with a start token at a multiple
    of `chunk_length` that no span covers (diffseg.vocabulary.build_chunks); a class never straddles
    two chunks, so its chunk is ``span[0] // chunk_length``. A token axis that is no multiple of
    `chunk_length`, or whose spans cover a chunk start (the per-class capture merged to class columns
    only), has no start tokens: None.
    """
    if chunk_length < 1 or tokens % chunk_length:
        return None
    if any(p % chunk_length == 0 for span in spans for p in span):
        return None
    return [span[0] // chunk_length * chunk_length for span in spans]


def evidence_maps(cross: torch.Tensor, spans: list[list[int]], chunk_length: int = CHUNK_LENGTH,
                  eps: float = 1e-12) -> torch.Tensor:
    """(B, r*r, T) cross-attention -> (B, K, r, r): each class's span mean divided, per pixel, by the
    attention its own chunk's start token receives (the category filter's evidence).

    The start token is the same embedding in every chunk (first position of a causal encoder), so the
    ratio a_k / a_start = exp(l_k - l_start) does not depend on how many end/pad tokens or other chunks
    share the softmax: a class in a later, shorter chunk is not diluted by its position. Without start
    tokens on the axis (:func:`chunk_starts` is None) the span means are returned unchanged.
    """
    return span_and_evidence_maps(cross, spans, chunk_length, eps)[1]


def span_and_evidence_maps(cross: torch.Tensor, spans: list[list[int]], chunk_length: int = CHUNK_LENGTH,
                           eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """(span_maps, evidence_maps) of `cross` from one pass over the spans (the evidence divides the span
    means; without start tokens on the axis both are the same tensor)."""
    maps = span_maps(cross, spans)
    starts = chunk_starts(cross.shape[-1], spans, chunk_length)
    if starts is None:
        return maps, maps
    return maps, maps / span_maps(cross, [[s] for s in starts]).clamp_min(eps)


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


# --- Otsu, batched -------------------------------------------------------------------------------


def _otsu_bin(counts: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index (..., 1) of the last bin of the lower class that maximises the between-class variance."""
    counts = counts.double()
    centers = centers.double().expand_as(counts)
    weight1 = counts.cumsum(-1)
    weight2 = counts.flip(-1).cumsum(-1).flip(-1)
    mass = counts * centers
    mean1 = mass.cumsum(-1) / weight1.clamp_min(1e-300)
    mean2 = mass.flip(-1).cumsum(-1).flip(-1) / weight2.clamp_min(1e-300)
    variance12 = weight1[..., :-1] * weight2[..., 1:] * (mean1[..., :-1] - mean2[..., 1:]) ** 2
    return variance12.argmax(-1, keepdim=True)


def otsu_threshold_from_histogram(counts: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Otsu's threshold of histograms: counts (..., bins), centers (..., bins) or (bins,) -> (...).

    The centre of the last bin of the lower class, chosen to maximise the between-class variance
    (exactly skimage.filters.threshold_otsu(hist=(counts, centers)); ties take the first bin). Empty
    leading or trailing classes are guarded, never NaN.
    """
    idx = _otsu_bin(counts, centers)
    return centers.double().expand(counts.shape).gather(-1, idx).squeeze(-1)


def otsu_threshold(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold of each row of values: x (..., N) float -> (...) in x's dtype; foreground is
    ``x > t``.

    Histogram of `bins` equal bins over each row's [min, max] (as numpy.histogram, the last bin closed)
    and the split of :func:`otsu_threshold_from_histogram`. The threshold returned is the largest value
    of the lower class, so ``x > t`` is exactly the split Otsu chose (skimage returns the centre of the
    same bin, which puts the values of that bin above its centre in the foreground): it agrees with
    skimage.filters.threshold_otsu(row, nbins=bins) to within one bin. A constant row returns its value
    (so ``x > t`` is empty). Runs batched on x's device.
    """
    if bins < 2:
        raise ValueError(f"otsu needs at least 2 bins, got bins={bins}")
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1]).double()
    lo = rows.min(-1, keepdim=True).values
    hi = rows.max(-1, keepdim=True).values
    steps = torch.arange(bins + 1, device=x.device, dtype=torch.float64) / bins
    edges = (lo + (hi - lo) * steps).contiguous()  # (R, bins + 1), as numpy.linspace
    idx = (torch.searchsorted(edges, rows.contiguous(), right=True) - 1).clamp(0, bins - 1)
    counts = torch.zeros(rows.shape[0], bins, dtype=torch.float64, device=x.device)
    counts.scatter_add_(1, idx, torch.ones_like(rows))
    split = _otsu_bin(counts, (edges[:, :-1] + edges[:, 1:]) / 2)  # (R, 1)
    t = rows.masked_fill(idx > split, float("-inf")).max(-1).values
    t = torch.where(hi[:, 0] > lo[:, 0], t, lo[:, 0])
    return t.to(x.dtype).view(lead)


# --- PAMR, batched ---------------------------------------------------------------------------------


def _neighbours(x: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 8 * len(dilations), H, W): the 8 neighbours at each dilation
    (replicate padding at the border), centre excluded."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    out.append(padded[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w])
    return torch.stack(out, 2)


def pamr_affinity(image: torch.Tensor, dilations: tuple[int, ...] = (1,), temperature: float = 0.2,
                  eps: float = 1e-8) -> torch.Tensor:
    """(B, C, H, W) image -> (B, P, H, W) affinities to the P = 8 x len(dilations) neighbours.

    a = softmax over neighbours of mean over channels of -|I(p) - I(n)| / (temperature * (std + eps)),
    std = the per-channel standard deviation of the 3x3 windows at all dilations around p (centre
    included). A constant image gives uniform affinities (no NaN: the eps).
    """
    image = image.float()
    near = _neighbours(image, dilations)  # (B, C, P, H, W)
    window = torch.cat([image[:, :, None], near], 2)
    std = window.std(2, keepdim=True)
    logits = -(near - image[:, :, None]).abs() / (temperature * (std + eps))
    return torch.softmax(logits.mean(1), 1)


def pamr(image: torch.Tensor, masks: torch.Tensor, iterations: int = 10, dilations: tuple[int, ...] = (1,),
         temperature: float = 0.2, eps: float = 1e-8) -> torch.Tensor:
    """Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), batched.

    image: (B, C, H, W) float (any range; the affinity is scale-free); masks: (B, K, H, W) float at the
    same size. Each iteration replaces every mask value by the affinity-weighted mean of its neighbours'
    values (:func:`pamr_affinity`), so masks follow the image's edges. Returns (B, K, H, W) float32.
    """
    if image.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"pamr: image {tuple(image.shape)} and masks {tuple(masks.shape)} differ in size")
    if iterations < 0 or not dilations or min(dilations) < 1:
        raise ValueError(f"pamr: iterations={iterations} must be >= 0 and dilations={dilations} positive")
    aff = pamr_affinity(image, tuple(dilations), temperature, eps)[:, None]  # (B, 1, P, H, W)
    m = masks.float()
    for _ in range(iterations):
        m = (_neighbours(m, tuple(dilations)) * aff).sum(2)
    return m


# --- Cosine sums through self-attention, without materialising it ----------------------------------


def cosine_sums(sa, weights: torch.Tensor, max_elements: int = 1 << 25) -> torch.Tensor:
    """Sigma_s w_k[s] cos(S[p, :], S[s, :]) for every pixel p and column k of `weights`.

    sa: capture.SelfAttention at one level (S = its head- and layer-mean map, N x N per image);
    weights: (B, N, K) (e.g. 0/1 seed masks). Returns (B, N, K) float32.
    Uses Sigma_s w[s] cos(S[p], S[s]) = S[p] . v / |S[p]| with v = Sigma_s w[s] S[s] / |S[s]|: one pass
    over row chunks of S gives the row norms and v = S^T (w / |S|), then S v is one propagation
    (scaled_dot_product_attention), so S is never held whole.
    """
    w = weights.float()
    b, n, k = w.shape
    v = torch.zeros(b, n, k, dtype=torch.float32, device=w.device)
    norms = torch.empty(b, n, dtype=torch.float32, device=w.device)
    for start, stop, rows in sa.row_chunks(max_elements):
        rows = rows.to(w.device)
        norm = rows.norm(dim=-1)
        norms[:, start:stop] = norm
        v += rows.transpose(1, 2) @ (w[:, start:stop] / norm[..., None])
    return sa.propagate(v).to(w.device) / norms[..., None]
