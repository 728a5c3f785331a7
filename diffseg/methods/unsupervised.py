"""MaskDiffusion's unsupervised variant: cluster frozen decoder features into segments, no vocabulary.

- Features: the same as MaskDiffusion (:func:`diffseg.methods.maskdiffusion.decoder_features`).
- Spectral clustering per image (Ng, Jordan & Weiss): Gaussian affinity W_ij = exp(-d_ij^2 / (bandwidth
  x mean_ij d_ij^2)), d the distance between unit feature vectors (the scale is the image's own mean
  pairwise distance, so it adapts to how spread the features are); eigenvalues of the normalised
  Laplacian L = I - D^-1/2 W D^-1/2. (A per-pixel, nearest-neighbour scale was tried and rejected:
  it turns the thin bands of blended features along region boundaries into clusters of their own.)
- K: ``k`` when given, else chosen from the data by the largest eigengap lambda_{K+1} - lambda_K for K
  in [k_min, k_max]. Never from ground truth (the reference code's leak).
- k-means (k-means++ seeding from a generator seeded by ``seed``, so results are deterministic) on the
  row-normalised first K eigenvectors. Segments are numbered 1..K by decreasing size.
- Scores: (B, 1 + K_max, s, s) one-hot: 1 on the segment, 0 elsewhere; channels of unused segments and
  channel 0 (there is no background) are -inf. K_max = ``k`` when given, else ``k_max``.

Naming (:func:`name_segments`, called by the Segmenter with the vocabulary): a segment takes the name of
the class whose max-normalised cross-attention (MaskDiffusion's A_c) has the highest mean over the
segment, among the classes that pass the evidence filter, when that mean is at least
``name_threshold``; otherwise it is "segment k".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffseg.capture import CapturedMaps, Needs
from diffseg.methods.common import CHUNK_LENGTH, relative_evidence_keep, top_fraction_mean
from diffseg.methods.maskdiffusion import class_attentions, decoder_features

NEEDS = Needs(cross=True, cross_layers=True, features=True)  # cross-attention only names segments


@dataclass(frozen=True)
class UnsupervisedParams:
    k: int | None = None  # number of segments; None = chosen per image by the eigengap
    k_min: int = 2  # smallest K the eigengap may choose
    k_max: int = 8  # largest K the eigengap may choose (and the number of score channels - 1)
    skip_finest_features: int = 1  # as MaskDiffusion: feature levels left out, finest first
    bandwidth: float = 0.25  # affinity exp(-d^2 / (bandwidth x mean pairwise d^2)); smaller = more segments
    iterations: int = 100  # k-means iterations at most (stops when assignments settle)
    seed: int = 0  # k-means++ generator seed
    cross_levels: int = 2  # naming: cross-attention from this many coarsest levels (as MaskDiffusion)
    name_threshold: float = 0.5  # naming: least mean normalised attention over the segment to name it
    filter_ratio: float = 0.2  # naming: classes with evidence < this x the best class's never name
    evidence_fraction: float = 0.02  # naming: evidence = mean of this top fraction of the raw attention
    chunk_length: int = CHUNK_LENGTH  # naming: tokens per text chunk (evidence relative to each chunk)

    def __post_init__(self):
        if self.k is not None and self.k < 1:
            raise ValueError(f"k={self.k} must be >= 1 (or None to choose it from the data)")
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}")
        if self.bandwidth <= 0 or self.iterations < 1:
            raise ValueError(f"bandwidth={self.bandwidth} must be > 0 and iterations={self.iterations} >= 1")

    @property
    def channels(self) -> int:
        """K_max: segment channels in the scores."""
        return self.k if self.k is not None else self.k_max


def spectral_embedding(features: torch.Tensor, bandwidth: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """features (N, C) unit vectors -> (eigenvalues (N,) ascending of the normalised Laplacian, the
    matching eigenvectors (N, N) as columns), in float64. Affinity: module docstring."""
    f = features.double()
    d2 = (2.0 - 2.0 * (f @ f.T)).clamp_min(0)
    w = torch.exp(-d2 / (bandwidth * d2.mean()).clamp_min(1e-12))
    w.fill_diagonal_(0)
    inv = w.sum(-1).clamp_min(1e-300).rsqrt()
    m = inv[:, None] * w * inv[None, :]
    mu, vec = torch.linalg.eigh((m + m.T) / 2)  # ascending mu = descending lambda = 1 - mu
    return (1.0 - mu).flip(0), vec.flip(1)


def choose_k(eigenvalues: torch.Tensor, k_min: int, k_max: int) -> int:
    """K in [k_min, k_max] with the largest gap eigenvalues[K] - eigenvalues[K - 1] (ascending values;
    1-based lambda_{K+1} - lambda_K). Ties take the smallest K."""
    n = eigenvalues.shape[0]
    k_max = min(k_max, n - 1)
    if k_max < k_min:
        return max(1, min(k_min, n))
    gaps = eigenvalues[k_min : k_max + 1] - eigenvalues[k_min - 1 : k_max]
    return k_min + int(gaps.argmax())


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 100) -> torch.Tensor:
    """x (N, D) -> labels (N,) int64 in 0..k-1; k-means++ seeding drawn from `generator` (CPU)."""
    n = x.shape[0]
    k = min(k, n)
    x = x.double()
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(-1)
    for _ in range(1, k):
        probs = d2.cpu()
        total = float(probs.sum())
        idx = int(torch.multinomial(probs / total, 1, generator=generator)) if total > 0 else int(d2.argmax())
        centers.append(x[idx])
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(-1))
    c = torch.stack(centers)
    labels = None
    for _ in range(iterations):
        new = torch.cdist(x, c).argmin(-1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
    return labels


def cluster_features(features: torch.Tensor, p: UnsupervisedParams) -> list[torch.Tensor]:
    """(B, C, s, s) unit features -> per image (s, s) int64 segment ids 1..K by decreasing size."""
    b, _, s, _ = features.shape
    out = []
    for i in range(b):
        f = features[i].flatten(1).T  # (N, C)
        values, vectors = spectral_embedding(f, p.bandwidth)
        k = min(p.k, f.shape[0]) if p.k is not None else choose_k(values, p.k_min, p.k_max)
        emb = torch.nn.functional.normalize(vectors[:, :k], dim=-1)
        gen = torch.Generator().manual_seed(p.seed)
        labels = kmeans(emb, k, gen, p.iterations)
        sizes = torch.bincount(labels, minlength=k)
        order = sorted(range(k), key=lambda j: (-int(sizes[j]), j))
        relabel = torch.zeros(k, dtype=torch.long, device=labels.device)
        for new, old in enumerate(order):
            relabel[old] = new + 1
        out.append(relabel[labels].view(s, s))
    return out


def maskdiffusion_unsupervised(maps: CapturedMaps, spans: list[list[int]] | None = None,
                               params: UnsupervisedParams | None = None) -> torch.Tensor:
    """Captured maps -> one-hot segment scores (B, 1 + K_max, s, s) float32 at the features' common
    size; -inf for channel 0 and for unused segments. `spans` is ignored (naming uses it)."""
    p = params or UnsupervisedParams()
    f = decoder_features(maps, p.skip_finest_features)
    b, _, s, _ = f.shape
    scores = torch.full((b, 1 + p.channels, s, s), float("-inf"), device=f.device)
    for i, seg in enumerate(cluster_features(f, p)):
        for j in range(1, int(seg.max()) + 1):
            scores[i, j] = (seg == j).float()
    return scores


def name_segments(maps: CapturedMaps, spans: list[list[int]], scores: torch.Tensor, class_names: list[str],
                  params: UnsupervisedParams | None = None) -> list[list[str]]:
    """Names of segment channels 1..K_max for each image (module docstring): a vocabulary class name, or
    "segment k" where no class overlaps the segment strongly enough (or no vocabulary is given)."""
    p = params or UnsupervisedParams()
    b, channels, s, _ = scores.shape
    names = [[f"segment {j}" for j in range(1, channels)] for _ in range(b)]
    if not spans:
        return names
    raw, evidence = class_attentions(maps, spans, p.cross_levels, s, p.chunk_length if p.filter_ratio > 0 else None)
    raw = raw.to(scores.device)  # (B, K, s, s)
    a = raw.flatten(2) / raw.flatten(2).amax(-1, keepdim=True).clamp_min(1e-12)
    keep = torch.ones(raw.shape[:2], dtype=torch.bool, device=raw.device)
    if p.filter_ratio > 0:
        evidence = evidence.to(scores.device)
        keep = relative_evidence_keep(top_fraction_mean(evidence, p.evidence_fraction), p.filter_ratio)
    masks = (scores[:, 1:].flatten(2) > 0.5).to(a.dtype)  # (B, K_max, N)
    overlap = (masks @ a.transpose(1, 2)) / masks.sum(-1, keepdim=True).clamp_min(1)  # (B, K_max, K)
    overlap = overlap.masked_fill(~keep[:, None, :], float("-inf"))
    best, cls = overlap.max(-1)
    for i in range(b):
        for j in range(channels - 1):
            if masks[i, j].sum() > 0 and best[i, j] >= p.name_threshold:
                names[i][j] = class_names[int(cls[i, j])]
    return names
