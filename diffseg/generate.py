"""Synthetic annotated data: generate an image for a class name and read its mask from the attention.

SeeDiff's original use: text -> (image, mask) pairs for training a segmentation network. The frozen
pipeline denoises with DDIM and classifier-free guidance; attention of the conditional branch is
captured during denoising and averaged over the steps as running sums (cross-attention sums and dense
self-attention sums: memory does not grow with the number of steps); the method (SeeDiff by default)
turns the averaged maps into a mask for the class.

Reproducible: the initial latent is drawn from a CPU generator seeded by (class, seed), so the same
(class, seed, model, config) gives the same image and mask (same device and dtype).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from diffseg import methods as method_registry
from diffseg.capture import capture
from diffseg.model import Pipeline
from diffseg.segmentation import scores_to_label_map
from diffseg.vocabulary import Vocabulary, empty_prompt_ids, encode_text


@dataclass(frozen=True)
class GenerationConfig:
    steps: int = 50  # DDIM steps (SeeDiff: 50)
    guidance: float = 7.0  # classifier-free guidance scale (SeeDiff: 7); 1 = no guidance
    resolution: int = 512  # image side in pixels
    prompt: str = "a photo of a {}"  # "{}" is replaced by the class name
    method: str = "seediff"  # the method that reads the mask from the averaged maps
    max_label_side: int = 1024


@dataclass
class Generated:
    """One generated sample: image (R, R, 3) uint8, label_map (R, R) uint8 with 1 = the class,
    scores (2, h, w) float32 (background, class), and what produced it."""

    image: np.ndarray
    label_map: np.ndarray
    scores: np.ndarray
    class_name: str
    prompt: str
    seed: int


def initial_latent(class_name: str, seed: int, shape) -> torch.Tensor:
    """The starting noise for (class, seed), from a CPU generator: independent of batch and device."""
    digest = hashlib.sha256(f"{class_name}\x00{seed}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randn(tuple(shape), generator=gen)


def prompt_for(class_name: str, template: str) -> Vocabulary:
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} must contain '{{}}' where the class name goes")
    return Vocabulary([class_name], class_template=template.replace("{}", "{class}"))


@torch.no_grad()
def generation_context(pipe: Pipeline, class_name: str, b: int, cfg: GenerationConfig):
    """Returns (ctx, keep, span): text context for b images ([uncond; cond] with guidance), the batch
    rows of the conditional branch, and the class's token positions in the prompt."""
    enc = prompt_for(class_name, cfg.prompt).encode(pipe.tokenizer, "per_class")
    chunk = enc.input_ids.shape[1]
    cond = encode_text(pipe.text_encoder, enc.input_ids, chunk, pipe.device, pipe.dtype)
    if cfg.guidance == 1.0:
        return cond.expand(b, -1, -1), slice(None), enc.spans[0][0]
    uncond = encode_text(pipe.text_encoder, empty_prompt_ids(pipe.tokenizer, chunk), chunk, pipe.device, pipe.dtype)
    return torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)]), slice(b, 2 * b), enc.spans[0][0]


@torch.no_grad()
def denoise(pipe: Pipeline, ctx: torch.Tensor, latents: torch.Tensor, steps: int, guidance: float, around_step=None):
    """DDIM from pure noise `latents` (B, 4, r, r) to clean latents, with classifier-free guidance when
    `guidance` != 1 (then `ctx` is [uncond; cond], 2B rows). `around_step()`, when given, returns a
    context manager entered around each U-Net call (tests capture each step on its own with it)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=pipe.device)
    latents = (latents * scheduler.init_noise_sigma).to(pipe.device, pipe.dtype)
    guided = guidance != 1.0
    for t in scheduler.timesteps:
        model_in = torch.cat([latents, latents]) if guided else latents
        model_in = scheduler.scale_model_input(model_in, t)
        with around_step() if around_step else contextlib.nullcontext():
            pred = pipe.unet(model_in, t, encoder_hidden_states=ctx).sample
        if guided:
            pred_u, pred_c = pred.chunk(2)
            pred = pred_u + guidance * (pred_c - pred_u)
        latents = scheduler.step(pred, t, latents).prev_sample
    return latents


@torch.no_grad()
def generate_with_masks(
    pipe: Pipeline, class_name: str, seeds: list[int], config: GenerationConfig | None = None, params=None
) -> list[Generated]:
    """Generates len(seeds) images of `class_name` (one batch) and their masks."""
    cfg = config or GenerationConfig()
    ctx, keep, span = generation_context(pipe, class_name, len(seeds), cfg)
    side = cfg.resolution // pipe.vae_scale
    latents = torch.stack([initial_latent(class_name, s, (pipe.unet.config.in_channels, side, side)) for s in seeds])
    needs = method_registry.needs(cfg.method)
    with capture(pipe.unet, needs, keep=keep, self_mode="dense") as cap:
        latents = denoise(pipe, ctx, latents, cfg.steps, cfg.guidance)
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.float()
    images01 = ((images + 1) / 2).clamp(0, 1)
    maps = cap.maps(image=images01)
    scores = method_registry.get(cfg.method)(maps, [span], params).float()
    out = []
    pixels = (images01 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    prompt = cfg.prompt.replace("{}", class_name)
    for i, seed in enumerate(seeds):
        label_map = scores_to_label_map(scores[i], pixels[i].shape[:2], cfg.max_label_side)
        out.append(Generated(pixels[i], label_map, scores[i].cpu().numpy(), class_name, prompt, seed))
    return out
