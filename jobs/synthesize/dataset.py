"""The synthesize job's Ray Data pipeline (nothing to read or decode)::

    from_arrow(work-item blocks, one generation group each)
      -> map_batches(SynthUDF, ActorPool)      actors: generate + mask + encode (jobs.synthesize.actor)
      -> iter_batches() in the driver          the same UnitWriter, with SYNTH_TABLES
"""

from __future__ import annotations

import pyarrow as pa

from diffseg.lake.units import Unit
from jobs.common.config import Resources
from jobs.common.ray_env import configure_progress, map_actors


def generation_blocks(units: list[Unit], batch_size: int, class_ids: dict[str, int]) -> list[pa.Table]:
    """Arrow tables of work items (key, unit_id, group, class_name, class_id, seed): one block per
    generation group (jobs.synthesize.config.generation_groups), so one actor call generates one group."""
    from jobs.synthesize.config import generation_groups, item_key

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
    """The lazy Ray Data pipeline of ``jobs.synthesize`` (`config`: a jobs.synthesize.config.SynthConfig) whose
    output rows are diffseg.lake.schemas.SYNTH_RESULT_SCHEMA rows."""
    import ray

    from jobs.synthesize.actor import SynthUDF, SynthUdfConfig

    configure_progress()
    udf_config = SynthUdfConfig.placed(config.dtype, resources, steps=config.steps, guidance=config.guidance,
                                       resolution=config.resolution, prompt=config.prompt, pamr=config.pamr)
    ds = ray.data.from_arrow(generation_blocks(units, config.batch_size, class_ids))
    # whole blocks (batch_size None): one generation group per call (the actor also groups by "group")
    return map_actors(ds, SynthUDF, (config.model, udf_config), resources, None)
