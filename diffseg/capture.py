"""Attention and feature capture on a diffusers UNet2DConditionModel, by swapping attention processors.

Which layers to read (the *locator*: ``locate_layers``) is separate from how they are read (the
*hook*: ``CaptureProcessor``), as in DAAM. Only the layers a method needs get the capturing processor;
every other layer keeps its original (fast) processor, and the originals are restored on exit. A capture
refuses to be installed twice on one U-Net.

What is kept (DESIGN.md "Captured maps"), for the rows of the batch in ``keep`` (the conditional branch):

- cross-attention probabilities, mean over heads and over the layers at each resolution, as a running
  sum over forwards (memory does not grow with timesteps or denoising steps);
- for self-attention, the queries and keys of the chosen layers (never the N x N probabilities);
  ``SelfAttention.propagate(x)`` = mean_layers,heads softmax(QK^T/sqrt(d)) @ x through a fused SDPA
  kernel (fp32 by default, as measured; see SelfAttention); ``dense()`` / ``row_chunks()`` build a
  head-mean map in fp32 row chunks under a memory budget;
- decoder features: the input of ``up_blocks[i].resnets[-1]``, through a forward pre-hook.

Levels are keyed by ``r``, the side of the square token grid; a layer's level index comes from its name
(down_blocks.i -> i, mid_block -> last, up_blocks.j -> last - j): rank 0 is the finest level.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from diffseg.selfattention import SelfAttention, attend_values

__all__ = ["CaptureProcessor", "CapturedMaps", "Needs", "SelfAttention", "attend_values", "capture", "layer_level",
           "locate_layers"]

_ACTIVE_ATTR = "_diffseg_capture_active"


@dataclass(frozen=True)
class Needs:
    """What a method reads. ``self_attn``: pairs (rank, which) with rank 0 = finest level and which in
    {"all", "first_up"} (every self-attention layer at that level, or the first decoder one)."""

    cross: bool = True
    cross_layers: bool = False
    self_attn: frozenset = frozenset()
    features: bool = False

    def union(self, other: Needs) -> Needs:
        return Needs(
            cross=self.cross or other.cross,
            cross_layers=self.cross_layers or other.cross_layers,
            self_attn=self.self_attn | other.self_attn,
            features=self.features or other.features,
        )


@dataclass
class CapturedMaps:
    """Maps of one capture context (conditional branch only), averaged over its forwards.

    cross[r]: (B, r*r, T) float32; cross_layers[r]: list of (B, r*r, T), one per layer; self_attn[r]:
    SelfAttention; features[r]: (B, C_r, r, r) float32; image: (B, 3, H, W) in [0, 1] or None;
    first_up[r]: the name of the first decoder self-attention layer at r (captured or not: check
    ``self_attn[r].layers``; SeeDiff reads it); heads[r]: head count of the cross-attention layers at r.
    """

    cross: dict[int, torch.Tensor] = field(default_factory=dict)
    cross_layers: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    self_attn: dict[int, SelfAttention] = field(default_factory=dict)
    features: dict[int, torch.Tensor] = field(default_factory=dict)
    image: torch.Tensor | None = None
    first_up: dict[int, str] = field(default_factory=dict)
    heads: dict[int, int] = field(default_factory=dict)

    @property
    def levels(self) -> list[int]:
        """Sides of the captured cross-attention levels, finest first."""
        return sorted(self.cross, reverse=True)


def layer_level(name: str, n_levels: int) -> int:
    """Level index (0 = finest) of an attention processor or block from its module path."""
    m = re.match(r"(down|up)_blocks\.(\d+)", name)
    if m:
        i = int(m.group(2))
        return i if m.group(1) == "down" else n_levels - 1 - i
    if name.startswith("mid_block"):
        return n_levels - 1
    raise ValueError(f"cannot place layer {name!r} in the U-Net")


def locate_layers(unet, needs: Needs) -> tuple[set[str], set[str], dict[int, str]]:
    """Returns (cross layer names, self layer names to keep, first decoder self layer per level)."""
    n_levels = len(unet.down_blocks)
    names = [k.removesuffix(".processor") for k in unet.attn_processors]
    cross = {n for n in names if n.endswith("attn2")} if (needs.cross or needs.cross_layers) else set()
    selfs = [n for n in names if n.endswith("attn1")]
    first_up: dict[int, str] = {}
    for n in selfs:
        lvl = layer_level(n, n_levels)
        if n.startswith("up_blocks") and lvl not in first_up:
            first_up[lvl] = n
    keep: set[str] = set()
    for rank, which in needs.self_attn:
        if which == "all":
            keep |= {n for n in selfs if layer_level(n, n_levels) == rank}
        elif which == "first_up":
            if rank in first_up:
                keep.add(first_up[rank])
        else:
            raise ValueError(f"self-attention selection {which!r} is not 'all' or 'first_up'")
    return cross, keep, first_up


class _Recorder:
    """Running sums filled by the processors and hooks of one capture context."""

    def __init__(self, keep: slice, needs: Needs, self_mode: str = "qk"):
        if self_mode not in ("qk", "dense"):
            raise ValueError(f"self_mode {self_mode!r} is not 'qk' or 'dense'")
        self.keep = keep
        self.needs = needs
        self.self_mode = self_mode
        self.self_dense_sum: dict[str, torch.Tensor] = {}
        self.self_dense_count: dict[str, int] = defaultdict(int)
        self.self_dense_side: dict[str, int] = {}
        self.cross_sum: dict[int, torch.Tensor] = {}
        self.cross_count: dict[int, int] = defaultdict(int)
        self.cross_layer_sum: dict[str, torch.Tensor] = {}
        self.cross_layer_count: dict[str, int] = defaultdict(int)
        self.cross_layer_side: dict[str, int] = {}
        self.self_entries: dict[int, list] = defaultdict(list)
        self.feature_sum: dict[int, torch.Tensor] = {}
        self.feature_count: dict[int, int] = defaultdict(int)

    def clear(self) -> None:
        """Empties every running sum in place (the processors keep pointing at this recorder)."""
        for value in vars(self).values():
            if isinstance(value, dict):
                value.clear()

    @staticmethod
    def _add(sums: dict, counts: dict, key, x: torch.Tensor) -> None:
        """Adds `x` to the running sum under `key` (a copy the first time) and counts it."""
        if key in sums:
            sums[key] += x
        else:
            sums[key] = x.clone()
        counts[key] += 1

    def add_cross(self, name: str, probs: torch.Tensor) -> None:
        """probs: (B, heads, N, T) for the kept rows."""
        mean = probs.float().mean(1)
        side = math.isqrt(mean.shape[1])
        self._add(self.cross_sum, self.cross_count, side, mean)
        if self.needs.cross_layers:
            self._add(self.cross_layer_sum, self.cross_layer_count, name, mean)
            self.cross_layer_side[name] = side

    def add_self(self, name: str, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        side = math.isqrt(q.shape[2])
        if self.self_mode == "qk":
            self.self_entries[side].append((name, q.detach(), k.detach(), scale))
            return
        probs = SelfAttention([(name, q.detach(), k.detach(), scale)]).dense()
        self._add(self.self_dense_sum, self.self_dense_count, name, probs)
        self.self_dense_side[name] = side

    def add_feature(self, side: int, x: torch.Tensor) -> None:
        self._add(self.feature_sum, self.feature_count, side, x.detach().float())


class CaptureProcessor:
    """Attention processor that computes what AttnProcessor2_0 computes and records for the recorder.

    Cross layers compute probabilities explicitly (they are small: N x T) and reuse them for the output;
    self layers run scaled_dot_product_attention and keep only q and k.
    """

    def __init__(self, name: str, recorder: _Recorder, is_cross: bool):
        self.name = name
        self.recorder = recorder
        self.is_cross = is_cross

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, _, _ = hidden_states.shape
        if attention_mask is not None:
            seq = hidden_states.shape[1] if encoder_hidden_states is None else encoder_hidden_states.shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        keep = self.recorder.keep
        if self.is_cross:
            logits = query.float() @ key.float().transpose(-1, -2) * attn.scale
            if attention_mask is not None:
                logits = logits + attention_mask.float()
            probs = logits.softmax(dim=-1)
            self.recorder.add_cross(self.name, probs[keep])
            out = (probs @ value.float()).to(query.dtype)
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
            self.recorder.add_self(self.name, query[keep], key[keep], attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class capture:  # noqa: N801  (used as a context manager: `with capture(unet, needs) as cap:`)
    """Installs capturing processors (and feature hooks) on `unet` for `needs`; restores on exit.

    ``keep``: the batch rows to record (e.g. ``slice(B, 2 * B)`` for the conditional half of a
    classifier-free-guidance batch). ``self_mode``: "qk" keeps queries and keys per forward (exact,
    no N x N map); "dense" keeps running sums of head-mean self-attention maps (memory independent of the
    number of forwards: for generations of many steps). After the forwards, ``cap.maps(image)``
    returns CapturedMaps. One capture object can be entered again (never nested): each entry starts
    empty and reuses the same processor objects.
    """

    def __init__(self, unet, needs: Needs, keep: slice = slice(None), self_mode: str = "qk"):
        self.unet = unet
        self.needs = needs
        self.recorder = _Recorder(keep, needs, self_mode)
        self._originals = None
        self._hooks = []
        # the layers read, found once: the U-Net and `needs` do not change after construction
        self._cross, self._keep, self._first_up = locate_layers(unet, needs)
        n_levels = len(unet.down_blocks)
        # level index (0 = finest) -> heads of its cross-attention layers
        self._heads = {layer_level(n, n_levels): int(unet.get_submodule(n).heads) for n in sorted(self._cross)}
        self._made: dict[str, object] = {}  # capturing processors, made at the first entry and reused at every one

    def __enter__(self) -> capture:
        if getattr(self.unet, _ACTIVE_ATTR, False):
            raise RuntimeError("a diffseg capture is already installed on this U-Net; captures do not nest")
        self.recorder.clear()  # a capture context averages the forwards run inside it, and only those
        self._originals = dict(self.unet.attn_processors)
        for name in (self._cross | self._keep) - set(self._made):
            self._made[name] = self.make_processor(name, is_cross=name in self._cross)
        self.unet.set_attn_processor(
            {key: self._made.get(key.removesuffix(".processor"), proc) for key, proc in self._originals.items()}
        )
        if self.needs.features:
            for block in self.unet.up_blocks:
                self._hooks.append(block.resnets[-1].register_forward_pre_hook(self._feature_hook))
        setattr(self.unet, _ACTIVE_ATTR, True)
        return self

    def make_processor(self, name: str, is_cross: bool):
        """The processor installed on a captured layer (benchmarks override it with a naive one)."""
        return CaptureProcessor(name, self.recorder, is_cross=is_cross)

    def _feature_hook(self, module, args) -> None:
        """Forward pre-hook of a decoder block's last resnet: records its input, keyed by its side."""
        x = args[0]
        self.recorder.add_feature(x.shape[-1], x[self.recorder.keep])

    def __exit__(self, *exc) -> None:
        self.unet.set_attn_processor(dict(self._originals))
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        setattr(self.unet, _ACTIVE_ATTR, False)

    def maps(self, image: torch.Tensor | None = None) -> CapturedMaps:
        """The averaged maps recorded so far; `image` (B, 3, H, W) in [0, 1] is attached for PAMR."""
        rec = self.recorder
        out = CapturedMaps(image=image)
        for side, total in rec.cross_sum.items():
            out.cross[side] = total / rec.cross_count[side]
        for name, total in rec.cross_layer_sum.items():
            out.cross_layers.setdefault(rec.cross_layer_side[name], []).append(total / rec.cross_layer_count[name])
        for side, entries in rec.self_entries.items():
            out.self_attn[side] = SelfAttention(list(entries))
        for name, total in rec.self_dense_sum.items():
            side = rec.self_dense_side[name]
            out.self_attn.setdefault(side, SelfAttention([])).dense_maps[name] = total / rec.self_dense_count[name]
        for side, total in rec.feature_sum.items():
            out.features[side] = total / rec.feature_count[side]
        finest = max(out.cross or out.self_attn, default=None)
        if finest is not None:
            out.first_up = {finest >> lvl: name for lvl, name in self._first_up.items()}
            out.heads = {finest >> lvl: h for lvl, h in self._heads.items()}
        return out
