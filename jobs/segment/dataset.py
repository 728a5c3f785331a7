"""The segment job's Ray Data pipeline::

    from_arrow(URI blocks, one per unit)
      -> map_batches(decode_batch)             CPU tasks: read + decode + resize (jobs.segment.actor)
      -> map_batches(SegmentUDF, ActorPool)    actors: model, masks, stats, error rows, written to OUTPUT
      -> iter_batches() in the driver          metadata only: UnitCommitter commits units (diffseg.lake.writer)

One block per unit, so a unit usually reaches an actor as one batch and its rows go straight to the
unit's final files; the actor runs the model on runs of ``--batch-size`` images inside it.
"""

from __future__ import annotations

import pyarrow as pa

from diffseg.lake.units import Unit
from jobs.common.config import JobConfig, Resources
from jobs.common.progress import configure_ray_data
from jobs.common.ray_env import TASK_RETRIES, map_actors
from jobs.segment.actor import SegmentUDF, UdfConfig, decode_batch


def input_blocks(units: list[Unit]) -> list[pa.Table]:
    """Arrow tables of (uri, unit_id, pos, unit_rows) rows, one per unit (``pos``: the URI's position in
    the unit, ``unit_rows``: the unit's size; what the actor's write step needs)."""
    return [pa.table({"uri": list(unit.uris), "unit_id": [unit.unit_id] * len(unit.uris),
                      "pos": pa.array(range(len(unit.uris)), pa.int32()),
                      "unit_rows": pa.array([len(unit.uris)] * len(unit.uris), pa.int32())}) for unit in units]


def build_dataset(units: list[Unit], config: JobConfig, resources: Resources, vocab, target=None,
                  actor_class=SegmentUDF):
    """The lazy Ray Data pipeline. With a write `target` (diffseg.lake.commit.WriteTarget) its rows are
    diffseg.lake.commit.META_SCHEMA metadata (the actors wrote the tables); without one they are
    diffseg.lake.schemas.RESULT_SCHEMA rows. `actor_class`: SegmentUDF or a stand-in (the benchmark's
    null model, jobs.bench.null_model)."""
    import ray

    configure_ray_data(config.verbose)  # the runner's Progress lines replace Ray Data's (-v: its own too)
    udf_config = UdfConfig.placed(config, resources, target, methods=tuple(config.methods),
                                  resolution=config.resolution, save_scores=config.save_scores,
                                  method_params=config.method_params, recipe=config.recipe_kwargs())
    if units and units[0].source:  # containers: one read task per shard or row group, read front to back
        from jobs.segment.containers import container_blocks, read_container

        ds = ray.data.from_arrow(container_blocks(units)).map_batches(
            read_container, batch_size=1, batch_format="numpy",
            fn_kwargs={"resolution": config.resolution, "max_pixels": config.max_pixels,
                       "max_read_bytes": config.max_read_bytes, "read_timeout": config.read_timeout,
                       "chunk": config.unit_size},
            num_cpus=resources.decode_cpus, memory=resources.decode_memory, max_retries=TASK_RETRIES)
        return map_actors(ds, actor_class, (config.model, vocab, udf_config), resources, config.unit_size)
    ds = ray.data.from_arrow(input_blocks(units))
    ds = ds.map_batches(
        decode_batch,
        batch_size=config.batch_size,
        batch_format="numpy",
        fn_kwargs={"resolution": config.resolution, "max_pixels": config.max_pixels,
                   "max_read_bytes": config.max_read_bytes, "read_timeout": config.read_timeout},
        num_cpus=resources.decode_cpus,
        # Reserving the memory a decode task needs bounds how many run at once on a node; it also keeps
        # Ray Data from fusing decoding into the actors (it fuses a task stage into an actor stage with
        # equal resources), so decoding stays on parallel CPU tasks.
        memory=resources.decode_memory,
        max_retries=TASK_RETRIES,  # a task that dies (its worker killed) is retried this often, not for ever
    )
    # a batch of a unit's size: one unit per call (Ray Data also requires a batch size with GPUs)
    return map_actors(ds, actor_class, (config.model, vocab, udf_config), resources, config.unit_size)
