"""The segment job's Ray Data pipeline::

    read_datasource(PlanSource)                one read task per unit of the stored plan (diffseg.lake.plan):
                                               one ranged read of its plan file, one block of its URIs
      -> map_batches(decode_batch)             CPU tasks: read + decode + resize (jobs.segment.actor)
      -> map_batches(SegmentUDF, ActorPool)    device actors: model, methods, argmax; compact outcomes
      -> map_batches(encode_and_write)         CPU tasks: masks, stats, error rows, written to OUTPUT
      -> iter_batches() in the driver          metadata only: UnitCommitter commits units (diffseg.lake.writer)

Stages by resource (jobs.common.actor): the actors holding the devices do device work only; encoding and
writing run on CPU tasks wherever the cluster has CPUs, so the device never waits for them.

One block per unit, so a unit reaches an actor as one batch and its rows go straight to the unit's final
files (no compaction): the input is one block per unit, Ray Data's block target is raised so that a
decoded unit stays one block (:func:`block_target_bytes`), and the actor returns one row per unit. The
actor runs the model on runs of ``--batch-size`` images inside its batch.

The driver holds no URI: the plan is stored under OUTPUT, and each read task (Ray Data puts one small
object per task: its plan file, byte range and size) reads its unit's rows itself, so the driver's cost is
per unit (measured: jobs.bench.plan). ``override_num_blocks`` is the number of units, so Ray Data never
splits a unit's block to reach a parallelism of its own. The read tasks are not fused with decoding (Ray
Data does not fuse a read into a ``map_batches`` with a batch size), so they reserve :data:`READ_CPUS` only. Container units and units held in memory
(diffseg.lake.plan.UnitList) still go in as blocks (:func:`input_blocks`, jobs.segment.containers).
"""

from __future__ import annotations

import pyarrow as pa

from diffseg.lake.plan import StoredPlan, read_unit_blocks
from diffseg.lake.units import Unit
from jobs.common.config import JobConfig, Resources
from jobs.common.progress import configure_ray_data
from jobs.common.ray_env import TASK_RETRIES, accept_remote_args, map_actors
from jobs.segment.actor import SegmentUDF, UdfConfig, decode_batch

BLOCK_SLACK = 1.25  # a block target this much above a decoded unit's bytes (row overhead, URIs, columns)
READ_CPUS = 0.25  # what a read task of the plan reserves (one ranged GET of a unit's URIs)


def block_target_bytes(unit_size: int, resolution: int, current: int) -> int:
    """Ray Data's target block size for the pipeline: at least `current` (its default, 128 MiB) and large
    enough for a decoded unit (``unit_size`` images of ``resolution^2 x 3`` bytes, times
    :data:`BLOCK_SLACK`), so a decode task's output is one block and the actor gets the unit in one batch
    (a unit in two blocks can meet another unit's block in one batch: two parts, a compaction)."""
    return max(int(current), int(BLOCK_SLACK * unit_size * 3 * resolution**2))


def input_blocks(units: list[Unit]) -> list[pa.Table]:
    """Arrow tables of (uri, unit_id, pos, unit_rows) rows, one per unit (``pos``: the URI's position in
    the unit, ``unit_rows``: the unit's size; what the actor's write step needs)."""
    return [pa.table({"uri": list(unit.uris), "unit_id": [unit.unit_id] * len(unit.uris),
                      "pos": pa.array(range(len(unit.uris)), pa.int32()),
                      "unit_rows": pa.array([len(unit.uris)] * len(unit.uris), pa.int32())}) for unit in units]


def plan_source(plan: StoredPlan):
    """A ray.data Datasource of `plan`: one read task per unit, in plan order (the spread order)."""
    import functools

    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class PlanSource(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_name(self) -> str:
            return "ReadPlan"

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            tasks = []
            for i in range(len(plan)):
                rel, offset, length = plan.where(i)
                meta = BlockMetadata(num_rows=int(plan.rows[i]), size_bytes=None, input_files=None, exec_stats=None)
                # read_unit_blocks lives in diffseg.lake.plan: a read task imports it, not this module (whose
                # imports, the actor's, take ~250 MB per worker); pickled by reference, ~400 bytes a task
                tasks.append(ReadTask(functools.partial(read_unit_blocks, plan.output, rel, offset, length), meta))
            return tasks

    return PlanSource()


def build_dataset(units, config: JobConfig, resources: Resources, vocab, target=None,
                  actor_class=SegmentUDF, encode_stage: bool = True):
    """The lazy Ray Data pipeline. With a write `target` (diffseg.lake.commit.WriteTarget) its rows are
    diffseg.lake.commit.META_SCHEMA metadata (the encode tasks wrote the tables); without one they are
    diffseg.lake.schemas.RESULT_SCHEMA rows. `actor_class`: SegmentUDF or a stand-in (the benchmark's
    null model, jobs.bench.null_model). `encode_stage`: encoding and writing on CPU tasks after the actors
    (the job); False: in the actors (jobs.bench.pipeline --in-actor compares). `units`: a
    diffseg.lake.plan.StoredPlan (loose files), or a list of Units (containers, tools)."""
    import ray

    configure_ray_data(config.verbose)  # the runner's Progress lines replace Ray Data's (-v: its own too)
    accept_remote_args()
    context = ray.data.DataContext.get_current()  # sealed into the dataset when it is created
    context.target_max_block_size = block_target_bytes(config.unit_size, config.resolution, context.target_max_block_size)
    udf_config = UdfConfig.placed(config, resources, target, encode_stage=encode_stage and target is not None, methods=tuple(config.methods),
                                  resolution=config.resolution, save_scores=config.save_scores,
                                  method_params=config.method_params, recipe=config.recipe_kwargs())
    if isinstance(units, StoredPlan):  # one small read per unit: Ray Data never fuses a read with map_batches of
        # a batch_size (the read could change the row count), so read tasks reserve little of their own
        ds = ray.data.read_datasource(plan_source(units), override_num_blocks=max(1, len(units)),
                                      num_cpus=min(READ_CPUS, resources.decode_cpus))
    elif units and units[0].source:  # containers: one read task per shard or row group, read front to back
        from jobs.segment.containers import container_blocks, read_container

        ds = ray.data.from_arrow(container_blocks(units)).map_batches(
            read_container, batch_size=1, batch_format="numpy",
            fn_kwargs={"resolution": config.resolution, "max_pixels": config.max_pixels,
                       "max_read_bytes": config.max_read_bytes, "read_timeout": config.read_timeout,
                       "chunk": config.unit_size},
            num_cpus=resources.decode_cpus, memory=resources.decode_memory, max_retries=TASK_RETRIES)
        return map_actors(ds, actor_class, (config.model, vocab, udf_config), resources, config.unit_size)
    else:
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
    # the CPU stage (encode_and_write) follows inside map_actors when the actor config asks for it
    return map_actors(ds, actor_class, (config.model, vocab, udf_config), resources, config.unit_size)
