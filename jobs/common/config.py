"""The job's configuration (one frozen dataclass) and how actor resources are sized from the cluster."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from diffseg.codecs.images import DEFAULT_MAX_PIXELS


class ConfigError(ValueError):
    """An option value the job cannot run with (the message names the option and the value)."""


def check_options(checks) -> None:
    """Raises ConfigError for the first ``(ok, option, value, rule)`` whose ``ok`` is false."""
    for ok, option, value, rule in checks:
        if not ok:
            raise ConfigError(f"{option} {value!r}: must be {rule}")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The options every job has: the run, the actor pool and Ray (a job's config derives from it and
    adds its own fields; a job may change a default, e.g. ``batch_size``)."""

    batch_size: int = 8  # items per model call (per actor)
    actors: int | None = None  # None: one per GPU (GPU cluster) or 1 (CPU-only)
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU)
    cpus_per_actor: float | None = None  # None: 1 with GPUs; on CPU-only a share that leaves CPUs for other tasks
    dtype: str = "auto"  # auto = fp16 on GPU, fp32 on CPU; or fp32/fp16/bf16
    run_id: str = "default"  # names the run inside OUTPUT; a new id starts a new run (and retries errors)
    unit_size: int = 256  # items per work unit (one Parquet file per table and unit)
    max_error_fraction: float = 0.05  # exit 3 when more of this invocation's items fail
    address: str | None = None  # Ray address; None: $RAY_ADDRESS (as `ray job submit` sets) or a local runtime
    num_cpus: int | None = None  # CPUs of a local Ray runtime started by the job (ignored on a cluster)
    object_store_mb: int | None = None  # object store of a local Ray runtime started by the job

    def to_dict(self) -> dict:
        """The config as plain values: the job's own options first, then these."""
        d = asdict(self)
        shared = set(RunOptions.__dataclass_fields__)
        return {**{k: v for k, v in d.items() if k not in shared}, **{k: v for k, v in d.items() if k in shared}}

    def checks(self) -> list[tuple]:
        """``(ok, option, value, rule)`` of these options (see check_options)."""
        return [
            (self.batch_size >= 1, "--batch-size", self.batch_size, "at least 1"),
            (self.actors is None or self.actors >= 1, "--actors", self.actors, "at least 1"),
            (self.gpus_per_actor is None or self.gpus_per_actor >= 0, "--gpus-per-actor", self.gpus_per_actor, ">= 0"),
            (self.cpus_per_actor is None or self.cpus_per_actor > 0, "--cpus-per-actor", self.cpus_per_actor, "> 0"),
            (self.dtype in ("auto", "fp32", "fp16", "bf16"), "--dtype", self.dtype, "one of auto, fp32, fp16, bf16"),
            (self.unit_size >= 1, "--unit-size", self.unit_size, "at least 1"),
            (0.0 <= self.max_error_fraction <= 1.0, "--max-error-fraction", self.max_error_fraction, "in [0, 1]"),
        ]


@dataclass(frozen=True)
class JobConfig(RunOptions):
    """Everything `python -m jobs.segment` was asked to do (written, resolved, into manifest.json)."""

    input: str  # folder/prefix, glob or manifest (.txt/.parquet) of image URIs
    output: str  # prefix that holds masks/, stats/, errors/, manifest.json
    vocab: str  # class file path/URL, or "person, car, road"
    model: str  # "tiny", "sd15-random", a folder or an fsspec URL of a diffusers SD checkpoint
    methods: tuple[str, ...] = ("diffsegmenter",)  # one U-Net forward serves every method listed
    resolution: int = 512  # model input side (square)
    limit: int | None = None  # process at most this many of the not-yet-done images (smoke tests)
    save_scores: bool = False  # also store per-class scores (uint8) in masks.scores_png
    method_params: Mapping[str, Mapping] = field(default_factory=dict)  # {method: {field: value}} over the
    # methods' defaults (e.g. a fitted tau: diffseg.eval.fitted.background_values)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images become decode errors (checked from the header)

    def __post_init__(self):
        check_options([
            (self.resolution >= 8, "--resolution", self.resolution, "at least 8"),
            (self.limit is None or self.limit >= 1, "--limit", self.limit, "at least 1"),
            (self.max_pixels >= 1, "--max-pixels", self.max_pixels, "at least 1"),
            (bool(self.methods), "--method", self.methods, "at least one method"),
            *self.checks(),
        ])

    def to_dict(self) -> dict:
        return {**super().to_dict(), "methods": list(self.methods)}


@dataclass(frozen=True)
class Resources:
    """How the actor pool is sized, resolved against the cluster the job runs on."""

    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    torch_threads: int  # intra-op threads per actor (its CPU share, at least 1)
    decode_cpus: float  # CPUs per read/decode task
    decode_memory: int  # bytes reserved per read/decode task (Ray's logical "memory" resource)
    device: str  # "cuda" or "cpu"
    cluster_cpus: float
    cluster_gpus: float


def decode_memory_bytes(config: RunOptions) -> int:
    """Peak memory of one decode task: the largest accepted image decoded (RGB) plus a converted copy,
    and the batch of resized model inputs it returns (default settings: about 400 MB). A config without
    ``max_pixels`` (a job that decodes no input images) counts only the batch."""
    return 2 * 3 * getattr(config, "max_pixels", 0) + 3 * config.batch_size * config.resolution**2 + (64 << 20)


def resolve_resources(config: RunOptions, cluster_cpus: float, cluster_gpus: float) -> Resources:
    """Sizes the actor pool so that reading always has a CPU left (no deadlock on small machines).

    `config`: a job's config (RunOptions with a ``resolution``: JobConfig, SynthConfig).

    GPU cluster (or ``--gpus-per-actor`` > 0): one actor per GPU share, 1 CPU each unless told.
    CPU-only: one actor by default; actors share what is left after reserving a quarter of the CPUs
    (at least 1) for the read/decode tasks, so on 2 cores one actor gets 1 CPU and two get 0.5 each.
    Raises ConfigError when the actors would take every CPU: read tasks would never be scheduled and
    the job would hang silently.
    """
    decode_cpus = 1.0
    gpus = config.gpus_per_actor if config.gpus_per_actor is not None else (1.0 if cluster_gpus >= 1 else 0.0)
    if gpus > 0:
        actors = config.actors or max(1, int(cluster_gpus // gpus) if cluster_gpus else 1)
        cpus = config.cpus_per_actor if config.cpus_per_actor is not None else 1.0
        device = "cuda"
    else:
        actors = config.actors or 1
        reserve = max(decode_cpus, math.ceil(cluster_cpus * 0.25))
        share = (cluster_cpus - reserve) / actors
        cpus = config.cpus_per_actor if config.cpus_per_actor is not None else max(0.1, math.floor(share * 100) / 100)
        device = "cpu"
    if cluster_cpus and gpus == 0 and actors * cpus + decode_cpus > cluster_cpus + 1e-9:
        raise ConfigError(
            f"{actors} actor(s) x {cpus:g} CPU(s) leave less than {decode_cpus:g} of the cluster's "
            f"{cluster_cpus:g} CPUs for the pipeline's CPU tasks (reading inputs): the read tasks would never run "
            f"and the job would hang. "
            f"Use fewer --actors or a smaller --cpus-per-actor (fractions are fine, e.g. 0.5)"
        )
    return Resources(
        actors=actors,
        gpus_per_actor=gpus,
        cpus_per_actor=cpus,
        torch_threads=max(1, int(cpus)),
        decode_cpus=decode_cpus,
        decode_memory=decode_memory_bytes(config),
        device=device,
        cluster_cpus=cluster_cpus,
        cluster_gpus=cluster_gpus,
    )
