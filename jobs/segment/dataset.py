"""The segment job's Ray Data pipeline::

    from_arrow(URI blocks, each inside one unit)
      -> map_batches(decode_batch)             CPU tasks: read + decode + resize (jobs.segment.actor)
      -> map_batches(SegmentUDF, ActorPool)    actors: model, masks, stats, error rows (jobs.segment.actor)
      -> iter_batches() in the driver          UnitWriter commits each unit when complete (diffseg.lake.writer)
"""

from __future__ import annotations

import pyarrow as pa

from diffseg.lake.units import Unit
from jobs.common.config import JobConfig, Resources
from jobs.common.ray_env import configure_progress, map_actors
from jobs.segment.actor import SegmentUDF, UdfConfig, decode_batch


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
    """The lazy Ray Data pipeline whose output rows are diffseg.lake.schemas.RESULT_SCHEMA rows."""
    import ray

    configure_progress()
    udf_config = UdfConfig.placed(config.dtype, resources, methods=tuple(config.methods), resolution=config.resolution,
                                  save_scores=config.save_scores, method_params=config.method_params)
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
    return map_actors(ds, SegmentUDF, (config.model, vocab, udf_config), resources, config.batch_size)
