"""A deliberately naive capture, for the benchmark's side-by-side only: what reference code does.

Self-attention layers compute and KEEP their per-head probabilities (B, heads, N, N) for every layer
read, and propagation is a dense matmul with the head mean. diffseg's own capture keeps Q and K and
propagates with scaled_dot_product_attention instead. Not used by the product.
"""

from __future__ import annotations

import torch

from diffseg.capture import CaptureProcessor, SelfAttention, capture


class DenseSelfAttention(SelfAttention):
    """SelfAttention over stored per-head probability maps (B, heads, N, N)."""

    def __init__(self, probs: list[torch.Tensor]):
        super().__init__([])
        self.probs = probs

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        total = sum(p.float().mean(1) @ x.float().to(p.device) for p in self.probs)
        return total / len(self.probs)

    def dense(self, max_elements: int = 1 << 25) -> torch.Tensor:
        return sum(p.float().mean(1) for p in self.probs) / len(self.probs)


class _NaiveSelfProcessor(CaptureProcessor):
    def __init__(self, name, recorder, store: dict):
        super().__init__(name, recorder, is_cross=False)
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        batch = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        d = k.shape[-1] // attn.heads
        q, k, v = (t.view(batch, -1, attn.heads, d).transpose(1, 2) for t in (q, k, v))
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)  # (B, heads, N, N): the naive part
        self.store.setdefault(q.shape[2], []).append(probs[self.recorder.keep])
        out = (probs @ v).transpose(1, 2).reshape(batch, -1, attn.heads * d)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class naive_capture(capture):  # noqa: N801
    """Drop-in replacement of diffseg.capture.capture that materialises per-head self-attention."""

    def __init__(self, unet, needs, keep=slice(None)):
        super().__init__(unet, needs, keep)
        self.store: dict[int, list[torch.Tensor]] = {}

    def make_processor(self, name, is_cross):
        if is_cross:
            return super().make_processor(name, is_cross)
        return _NaiveSelfProcessor(name, self.recorder, self.store)

    def maps(self, image=None):
        out = super().maps(image)
        out.self_attn = {int(n**0.5): DenseSelfAttention(p) for n, p in self.store.items()}
        return out
