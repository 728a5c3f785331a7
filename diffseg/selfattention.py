"""Self-attention kept as queries and keys, and propagation through it without materialising it.

``SelfAttention.propagate(x)`` = mean over layers and heads of softmax(QK^T * scale) @ x through a fused
scaled_dot_product_attention kernel (:func:`attend_values`); ``row_chunks`` / ``dense`` build the
head-mean map a few rows at a time under a memory budget. diffseg.capture records them
(DESIGN.md "Captured maps"); the methods read them (diffseg.methods).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SelfAttention:
    """Self-attention of the kept layers at one level.

    Two storage forms, chosen by the capture's ``self_mode``:
    ``entries``: list of (layer name, q, k, scale) with q, k (B, heads, N, d), one entry per layer per
    forward (the default: exact, memory does not hold any N x N map);
    ``dense_maps``: layer name -> (B, N, N) head-mean probabilities already averaged over forwards
    (running sums, for long generations where keeping Q/K of every step would grow with the steps).
    Operations average over layers (and forwards) and heads in fp32. ``dtype``: what :meth:`propagate`
    runs its fused kernel in: fp32 by default, the one precision whose labels stay equal on the models
    measured (docs/benchmarks.md "Propagation precision": bf16 flips 0.9-1.4 % of pixels, fp16 0.1-0.4 %,
    fp64 against fp32 0.01-0.13 %); None = the kept queries' dtype (the model's), for measurements
    (``python -m jobs.bench.flips``). The materialised rows (:meth:`row_chunks`, :meth:`dense`) are
    always fp32 (DESIGN.md: scores in fp32 when the U-Net runs in fp16/bf16).
    """

    def __init__(self, entries: list[tuple[str, torch.Tensor, torch.Tensor, float]], dense_maps: dict | None = None,
                 dtype: torch.dtype | None = torch.float32):
        self.entries = entries
        self.dense_maps: dict[str, torch.Tensor] = dict(dense_maps or {})
        self.dtype = dtype

    def in_dtype(self, dtype: torch.dtype | None) -> SelfAttention:
        """The same maps, propagated in `dtype` (None: the queries' dtype; see the class docstring)."""
        return SelfAttention(self.entries, self.dense_maps, dtype)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys([name for name, *_ in self.entries] + list(self.dense_maps)))

    def select(self, layers: list[str]) -> SelfAttention:
        """The subset of `layers` (names), for methods that read one layer (e.g. the first decoder one)."""
        wanted = set(layers)
        chosen = [e for e in self.entries if e[0] in wanted]
        dense = {n: m for n, m in self.dense_maps.items() if n in wanted}
        if not chosen and not dense:
            raise KeyError(f"none of {layers} was captured; have {self.layers}")
        return SelfAttention(chosen, dense, self.dtype)

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) values -> (B, N, C) float32 = mean over layers and heads of softmax(QK^T * scale) @ x.

        Layers kept as queries and keys run a fused attention kernel (:func:`attend_values`) in
        ``self.dtype`` (None: the queries' dtype): no per-head N x N map is ever materialised.
        """
        outs = [m @ x.float().to(m.device) for m in self.dense_maps.values()]
        for _, q, k, scale in self.entries:
            outs.append(attend_values(q, k, x.to(q.device), scale, dtype=self.dtype or q.dtype).mean(1))
        return sum(outs) / len(outs)

    def row_chunks(self, max_elements: int = 1 << 25):
        """Yields (start, stop, rows): rows (B, stop - start, N) float32 of the head- and layer-mean
        probabilities, a few rows at a time, so that one chunk's per-head logits hold at most
        `max_elements` values (the memory budget). Layers kept as queries and keys are computed chunk
        by chunk (one softmax per row, never again); layers kept as dense maps are sliced."""
        keys = [(q, k.float().transpose(-1, -2), scale) for _, q, k, scale in self.entries]
        if keys:
            b, heads, n, _ = keys[0][0].shape
            step = max(1, max_elements // max(1, b * heads * n))
        else:
            n = step = next(iter(self.dense_maps.values())).shape[-1]
        for start in range(0, n, step):
            stop = min(n, start + step)
            parts = [m[:, start:stop].float() for m in self.dense_maps.values()]
            for q, kt, scale in keys:
                parts.append(torch.softmax(q[:, :, start:stop].float() @ kt * scale, dim=-1).mean(1))
            yield start, stop, sum(parts) / len(parts)

    def dense(self, max_elements: int = 1 << 25) -> torch.Tensor:
        """(B, N, N) float32 head- and layer-mean probabilities, built in row chunks (:meth:`row_chunks`)."""
        return torch.cat([rows for _, _, rows in self.row_chunks(max_elements)], 1)


def _pad_last(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pads the last dimension of `x` to `width` (no copy when it already has that width)."""
    return x if x.shape[-1] == width else F.pad(x, (0, width - x.shape[-1]))


def attend_values(q: torch.Tensor, k: torch.Tensor, values: torch.Tensor, scale: float,
                  max_width: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-head softmax(q k^T * scale) @ values through a fused SDPA kernel run in `dtype`; float32 out.

    q, k: (B, heads, N, d); values: (B, N, C), the same for every head. Returns (B, heads, N, C) float32.
    Fused kernels (flash on CPU and CUDA, memory-efficient on CUDA) take values only as wide as the
    head, so `values` are zero-padded to the head width d, or, when C > d, split into slices of width
    W = min(C, max_width) rounded up to a multiple of 8, with q and k zero-padded to W as well (zero
    columns leave q k^T unchanged; `scale` is passed explicitly). Values of width C != d would
    otherwise fall back to the math kernel, which materialises heads x N x N per call.

    In bf16/fp16 (a `dtype` of 2 bytes) the kernels still form q k^T and the softmax in fp32 (flash and
    memory-efficient kernels accumulate in fp32), but round the probabilities to `dtype` for the
    product with the values, and the values and the output too. Each value column is therefore
    centred on its mean over the N positions and divided by its largest remaining magnitude, and both
    are restored in fp32 after: softmax rows sum to 1, so S (a v' + mu) = a S v' + mu exactly. The
    rounded output then holds only the variation of S v around its mean, not the mean (near-uniform
    attention, as in random-weight models, makes that variation ~1 % of the mean: bf16 output
    rounding flipped more than half of their labels without it), and fp16's range cannot overflow.
    """
    q, k = q.to(dtype), k.to(dtype)
    v = values.float()
    reduced = dtype.itemsize < 4  # bf16, fp16
    if reduced:
        mean = v.mean(1, keepdim=True)  # (B, 1, C): rows of softmax sum to 1, S (v - mean) + mean = S v
        v = v - mean
        peak = v.abs().amax(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # (B, 1, C)
        v = v / peak
    v = v.to(dtype)
    b, heads, n, d = q.shape
    c = v.shape[-1]
    width = max(d, -(-min(c, max_width) // 8) * 8)
    q, k = _pad_last(q, width), _pad_last(k, width)
    outs = []
    for start in range(0, c, width):
        part = _pad_last(v[..., start : start + width], width)
        part = part.unsqueeze(1).expand(b, heads, n, width)
        out = F.scaled_dot_product_attention(q, k, part, scale=scale)
        outs.append(out[..., : min(width, c - start)])
    out = (outs[0] if len(outs) == 1 else torch.cat(outs, -1)).float()
    if not reduced:
        return out
    return out * peak[:, None] + mean[:, None]
