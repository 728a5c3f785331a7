"""The synthesize job's Ray Data pipeline (nothing to read or decode)::

    from_arrow(work-item blocks, one generation group each)
      -> map_batches(SynthUDF, ActorPool)      actors: generate + mask + encode, written to OUTPUT
      -> iter_batches() in the driver          metadata only: the same UnitCommitter, with SYNTH_TABLES

One row per unit (its items as list columns, its generation groups inside) and batches of one row, so
a unit reaches an actor whole, however Ray Data bundles blocks: a generation group is never split
across calls (what keeps a resumed run's images bit-identical), and the unit is written straight to its
final files. (Ray Data requires a batch size on GPUs; with item rows, batches would straddle units.)
"""

from __future__ import annotations

import pyarrow as pa

from diffseg.lake.units import Unit
from jobs.common.config import Resources
from jobs.common.progress import configure_ray_data
from jobs.common.ray_env import map_actors

_TYPES = {"class_id": pa.int32(), "seed": pa.int64(), "pos": pa.int32(), "unit_rows": pa.int32()}


def generation_blocks(units: list[Unit], batch_size: int, class_ids: dict[str, int]) -> list[pa.Table]:
    """Arrow tables of one row each, one per unit: ``unit_id`` and its work items as list columns (key, group,
    class_name, class_id, seed, pos, unit_rows; see :func:`unit_items`). ``group`` names an item's
    generation group (jobs.synthesize.config.generation_groups: the actor generates a group in one call),
    ``pos`` its key's position in the unit."""
    from jobs.synthesize.config import generation_groups, item_key

    blocks = []
    for unit in units:
        position = {key: i for i, key in enumerate(unit.uris)}
        columns = {"key": [], "group": [], "class_name": [], "seed": []}
        for g, (class_name, seeds) in enumerate(generation_groups(unit, batch_size)):
            columns["key"] += [item_key(class_name, s) for s in seeds]
            columns["group"] += [f"{unit.unit_id}/{g}"] * len(seeds)
            columns["class_name"] += [class_name] * len(seeds)
            columns["seed"] += seeds
        n = len(columns["key"])
        items = {"key": columns["key"], "unit_id": [unit.unit_id] * n, "group": columns["group"],
                 "class_name": columns["class_name"], "class_id": [class_ids[c] for c in columns["class_name"]],
                 "seed": columns["seed"], "pos": [position[k] for k in columns["key"]], "unit_rows": [n] * n}
        blocks.append(pa.table({name: pa.array([values], pa.list_(_TYPES.get(name, pa.string())))
                                for name, values in items.items()}))
    return blocks


def unit_items(batch: dict) -> dict:
    """A batch of unit rows (list columns, see :func:`generation_blocks`) -> one entry per work item."""
    import numpy as np

    return {name: np.concatenate([np.asarray(v) for v in values]) if len(values) else np.array([])
            for name, values in batch.items()}


def build_generation_dataset(units: list[Unit], config, resources: Resources, class_ids: dict[str, int],
                             target=None):
    """The lazy Ray Data pipeline of ``jobs.synthesize`` (`config`: a jobs.synthesize.config.SynthConfig). With
    a write `target` its rows are diffseg.lake.commit.META_SCHEMA metadata, else SYNTH_RESULT_SCHEMA rows."""
    import ray

    from jobs.synthesize.actor import SynthUDF, SynthUdfConfig

    configure_ray_data(config.verbose)  # the runner's Progress lines replace Ray Data's (-v: its own too)
    udf_config = SynthUdfConfig.placed(config, resources, target, steps=config.steps, guidance=config.guidance,
                                       resolution=config.resolution, prompt=config.prompt, pamr=config.pamr)
    ds = ray.data.from_arrow(generation_blocks(units, config.batch_size, class_ids))
    # one unit row per call: one generation per group (the actor groups by "group")
    return map_actors(ds, SynthUDF, (config.model, udf_config), resources, 1)
