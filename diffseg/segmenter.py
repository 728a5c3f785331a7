"""Segmenter: a frozen SD pipeline + a vocabulary + one or more methods; images in, label maps out.

One U-Net forward per image (per timestep) serves the whole vocabulary and every method requested:
VAE posterior mean -> seeded noise added at t -> U-Net under capture -> method scores -> argmax.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import fields, replace

import numpy as np
import torch

from diffseg import methods as method_registry
from diffseg.capture import CapturedMaps, Needs, SelfAttention, capture
from diffseg.codecs.images import resize_square, to_rgb_array
from diffseg.model import Pipeline
from diffseg.recipes import RECIPES, SHARED_RECIPE, SegmenterConfig, resolve_recipe, vocab_with_template  # noqa: F401 (re-exported)
from diffseg.segmentation import Segmentation, scores_to_label_map, scores_to_labels  # noqa: F401 (re-exported)
from diffseg.vocabulary import (
    Vocabulary,
    encode_context,
)


class Segmenter:
    """Segments images against a shared vocabulary with one forward pass per image."""

    def __init__(
        self,
        pipe: Pipeline,
        vocab: Vocabulary | Sequence[str],
        method: str | Sequence[str] = "diffsegmenter",
        config: SegmenterConfig | None = None,
        params: dict | None = None,
        **overrides,
    ):
        config = config or SegmenterConfig()
        known = {f.name for f in fields(SegmenterConfig)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise TypeError(f"unknown Segmenter option(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        if "timesteps" in overrides and isinstance(overrides["timesteps"], int):
            overrides["timesteps"] = (overrides["timesteps"],)
        self.config = replace(config, **overrides)
        self.pipe = pipe
        self.methods = [method] if isinstance(method, str) else list(method)
        if not self.methods:
            raise ValueError("method list is empty; available: " + ", ".join(method_registry.available()))
        if self.config.context not in ("joint", "per_class"):
            raise ValueError(f"context {self.config.context!r} is not 'joint' or 'per_class'")
        vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary(list(vocab))
        self.recipe = resolve_recipe(self.methods, self.config, vocab)  # what the job records in its manifest
        self.vocab = vocab_with_template(vocab, self.recipe)
        self.fns = {m: method_registry.get(m) for m in self.methods}
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.methods))
        if unknown:
            raise ValueError(f"params given for methods not in use: {', '.join(unknown)}")
        self.params = {m: params.get(m) for m in self.methods}
        self.needs = Needs()
        for m in self.methods:
            self.needs = self.needs.union(method_registry.needs(m))
        self._check_resolution()
        self.prompt = self.vocab.encode(pipe.tokenizer, self.config.context, separator=self.recipe["separator"])
        self.context = encode_context(  # once per Segmenter, never per batch
            pipe.text_encoder, pipe.tokenizer, self.prompt, pipe.device, pipe.dtype, self.recipe["class_token_weight"]
        )
        self.label_dtype = np.uint8 if len(self.vocab) < 256 else np.uint16
        self.timings: dict[str, float] = defaultdict(float)  # seconds per stage, summed over calls
        # One capture per Segmenter: the same processor objects at every call, so a compiled U-Net
        # (torch.compile of the whole U-Net) keeps one graph instead of recompiling for new processors.
        self._capture = capture(pipe.unet, self.needs)

    def _tick(self, stage: str, since: float) -> float:
        """Adds the time since `since` to `stage` (synchronising CUDA first); returns now."""
        if self.pipe.device.type == "cuda":
            torch.cuda.synchronize(self.pipe.device)
        now = time.perf_counter()
        self.timings[stage] += now - since
        return now

    def _check_resolution(self) -> None:
        res, scale = self.config.resolution, self.pipe.vae_scale
        levels = len(self.pipe.unet.down_blocks)
        step = scale * 2 ** (levels - 1)
        if res <= 0 or res % step:
            raise ValueError(f"resolution {res} must be a positive multiple of {step} for this model")
        for t in self.recipe["timesteps"]:
            if not 0 <= t < self.pipe.scheduler.config.num_train_timesteps:
                raise ValueError(f"timestep {t} is outside 0..{self.pipe.scheduler.config.num_train_timesteps - 1}")

    @torch.no_grad()
    def segment(
        self, images: Sequence, keys: Sequence[str] | None = None, sizes: Sequence[tuple[int, int]] | None = None
    ) -> dict[str, list[Segmentation]]:
        """Segments `images` (PIL images or HxWx3 uint8 arrays, any sizes) with every method in use.

        keys: per image, the identity that seeds its noise (e.g. its URI); default: a hash of its pixels.
        sizes: per image, the (H, W) of the label map; default: the image's own size (pass the original
        size when the images were already resized to the model resolution).
        Returns method -> list[Segmentation] (one per image, in order), whatever the number of methods:
        one U-Net forward per image (per timestep) serves them all.
        """
        return self._segment(images, keys, sizes, self.methods)

    def segment_method(
        self,
        images: Sequence,
        keys: Sequence[str] | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
        method: str | None = None,
    ) -> list[Segmentation]:
        """The single-method convenience: `segment` for one method, as a list (one per image).

        method: one of the methods in use; default: the only one (ValueError when there are several).
        """
        if method is None:
            if len(self.methods) > 1:
                raise ValueError(f"this Segmenter runs {', '.join(self.methods)}: pass method= one of them")
            method = self.methods[0]
        if method not in self.fns:
            raise ValueError(f"method {method!r} is not in use here; in use: {', '.join(self.methods)}")
        return self._segment(images, keys, sizes, [method])[method]

    def _segment(self, images, keys, sizes, methods: list[str]) -> dict[str, list[Segmentation]]:
        arrays = [to_rgb_array(im) for im in images]
        if not arrays:
            return {m: [] for m in methods}
        sizes = list(sizes) if sizes is not None else [a.shape[:2] for a in arrays]
        keys = list(keys) if keys is not None else _default_keys(arrays)
        if len(keys) != len(arrays) or len(sizes) != len(arrays):
            raise ValueError(f"got {len(arrays)} images, {len(keys)} keys and {len(sizes)} sizes; they must match")
        maps, spans = self.capture_maps(arrays, keys)
        out = {}
        for m in methods:
            t0 = time.perf_counter()
            scores = self.fns[m](maps, spans, self.params[m]).float()
            namer = method_registry.namer(m)  # segment methods name their channels from the maps
            names = namer(maps, spans, scores, self.vocab.names, self.params[m]) if namer else None
            t0 = self._tick("method", t0)
            out[m] = [
                self._to_segmentation(scores[i], sizes[i], m, names[i] if names else None)
                for i in range(len(arrays))
            ]
            self._tick("labels", t0)
        return out

    def capture_maps(self, arrays: list[np.ndarray], keys: list[str]) -> tuple[CapturedMaps, list[list[int]]]:
        """Runs the VAE and one U-Net forward per timestep under capture; returns (maps, class spans)."""
        x01, forwards = self._forward_inputs(arrays, keys)
        t0 = time.perf_counter()
        with self._capture as cap:
            for noisy, tt, ctx in forwards:
                self.pipe.unet(noisy, tt, encoder_hidden_states=ctx)
        maps = cap.maps(image=x01)
        self._tick("unet_capture", t0)
        if self.config.context == "per_class":
            return merge_per_class(maps, len(arrays), self.prompt.spans)
        return maps, self.prompt.spans[0]

    @torch.no_grad()
    def forward_plain(self, images: Sequence, keys: Sequence[str] | None = None) -> None:
        """The floor of a `segment` call (benchmarks): the same VAE encode and U-Net forward(s), with
        the U-Net's default processors, no capture and no method."""
        arrays = [to_rgb_array(im) for im in images]
        keys = list(keys) if keys is not None else _default_keys(arrays)
        _, forwards = self._forward_inputs(arrays, keys)
        t0 = time.perf_counter()
        for noisy, tt, ctx in forwards:
            self.pipe.unet(noisy, tt, encoder_hidden_states=ctx)
        self._tick("unet", t0)

    def _forward_inputs(self, arrays: list[np.ndarray], keys: list[str]):
        """VAE posterior mean of the images -> (x01 (B, 3, R, R) in [0, 1] on the device, the U-Net
        inputs (noisy latents, timesteps, context) of each timestep). Pixels travel as uint8, from
        pinned memory without blocking on CUDA."""
        pipe, res = self.pipe, self.config.resolution
        t0 = time.perf_counter()
        pixels = torch.from_numpy(np.stack([resize_square(a, res) for a in arrays])).permute(0, 3, 1, 2)
        if pipe.device.type == "cuda":
            pixels = pixels.pin_memory()
        x01 = pixels.to(pipe.device, non_blocking=True).float() / 255.0
        latents = pipe.vae.encode((x01 * 2 - 1).to(pipe.dtype)).latent_dist.mean
        latents = latents * pipe.vae.config.scaling_factor
        self._tick("vae_encode", t0)
        noise = None
        if self.recipe["noise"]:
            noise = torch.stack([seeded_noise(k, self.config.seed, latents.shape[1:]) for k in keys])
            noise = noise.to(pipe.device, latents.dtype, non_blocking=True)
        b = len(arrays)
        prompts = self.context.shape[0]
        if self.config.context == "per_class":  # batch rows: image-major, one row per (image, class)
            latents = latents.repeat_interleave(prompts, 0)
            noise = noise.repeat_interleave(prompts, 0) if noise is not None else None
            ctx = self.context.repeat(b, 1, 1)
        else:
            ctx = self.context.expand(b, -1, -1)
        forwards = []
        for t in self.recipe["timesteps"]:
            tt = torch.full((latents.shape[0],), t, device=pipe.device, dtype=torch.long)
            noisy = pipe.scheduler.add_noise(latents, noise, tt) if self.recipe["noise"] else latents
            forwards.append((noisy, tt, ctx))
        return x01, forwards

    def _to_segmentation(
        self, scores: torch.Tensor, size: tuple[int, int], method: str, names: list[str] | None = None
    ) -> Segmentation:
        """`names`: of channels 1..K when they are not the vocabulary's classes (unsupervised segments)."""
        labels, counts = scores_to_labels(scores, size, self.config.max_label_side, self.label_dtype)
        ids = [int(i) for i in np.flatnonzero(counts[1:]) + 1]  # every argmax cell survives the upscale
        return Segmentation(
            labels=labels,
            scores=scores.cpu().numpy().astype(np.float32),
            classes=[(names or self.vocab.names)[i - 1] for i in ids],
            method=method,
            class_ids=ids,
            size=(int(size[0]), int(size[1])),
        )


def _default_keys(arrays: list[np.ndarray]) -> list[str]:
    """The keys of images given without keys: the SHA-256 of each image's RGB pixels."""
    return [hashlib.sha256(a.tobytes()).hexdigest() for a in arrays]


def seeded_noise(key: str, seed: int, shape) -> torch.Tensor:
    """Standard normal noise of `shape` from a CPU generator seeded by (key, seed): batch-independent."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randn(tuple(shape), generator=gen)


def merge_per_class(maps: CapturedMaps, b: int, spans_per_prompt: list[list[list[int]]]):
    """Folds a per-class capture (B*K rows, image-major) into one joint-like capture of B rows.

    Cross maps: the columns of class k's tokens are taken from class k's own prompt and concatenated,
    so class spans index the merged token axis. Self-attention and features: the mean over the K
    prompts (the paper uses each prompt's own S_k; with one joint S the propagation is m = mean_k(S_k)·c,
    a documented simplification).
    """
    k = len(spans_per_prompt)
    spans = [s[0] for s in spans_per_prompt]
    merged_spans, offset = [], 0
    for s in spans:
        merged_spans.append(list(range(offset, offset + len(s))))
        offset += len(s)

    def gather(x: torch.Tensor) -> torch.Tensor:  # (B*K, N, T) -> (B, N, sum |span|)
        x = x.view(b, k, *x.shape[1:])
        return torch.cat([x[:, j][:, :, spans[j]] for j in range(k)], -1)

    out = CapturedMaps(image=maps.image, first_up=dict(maps.first_up), heads=dict(maps.heads))
    out.cross = {r: gather(x) for r, x in maps.cross.items()}
    out.cross_layers = {r: [gather(x) for x in xs] for r, xs in maps.cross_layers.items()}
    out.features = {r: x.view(b, k, *x.shape[1:]).mean(1) for r, x in maps.features.items()}
    out.self_attn = {
        r: SelfAttention([(n, q[j::k], kk[j::k], s) for n, q, kk, s in sa.entries for j in range(k)])
        for r, sa in maps.self_attn.items()
    }
    return out, merged_spans
