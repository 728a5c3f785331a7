"""Loading Stable Diffusion components, and offline builders for tests, the demo and benchmarks.

``load_pipeline(uri)`` accepts:

- ``"tiny"``: a few-MB random pipeline built in code with a fixed seed (SD 1.5's structure, small
  channels, a generated CLIP tokenizer). Its masks are meaningless: it exists for tests and demos.
- ``"sd15-random"`` / ``"sd21-random"``: full-size SD 1.5 / 2.1 architectures with random weights
  (benchmarks: the timing is the same as with real weights).
- a local folder, ``file://`` URL or any fsspec URL (``s3://bucket/sd15/``, ``gs://...``) of a
  diffusers-format checkpoint (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``). Remote checkpoints are downloaded once per node into a local cache
  (``$DIFFSEG_CACHE`` or ``~/.cache/diffseg``) under a file lock, into a temporary folder renamed into
  place only once its files have loaded, so several actors starting together download once and an
  interrupted or unusable download is never used; the cache key includes every file's size and
  ETag/modification time, so a checkpoint replaced at the same URI is fetched again
  (diffseg.checkpoint).

Only safetensors weights are read unless ``allow_pickle=True`` (pickle files can run code).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

# A checkpoint as files (listing, checks, the node cache) lives in diffseg.checkpoint; names re-exported.
from diffseg.checkpoint import (
    BUILTIN_MODELS,
    ModelLoadError,
    check_checkpoint_folder,
    check_model_uri,
    fetch_and_load,
    select_checkpoint_files,
)
from diffseg.redact import redact_uri

__all__ = ["BUILTIN_MODELS", "ModelLoadError", "Pipeline", "check_checkpoint_folder", "check_model_uri",
           "load_pipeline", "redact_uri", "save_pipeline", "select_checkpoint_files"]


@dataclass
class Pipeline:
    """The frozen SD components diffseg reads. Weights are in eval mode with gradients off."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    name: str  # the URI or builtin name it was loaded from (never contains credentials)
    dtype: torch.dtype
    device: torch.device
    is_random: bool = False  # True for builtin random-weight models: masks are meaningless

    @property
    def vae_scale(self) -> int:
        """Spatial downsampling factor of the VAE (8 for every SD 1.x/2.x checkpoint)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` is bf16 on CUDA and fp32 on CPU; also accepts "fp32"/"fp16"/"bf16" or a torch dtype.

    bf16 on CUDA: the range of fp32 (no overflow in SD 2.x attention, no loss scaling), the speed of
    fp16 on tensor cores; the same precision the benchmark measures (diffseg.runtime)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": torch.float32, "float32": torch.float32,
        "fp16": torch.float16, "float16": torch.float16,
        "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    }
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(names)}")
    return names[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_pipeline(
    uri: str,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
    cache_dir: str | None = None,
) -> Pipeline:
    """Loads the pipeline named by `uri` (see the module docstring) onto `device` in `dtype`."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if uri in BUILTIN_MODELS:
        parts = build_random_components(uri)
        is_random = True
    else:
        def load(folder: Path) -> dict:
            with quiet_diffusers():
                return load_components(folder, uri, allow_pickle=allow_pickle)

        parts = fetch_and_load(uri, load, cache_dir=cache_dir, allow_pickle=allow_pickle)
        is_random = False
    with quiet_diffusers():
        for key in ("unet", "vae", "text_encoder"):
            parts[key] = parts[key].to(device=dev, dtype=dt).eval().requires_grad_(False)
    return Pipeline(**parts, name=redact_uri(uri), dtype=dt, device=dev, is_random=is_random)


@contextlib.contextmanager
def quiet_diffusers():
    """Silences diffusers' and transformers' info/warning chatter (e.g. dtype casts) while loading."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    old = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(old[0])
        tlog.set_verbosity(old[1])


def load_components(folder: Path, uri: str, allow_pickle: bool = False) -> dict:
    """Loads the five components from a checkpoint folder."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    use_st = None if allow_pickle else True
    try:
        return {
            "unet": UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=use_st),
            "vae": AutoencoderKL.from_pretrained(folder / "vae", use_safetensors=use_st),
            "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder", use_safetensors=use_st),
            "tokenizer": CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            "scheduler": DDIMScheduler.from_pretrained(folder / "scheduler"),
        }
    except (OSError, ValueError) as exc:
        hint = "" if allow_pickle else " (only .safetensors weights are read; pass allow_pickle=True to trust .bin files)"
        raise ModelLoadError(f"model {redact_uri(uri)!r} could not be loaded{hint}: {exc}") from exc


def save_pipeline(pipe: Pipeline, folder: str | Path) -> Path:
    """Writes `pipe` as a diffusers-format checkpoint folder (safetensors), loadable by load_pipeline."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("unet", "vae", "text_encoder"):
        getattr(pipe, key).save_pretrained(folder / key, safe_serialization=True)
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    pipe.scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


# SD 1.5 / 2.1 architecture parameters; "tiny" keeps the structure with small channels.
_ARCH = {
    "sd15-random": dict(
        channels=(320, 640, 1280, 1280), heads=8, cross_dim=768, text_layers=12, text_heads=12,
        text_ff=3072, vae_channels=(128, 256, 512, 512), sample_size=64, linear_proj=False,
        vocab_size=49408, upcast=False, prediction_type="epsilon",
    ),
    "sd21-random": dict(
        channels=(320, 640, 1280, 1280), heads=(5, 10, 20, 20), cross_dim=1024, text_layers=23,
        text_heads=16, text_ff=4096, vae_channels=(128, 256, 512, 512), sample_size=96, linear_proj=True,
        vocab_size=49408, upcast=True, prediction_type="v_prediction",
    ),
    "tiny": dict(
        channels=(32, 64, 64, 64), heads=2, cross_dim=32, text_layers=2, text_heads=2, text_ff=37,
        vae_channels=(32, 32, 32, 32), sample_size=32, linear_proj=False, vocab_size=None,
        upcast=False, prediction_type="epsilon",
    ),
}


def build_random_components(name: str, seed: int = 0) -> dict:
    """Builds the five components of a builtin architecture with random weights (fixed `seed`)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffseg.tokenizer import build_tiny_tokenizer

    a = _ARCH[name]
    tokenizer = build_tiny_tokenizer()  # the same BPE code path for all; a real checkpoint brings its own
    vocab_size = a["vocab_size"] or len(tokenizer)  # full-size models keep CLIP's embedding table size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=a["sample_size"],
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=a["channels"],
            layers_per_block=2,
            cross_attention_dim=a["cross_dim"],
            attention_head_dim=a["heads"],
            use_linear_projection=a["linear_proj"],
            upcast_attention=a["upcast"],
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(a["vae_channels"]),
            up_block_types=("UpDecoderBlock2D",) * len(a["vae_channels"]),
            block_out_channels=a["vae_channels"],
            layers_per_block=1 if name == "tiny" else 2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=a["sample_size"] * 8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=vocab_size,
                hidden_size=a["cross_dim"],
                intermediate_size=a["text_ff"],
                num_hidden_layers=a["text_layers"],
                num_attention_heads=a["text_heads"],
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=a["prediction_type"],
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}
