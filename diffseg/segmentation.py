"""A Segmenter's result for one image and one method (:class:`Segmentation`), and the argmax that turns a
method's scores into label maps at the size the job stores (:func:`scores_to_labels`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from diffseg.codecs.upscale import upscale_labels


@dataclass
class Segmentation:
    """One image's result for one method.

    labels: (h, w) uint8 (uint16 beyond 255 classes) at the argmax size (at most ``max_label_side`` on the
    long side: what the job stores), 0 = background, k = the k-th vocabulary class; size: (H, W) of the
    input (default: labels' own shape); label_map: (H, W) the labels at the input's size, the nearest
    upscale of ``labels`` (diffseg.codecs.upscale.upscale_labels; made on first access, then kept);
    scores: (1 + K, h, w) float32 at model resolution (channel 0 background, -inf for classes the method
    filtered out); classes: names present in label_map; method: its name.
    For maskdiffusion-unsupervised, label k is the k-th segment, and classes/class_ids name the segments
    present (the vocabulary class each overlaps most by cross-attention, or "segment k").
    """

    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    method: str
    class_ids: list[int] = field(default_factory=list)
    size: tuple[int, int] | None = None

    def __post_init__(self):
        if self.size is None:
            self.size = tuple(int(n) for n in np.shape(self.labels))
        else:
            self.size = (int(self.size[0]), int(self.size[1]))

    @cached_property
    def label_map(self) -> np.ndarray:
        """(H, W) at the input's size: ``labels`` itself when it is that size, else its nearest upscale."""
        return upscale_labels(self.labels, *self.size)

    def label_names(self, vocab_names: list[str]) -> list[str]:
        """Names of label ids 1..K: the vocabulary, overridden by what this result says it found
        (methods without a vocabulary, such as unsupervised clustering, name their own segments)."""
        names = list(vocab_names)
        for cid, name in zip(self.class_ids or [], self.classes):
            if cid > len(names):
                names += [f"segment {j}" for j in range(len(names) + 1, cid + 1)]
            names[cid - 1] = name
        return names


def scores_to_labels(
    scores: torch.Tensor, size: tuple[int, int], max_side: int, dtype=np.uint8
) -> tuple[np.ndarray, np.ndarray]:
    """(1 + K, h, w) scores -> the argmax-size label map of `dtype` and its label counts.

    The argmax is taken on scores upsampled (bilinear) to at most `max_side` on the long side of `size`
    = (H, W) (the size itself when it is smaller): (ah, aw) = round((H, W) * min(1, max_side / max(H, W))).
    -inf scores (filtered classes) never win. Returns (labels (ah, aw) of `dtype`, counts (1 + K,) int64
    of each label in it, counted where the argmax ran). ah <= H and aw <= W, so every cell survives the
    nearest upscale to (H, W) (:func:`scores_to_label_map`).
    """
    h, w = int(size[0]), int(size[1])
    f = min(1.0, max_side / max(h, w))
    ah, aw = max(1, round(h * f)), max(1, round(w * f))
    finite = torch.nan_to_num(scores.float(), neginf=-1e9, posinf=1e9)
    up = F.interpolate(finite[None], size=(ah, aw), mode="bilinear", align_corners=False)[0]
    labels = up.argmax(0)
    small = labels.to(torch.uint8) if np.dtype(dtype) == np.uint8 else labels.to(torch.int32)  # before the copy
    counts = torch.bincount(small.flatten(), minlength=scores.shape[0]).cpu().numpy()
    return small.cpu().numpy().astype(dtype, copy=False), counts


def scores_to_label_map(scores: torch.Tensor, size: tuple[int, int], max_side: int, dtype=np.uint8) -> np.ndarray:
    """(1 + K, h, w) scores -> (H, W) label map of `dtype` at `size` = (H, W).

    The argmax is taken on scores upsampled (bilinear) to at most `max_side` on the long side
    (:func:`scores_to_labels`), then the labels are resized (nearest,
    diffseg.codecs.upscale.upscale_labels: torch's ``mode="nearest"``) to the full size, so memory never
    scales with K x original pixels. -inf scores (filtered classes) never win.
    """
    labels, _ = scores_to_labels(scores, size, max_side, dtype)
    return upscale_labels(labels, int(size[0]), int(size[1]))
