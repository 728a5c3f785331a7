"""Ray wiring: connecting to (or starting) Ray, and the Ray Data pipeline of the job.

    from_arrow(URI blocks, each inside one unit)
      -> map_batches(decode_batch)             CPU tasks: read + decode + resize (jobs.udf)
      -> map_batches(SegmentUDF, ActorPool)    actors: model, masks, stats, error rows (jobs.udf)
      -> iter_batches() in the driver          UnitWriter commits each unit when complete (jobs.writer)

and, for ``jobs.synthesize`` (:func:`build_generation_dataset`; nothing to read or decode)::

    from_arrow(work-item blocks, one generation group each)
      -> map_batches(SynthUDF, ActorPool)      actors: generate + mask + encode (jobs.synth_udf)
      -> iter_batches() in the driver          the same UnitWriter, with jobs.synth_tables.SYNTH_TABLES
"""

from __future__ import annotations

import logging
import os

import pyarrow as pa

from jobs.config import JobConfig, Resources
from jobs.udf import SegmentUDF, UdfConfig, decode_batch
from jobs.units import Unit

log = logging.getLogger("jobs.pipeline")


def init_ray(config: JobConfig) -> None:
    """Connects to the cluster (``--address`` or ``$RAY_ADDRESS``, as ``ray job submit`` sets) or starts
    a local runtime with ``--num-cpus`` / ``--object-store-mb``. Does nothing when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"log_to_driver": True}
    if address in (None, "local"):
        if config.num_cpus is not None:
            kwargs["num_cpus"] = config.num_cpus
        if config.object_store_mb is not None:
            kwargs["object_store_memory"] = int(config.object_store_mb) * 1024 * 1024
        kwargs["include_dashboard"] = False
        address = "local"  # a fresh runtime: never join a cluster someone else started on this machine
    ray.init(address=address, **kwargs)


def configure_progress() -> None:
    """Progress bars on a terminal; otherwise Ray Data logs progress every few seconds, which `-q`
    (root logger at WARNING) turns off."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = logging.getLogger().isEnabledFor(logging.INFO)


def cluster_resources() -> tuple[float, float]:
    """(CPUs, GPUs) of the connected cluster."""
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))


def input_blocks(units: list[Unit], block_rows: int) -> list[pa.Table]:
    """Arrow tables of (uri, unit_id) rows: each unit cut into blocks of at most `block_rows` rows, so
    decode tasks are small and a block never mixes units."""
    blocks = []
    for unit in units:
        for start in range(0, len(unit.uris), block_rows):
            uris = list(unit.uris[start : start + block_rows])
            blocks.append(pa.table({"uri": uris, "unit_id": [unit.unit_id] * len(uris)}))
    return blocks


def build_dataset(units: list[Unit], config: JobConfig, resources: Resources, vocab):
    """The lazy Ray Data pipeline whose output rows are jobs.tables.RESULT_SCHEMA rows."""
    import ray
    from ray.data import ActorPoolStrategy

    configure_progress()
    udf_config = UdfConfig(
        methods=tuple(config.methods),
        resolution=config.resolution,
        dtype=config.dtype,
        device=resources.device,
        save_scores=config.save_scores,
        torch_threads=resources.torch_threads,
        method_params=config.method_params,
    )
    ds = ray.data.from_arrow(input_blocks(units, block_rows=max(config.batch_size, 16)))
    ds = ds.map_batches(
        decode_batch,
        batch_size=config.batch_size,
        batch_format="numpy",
        fn_kwargs={"resolution": config.resolution, "max_pixels": config.max_pixels},
        num_cpus=resources.decode_cpus,
        # Reserving the memory a decode task needs bounds how many run at once on a node; it also keeps
        # Ray Data from fusing decoding into the actors (it fuses a task stage into an actor stage with
        # equal resources), so decoding stays on parallel CPU tasks.
        memory=resources.decode_memory,
    )
    return ds.map_batches(
        SegmentUDF,
        fn_constructor_args=(config.model, vocab, udf_config),
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=resources.actors),
        num_cpus=resources.cpus_per_actor,
        num_gpus=resources.gpus_per_actor,
    )  # Ray Data restarts a killed actor and retries its in-flight batches (max_restarts=-1 by default)


def generation_blocks(units: list[Unit], batch_size: int, class_ids: dict[str, int]) -> list[pa.Table]:
    """Arrow tables of work items (key, unit_id, group, class_name, class_id, seed): one block per
    generation group (jobs.synth_config.generation_groups), so one actor call generates one group."""
    from jobs.synth_config import generation_groups, item_key

    blocks = []
    for unit in units:
        for g, (class_name, seeds) in enumerate(generation_groups(unit, batch_size)):
            n = len(seeds)
            blocks.append(pa.table({
                "key": [item_key(class_name, s) for s in seeds],
                "unit_id": [unit.unit_id] * n,
                "group": [f"{unit.unit_id}/{g}"] * n,
                "class_name": [class_name] * n,
                "class_id": pa.array([class_ids[class_name]] * n, pa.int32()),
                "seed": pa.array(seeds, pa.int64()),
            }))
    return blocks


def build_generation_dataset(units: list[Unit], config, resources: Resources, class_ids: dict[str, int]):
    """The lazy Ray Data pipeline of ``jobs.synthesize`` (`config`: a jobs.synth_config.SynthConfig) whose
    output rows are jobs.synth_tables.SYNTH_RESULT_SCHEMA rows."""
    import ray
    from ray.data import ActorPoolStrategy

    from jobs.synth_udf import SynthUDF, SynthUdfConfig

    configure_progress()
    udf_config = SynthUdfConfig(
        steps=config.steps,
        guidance=config.guidance,
        resolution=config.resolution,
        prompt=config.prompt,
        pamr=config.pamr,
        dtype=config.dtype,
        device=resources.device,
        torch_threads=resources.torch_threads,
    )
    ds = ray.data.from_arrow(generation_blocks(units, config.batch_size, class_ids))
    return ds.map_batches(
        SynthUDF,
        fn_constructor_args=(config.model, udf_config),
        batch_size=None,  # whole blocks: one generation group per call (the actor also groups by "group")
        batch_format="numpy",
        compute=ActorPoolStrategy(size=resources.actors),
        num_cpus=resources.cpus_per_actor,
        num_gpus=resources.gpus_per_actor,
    )
