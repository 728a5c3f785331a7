"""The job's configuration (one frozen dataclass) and how actor resources are sized from the cluster."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from diffseg.argtypes import recipe_kwargs
from diffseg.codecs.images import DEFAULT_MAX_PIXELS
from diffseg.inputs import READ_MAX_BYTES, READ_TIMEOUT_S


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
    dtype: str = "auto"  # auto = bf16 on GPU, fp32 on CPU (diffseg.runtime); or fp32/fp16/bf16
    compile: bool = False  # torch.compile the U-Net's blocks in each actor (--compile)
    run_id: str = "default"  # names the run inside OUTPUT; a new id starts a new run (and retries errors)
    unit_size: int = 256  # items per work unit (one Parquet file per table and unit)
    max_error_fraction: float = 0.05  # exit 3 when more of this invocation's items fail
    address: str | None = None  # Ray address; None: $RAY_ADDRESS (as `ray job submit` sets) or a local runtime
    num_cpus: int | None = None  # CPUs of a local Ray runtime started by the job (ignored on a cluster)
    object_store_mb: int | None = None  # object store of a local Ray runtime started by the job
    # cluster options (jobs.common.cluster_options)
    device: str | None = None  # None: cuda when actors hold GPUs, else cpu; "cpu" with GPUs = logical GPUs (tests)
    shared_output: bool = False  # a local OUTPUT path that every node sees (NFS): allowed on a multi-node cluster
    wait_for_nodes: bool = False  # a request no node can hold waits for nodes instead of exiting 2
    break_lease: bool = False  # take over the run's lease although its holder's heartbeat is fresh
    retry_errors: bool = False  # retry the run's final error rows too (retryable ones are always retried)
    lease_stale_s: float = 120.0  # a lease whose heartbeat (every 30 s) is older than this is taken over
    grace_s: float = 25.0  # after SIGTERM/SIGINT: commit what is whole and exit within this (Kubernetes: 30 s)
    placement_warn_s: float = 60.0  # log when pool actors have waited this long for a node
    verbose: bool = False  # also Ray Data's own progress bars/lines and execution banners (-v)

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
            (self.device in (None, "cpu", "cuda"), "--device", self.device, "cpu or cuda"),
            (self.lease_stale_s > 0, "--lease-stale-minutes", self.lease_stale_s / 60, "> 0"),
            (self.grace_s > 0, "--grace-seconds", self.grace_s, "> 0"),
        ]


@dataclass(frozen=True)
class JobConfig(RunOptions):
    """Everything `python -m jobs.segment` was asked to do (written, resolved, into manifest.json)."""

    input: str  # folder/prefix, glob or manifest (.txt/.parquet) of image URIs; shards, Parquet rows, an inventory
    output: str  # prefix that holds masks/, stats/, errors/, manifest.json
    vocab: str  # class file path/URL, or "person, car, road"
    model: str  # "tiny", "sd15-random", a folder or an fsspec URL of a diffusers SD checkpoint
    methods: tuple[str, ...] = ("diffsegmenter",)  # one U-Net forward serves every method listed
    input_format: str = "auto"  # FORM[:options] of INPUT (diffseg.inputs.parse_format); auto: detected
    resolution: int = 512  # model input side (square)
    limit: int | None = None  # process at most this many of the not-yet-done images (smoke tests)
    save_scores: bool = False  # also store per-class scores (uint8) in masks.scores_png
    method_params: Mapping[str, Mapping] = field(default_factory=dict)  # {method: {field: value}} over the
    # methods' defaults (e.g. a fitted tau: diffseg.eval.fitted.background_values)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images become decode errors (checked from the header)
    max_read_bytes: int = READ_MAX_BYTES  # larger input files become read errors, unread
    read_timeout: float = READ_TIMEOUT_S  # seconds one input may take to read (retries included)
    # the recipe (diffseg.segmenter.RECIPES); None: the methods' own (each paper's alone, DiffSegmenter's shared)
    context: str = "joint"  # "joint": one prompt for the vocabulary; "per_class": one per class (the paper's)
    timesteps: tuple[int, ...] | None = None  # one U-Net forward per timestep, maps averaged
    template: str | None = None  # "{classes}" (joint) / "{class}" (per_class) replaced by the class(es)
    separator: str | None = None  # between classes in a joint prompt
    class_token_weight: float | None = None  # Compel up-weighting of class tokens (1.21 per_class, 1.0 joint)

    def __post_init__(self):
        check_options([
            (self.context in ("joint", "per_class"), "--context", self.context, "joint or per_class"),
            (self.timesteps is None or (len(self.timesteps) > 0 and min(self.timesteps) >= 0), "--timesteps",
             self.timesteps, "whole numbers >= 0"),
            (self.resolution >= 8, "--resolution", self.resolution, "at least 8"),
            (self.limit is None or self.limit >= 1, "--limit", self.limit, "at least 1"),
            (self.max_pixels >= 1, "--max-pixels", self.max_pixels, "at least 1"),
            (self.max_read_bytes >= 1, "--max-read-bytes", self.max_read_bytes, "at least 1"),
            (self.read_timeout > 0, "--read-timeout", self.read_timeout, "> 0 seconds"),
            (bool(self.methods), "--method", self.methods, "at least one method"),
            *self.checks(),
        ])

    def to_dict(self) -> dict:
        timesteps = list(self.timesteps) if self.timesteps is not None else None
        return {**super().to_dict(), "methods": list(self.methods), "timesteps": timesteps}

    def recipe_kwargs(self) -> dict:
        """The Segmenter keyword options of the recipe fields given (the others: the methods' recipe)."""
        return recipe_kwargs(self.context, self.timesteps, self.template, self.separator, self.class_token_weight)

    def recipe_changes(self) -> dict:
        """The recipe options given over the methods' own, JSON-ready (what the run identity records)."""
        changes = {k: list(v) if isinstance(v, tuple) else v for k, v in self.recipe_kwargs().items()}
        if changes.get("context") == "joint":  # the default
            del changes["context"]
        return changes


@dataclass(frozen=True)
class Node:
    """What one alive Ray node offers (its total logical resources)."""

    node_id: str
    cpus: float
    gpus: float = 0.0
    memory: int = 0  # bytes (Ray's logical "memory" resource)

    def describe(self) -> str:
        return f"{self.cpus:g} CPUs, {self.gpus:g} GPUs, {self.memory / 2**30:.1f} GiB"


@dataclass(frozen=True)
class Resources:
    """How the actor pool is sized, resolved against the nodes of the cluster the job runs on."""

    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    torch_threads: int  # intra-op threads per actor (its CPU share, at least 1)
    decode_cpus: float  # CPUs per read/decode task
    decode_memory: int  # bytes reserved per read/decode task (Ray's logical "memory" resource)
    device: str  # "cuda" or "cpu" (where the model runs; "cpu" with GPUs: logical GPUs, --device cpu)
    cluster_cpus: float
    cluster_gpus: float
    nodes: int = 1  # alive nodes when the pool was sized
    capacity: int = 1  # actors the alive nodes can hold now (what a request above it waits for)
    counter: object = None  # the run's progress counter (a Ray actor handle: jobs.common.progress.BatchCounter)


def decode_memory_bytes(config: RunOptions) -> int:
    """Peak memory of one decode task: the largest accepted image decoded (RGB) plus a converted copy,
    and the unit of resized model inputs it returns (one task decodes one unit; default settings: about
    600 MB). A config without ``max_pixels`` (a job that decodes no input images) counts only the unit."""
    return 2 * 3 * getattr(config, "max_pixels", 0) + 3 * config.unit_size * config.resolution**2 + (64 << 20)


def read_reserve(node_cpus: float, decode_cpus: float = 1.0) -> float:
    """CPUs of a node kept for read/decode tasks on a CPU-only cluster: a quarter, at least one task's."""
    return max(decode_cpus, math.ceil(node_cpus * 0.25))


def resolve_resources(config: RunOptions, nodes: list[Node]) -> Resources:
    """Sizes the actor pool from what ONE node holds (never cluster totals: an actor cannot span nodes).

    `config`: a job's config (RunOptions with a ``resolution``). `nodes`: the alive nodes. With
    ``--wait-for-nodes`` (an autoscaler or an operator adds nodes) a request no node holds now is kept.

    GPU nodes (or ``--gpus-per-actor`` > 0): one actor per GPU share, 1 CPU each unless told; by default
    as many actors as the nodes hold. CPU-only: each node keeps a quarter of its CPUs (at least 1) for
    the read/decode tasks; an actor takes the rest of the largest node (``--actors N`` on one node: a
    share of it), one actor per node that can hold one. Raises ConfigError when no node can hold one
    actor (the message names the request, the largest node and the option to change), or when the
    actors would take every CPU of a CPU-only cluster: read tasks would never run and the job would hang.
    """
    decode_cpus = 1.0
    hosts = [n for n in nodes if n.cpus > 0 or n.gpus > 0] or [Node("none", 0.0)]
    cluster_cpus, cluster_gpus = sum(n.cpus for n in nodes), sum(n.gpus for n in nodes)
    biggest = max(hosts, key=lambda n: (n.gpus, n.cpus))
    gpus = config.gpus_per_actor if config.gpus_per_actor is not None else (1.0 if biggest.gpus >= 1 else 0.0)
    if gpus > 0:
        cpus = config.cpus_per_actor if config.cpus_per_actor is not None else 1.0
        capacity = sum(min(int(n.gpus // gpus + 1e-9), int(n.cpus // cpus + 1e-9)) for n in hosts)
        device = config.device or "cuda"
        option = "--gpus-per-actor / --cpus-per-actor"
    else:
        biggest = max(hosts, key=lambda n: n.cpus)
        per_node = math.ceil((config.actors or 1) / len(hosts))
        share = (biggest.cpus - read_reserve(biggest.cpus, decode_cpus)) / per_node
        cpus = config.cpus_per_actor if config.cpus_per_actor is not None else max(0.1, math.floor(share * 100) / 100)
        capacity = sum(max(0, int((n.cpus - read_reserve(n.cpus, decode_cpus)) / cpus + 1e-9)) for n in hosts)
        device = "cpu"
        option = "--cpus-per-actor (fractions are fine, e.g. 0.5)"
        if config.device == "cuda":
            raise ConfigError("--device cuda: the actors hold no GPU (the cluster has none and --gpus-per-actor is "
                              "0 or unset); use --gpus-per-actor 1 on a GPU cluster, or --device cpu")
    actors = config.actors or max(1, capacity)
    if capacity < 1 and not config.wait_for_nodes:
        raise ConfigError(
            f"no node can hold one actor of {cpus:g} CPU(s) and {gpus:g} GPU(s)"
            + (" plus a CPU for reading inputs" if gpus == 0 else "")
            + f": the largest of the {len(nodes)} alive node(s) has {biggest.describe()}. Change {option}, add "
            f"nodes, or pass --wait-for-nodes when an autoscaler adds them"
        )
    if gpus == 0 and capacity >= 1 and actors > capacity and not config.wait_for_nodes:
        raise ConfigError(
            f"{actors} actor(s) x {cpus:g} CPU(s) leave less than {decode_cpus:g} CPU per node (of "
            f"{biggest.describe()}) for the pipeline's CPU tasks (reading inputs): the read tasks would never run "
            f"and the job would hang. Use fewer --actors or a smaller --cpus-per-actor (fractions are fine, e.g. 0.5)"
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
        nodes=len(nodes),
        capacity=capacity,
    )
