"""How the model runs: one frozen :class:`Runtime` decides dtype, memory format, TF32 and compilation.

The job's actors (jobs.common.actor) and ``python -m jobs.bench`` both build their pipeline through
:func:`load_runtime_pipeline`, so the job runs what the benchmark measures (DESIGN.md "Performance
principles"). Defaults, by device:

============== ========================== =======================
option          CUDA                        CPU
============== ========================== =======================
dtype           bf16 (``"auto"``)           fp32 (``"auto"``)
channels_last   on (U-Net and VAE)          off
TF32            off (``tf32=True``: on)     never touched
compile         off (``--compile``)         off
============== ========================== =======================

TF32 is off by default. With a bf16 model the U-Net and the VAE never use it; it would change only the
methods' fp32 matrix products: exact for the self-attention row chunks' logits (bf16/fp16 queries and
keys fit TF32's 10 mantissa bits), but SeeDiff's fp32 products of probabilities would be rounded to
about fp16's precision, and fp16 propagation flipped 0.1-0.4 % of the labels (docs/benchmarks.md
"Propagation precision"). With an fp32 model, fp32 was asked for. ``tf32=True`` (``--tf32`` in the
benchmark) sets cuBLAS matmuls and cuDNN convolutions to TF32, process-wide; off sets both to IEEE fp32.
Not measured on a GPU.

``compile``: torch.compile of the U-Net's blocks that do not depend on what is captured (every
``ResnetBlock2D`` and every transformer ``FeedForward``, most of the U-Net's FLOPs): the attention
layers, whose processors each Segmenter swaps for its methods, stay eager. So one model compiles once,
whatever the methods: the benchmark's floor and every configuration, or a job's Segmenter, reuse the
same graphs (blocks of one class and shape share one graph). Shapes are static: each batch size
compiles its own graphs once (a unit's smaller last batch too). Not measured on a GPU yet
(docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffseg.model import Pipeline, load_pipeline, resolve_device, resolve_dtype

__all__ = ["Runtime", "apply_runtime", "choose_runtime", "compile_blocks", "load_runtime_pipeline"]

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Runtime:
    """Where and how the model runs (build it with :func:`choose_runtime`, which fills the defaults)."""

    device: torch.device  # cuda when available (or asked for), else cpu
    dtype: torch.dtype  # weights and activations of U-Net, VAE and text encoder: bf16 on CUDA, fp32 on CPU
    channels_last: bool  # U-Net and VAE in channels_last memory format: on CUDA
    tf32: bool  # TF32 for fp32 matmuls and convolutions (CUDA only): off unless asked (module docstring)
    compile: bool = False  # torch.compile of the capture-independent U-Net blocks (compile_blocks)

    @property
    def dtype_name(self) -> str:
        """"bf16", "fp16" or "fp32" (the --dtype spelling)."""
        return _DTYPE_NAMES.get(self.dtype, str(self.dtype))

    def describe(self) -> str:
        """One line for logs and benchmark headers, e.g. ``cuda bf16 channels_last tf32``."""
        flags = [name for name, on in (("channels_last", self.channels_last), ("tf32", self.tf32),
                                        ("compile", self.compile)) if on]
        return " ".join([str(self.device), self.dtype_name, *flags])


def choose_runtime(device: str | torch.device | None = None, dtype: str | torch.dtype = "auto",
                   channels_last: bool | None = None, tf32: bool | None = None, compile: bool = False) -> Runtime:
    """The Runtime for `device` (None/"auto": CUDA when available) and `dtype` ("auto", "fp32", "fp16",
    "bf16" or a torch dtype; "auto" is bf16 on CUDA, fp32 on CPU); None for `channels_last` or `tf32`
    takes the device's default (module docstring). Raises ValueError naming a dtype it does not know."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    cuda = dev.type == "cuda"
    if tf32 and not cuda:
        raise ValueError(f"tf32=True needs a CUDA device, got device {str(dev)!r}; leave tf32 unset on CPU")
    return Runtime(
        device=dev,
        dtype=dt,
        channels_last=cuda if channels_last is None else bool(channels_last),
        tf32=bool(tf32),
        compile=bool(compile),
    )


def set_tf32(enabled: bool) -> None:
    """Process-wide: TF32 for fp32 CUDA matmuls (cuBLAS) and convolutions (cuDNN), on or off."""
    mode = "tf32" if enabled else "ieee"
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the new API (mixing it with allow_tf32 raises)
        matmul.fp32_precision = mode
        conv.fp32_precision = mode
    else:  # pragma: no cover - older torch
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def compile_blocks(unet: torch.nn.Module, **compile_options) -> int:
    """torch.compile, in place, every ``ResnetBlock2D`` and ``FeedForward`` of `unet` (the blocks no
    capture changes); attention layers stay eager. Returns how many modules were wrapped.
    `compile_options` go to torch.compile (e.g. ``backend``, ``fullgraph``; default ``dynamic=False``)."""
    import torch._dynamo as dynamo
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D

    # static shapes: one graph per block shape (about 20 on SD 1.5) and batch size, and every block of a
    # class shares one frame, so its limit must hold them all (past it, dynamo would run eager silently)
    limit = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo.config, limit, max(getattr(dynamo.config, limit), 256))
    if hasattr(dynamo.config, "accumulated_recompile_limit"):
        dynamo.config.accumulated_recompile_limit = max(dynamo.config.accumulated_recompile_limit, 1024)
    blocks = [m for m in unet.modules() if isinstance(m, (ResnetBlock2D, FeedForward))]
    options = {"dynamic": False, **compile_options}
    for block in blocks:  # forward only: hooks on a block (the capture's feature hooks) stay eager
        block.forward = torch.compile(block.forward, **options)
    return len(blocks)


def apply_runtime(pipe: Pipeline, runtime: Runtime, **compile_options) -> Pipeline:
    """Applies `runtime` to a pipeline loaded in its device and dtype, in place: TF32 (CUDA, process
    wide), channels_last for U-Net and VAE, :func:`compile_blocks` with `compile_options`. Returns `pipe`.
    Raises ValueError when `pipe` sits on another device or dtype than `runtime` names."""
    if pipe.device != runtime.device or pipe.dtype != runtime.dtype:
        raise ValueError(f"pipeline on {pipe.device} in {pipe.dtype} does not match the runtime "
                         f"({runtime.describe()}): load it with load_runtime_pipeline(uri, runtime)")
    if runtime.device.type == "cuda":
        set_tf32(runtime.tf32)
    if runtime.channels_last:
        for module in (pipe.unet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    if runtime.compile:
        compile_blocks(pipe.unet, **compile_options)
    return pipe


def load_runtime_pipeline(uri: str, runtime: Runtime, **load_options) -> Pipeline:
    """``load_pipeline(uri)`` on the runtime's device in its dtype, then :func:`apply_runtime`.
    `load_options` go to load_pipeline (``allow_pickle``, ``cache_dir``)."""
    pipe = load_pipeline(uri, dtype=runtime.dtype, device=runtime.device, **load_options)
    return apply_runtime(pipe, runtime)
