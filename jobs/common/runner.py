"""What a job invocation does once its units are planned, shared by jobs.segment.run (segment) and
jobs.synthesize.run (synthesize).

Nothing to do: says so. Otherwise starts or joins Ray, sizes the actor pool, streams the job's dataset
into a UnitWriter, then writes the final manifest and prints the one-line summary. What differs between
the jobs is a :class:`RayJob` plus a callable that builds the lazy Ray dataset once the resources are
known. The manifest helpers (:meth:`RayJob.writer_counts`, :func:`progress_fields`) serve both jobs'
manifest builders.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from diffseg.lake.manifest import write_manifest
from jobs.common.config import ConfigError, Resources, resolve_resources

if TYPE_CHECKING:
    from diffseg.lake.schemas import TableSet

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TOO_MANY_ERRORS = 0, 1, 2, 3


@dataclass(frozen=True)
class RayJob:
    """What the shared Ray part needs to know about a job."""

    log: logging.Logger
    tables: TableSet  # the UnitWriter's tables; ``tables.item_name`` names a work item ("images", "samples")
    done_word: str  # what happened to an item that did not fail ("segmented", "generated")
    planning_key: str  # timings key of the checks before Ray ("checks_and_listing_s", ...)

    def writer_counts(self, writer) -> dict:
        """The manifest counts of what `writer` did so far (none before it exists)."""
        if writer is None:
            return {}
        w = writer.counts
        return {"processed": w["images"], self.done_word: w["segmented"], "errors": w["errors"],
                "errors_by_stage": writer.errors_by_stage(),
                **{key: w[key] for key in self.tables.row_counters.values()},
                "units_committed": len(writer.committed), "units_incomplete": len(writer.incomplete)}

    def timings(self, t0: float, t_planned: float, t_ray: float, t_run: float, writer) -> dict:
        now = time.monotonic()
        items = writer.counts["images"] if writer else 0
        process = now - t_run
        return {self.planning_key: round(t_planned - t0, 3), "ray_start_s": round(t_run - t_ray, 3),
                "process_s": round(process, 3), "total_s": round(now - t0, 3),
                f"{self.tables.item_name}_per_s": round(items / process, 3) if process > 0 else 0.0}


def progress_fields(run_markers: list[dict], resources: Resources | None, writer) -> dict:
    """build_manifest's ``resources`` and ``committed_units`` (earlier invocations' and this one's)."""
    committed = sorted({m["unit_id"] for m in run_markers} | set(writer.committed if writer else []))
    res = None if resources is None else {k: getattr(resources, k) for k in resources.__dataclass_fields__}
    return {"resources": res, "committed_units": committed}


def process(job: RayJob, config, store, units, build_dataset: Callable[[Resources], object], manifest, *,
            model: str, run_hash: str, all_done: str, t0: float, t_planned: float, t_ray: float | None = None) -> int:
    """Runs the planned `units` and returns the exit code. `manifest(status, resources, writer, error, timings)`
    builds the job's manifest; `build_dataset(resources)` the lazy Ray dataset of the units' result rows.
    No units: writes the "nothing to do" manifest, says that `all_done` (e.g. "12 input images") are
    already committed, and returns 0 without touching Ray. Timings count from `t0` (start), `t_planned`
    (planning done) and `t_ray` (default: after the "running" manifest) to the Ray start."""
    from diffseg.model import redact_uri

    if not units:
        write_manifest(store, manifest("nothing to do", timings={"total_s": round(time.monotonic() - t0, 3)}))
        print(f"diffseg: nothing to do: all {all_done} are already committed in run "
              f"{config.run_id!r} of {redact_uri(config.output)} (no model work)")
        return EXIT_OK
    write_manifest(store, manifest("running"))
    return _run_on_ray(job, config, store, units, build_dataset, manifest, model, run_hash, t0, t_planned, t_ray)


def _run_on_ray(job, config, store, units, build_dataset, manifest, model, run_hash, t0, t_planned, t_ray) -> int:
    """process()'s Ray part: resources, pipeline, unit writer, final manifest and summary."""
    import ray

    from diffseg.lake.writer import UnitWriter
    from jobs.common.ray_env import cluster_resources, init_ray

    log = job.log
    started_ray = not ray.is_initialized()
    writer = resources = None
    t_run = time.monotonic()
    t_ray = t_run if t_ray is None else t_ray
    try:
        init_ray(config)
        cpus, gpus = cluster_resources()
        try:
            resources = resolve_resources(config, cpus, gpus)
        except ConfigError as exc:
            log.error("%s", exc)
            timings = job.timings(t0, t_planned, t_ray, t_run, None)
            write_manifest(store, manifest("failed", error=str(exc), timings=timings))
            print(f"diffseg: error: {exc}")
            return EXIT_USAGE
        if resources.gpus_per_actor > 0 and resources.actors * resources.gpus_per_actor > gpus:
            log.warning("%d actor(s) x %g GPU(s) requested but the cluster has %g GPU(s) now: the job waits "
                        "for GPU nodes (autoscaler) and does nothing without them", resources.actors,
                        resources.gpus_per_actor, gpus)
        log.info("cluster: %g CPUs, %g GPUs -> %d actor(s) x (%g CPU, %g GPU) on %s, batch %d",
                 cpus, gpus, resources.actors, resources.cpus_per_actor, resources.gpus_per_actor,
                 resources.device, config.batch_size)
        t_run = time.monotonic()
        writer = UnitWriter(store, config.run_id, units, model, run_hash, tables=job.tables)
        for batch in build_dataset(resources).iter_batches(batch_format="pyarrow", batch_size=None):
            writer.add(batch)
        if writer.incomplete:
            raise RuntimeError(f"{len(writer.incomplete)} unit(s) did not receive all their rows")
    except Exception as exc:
        timings = job.timings(t0, t_planned, t_ray, t_run, writer)
        message = f"{type(exc).__name__}: {exc}"
        write_manifest(store, manifest("failed", resources, writer, error=message[:2000], timings=timings))
        log.exception("run failed")
        print(f"diffseg: FAILED after {writer.counts['images'] if writer else 0} {job.tables.item_name} were "
              f"committed ({len(writer.committed) if writer else 0} units; rerun the same command to finish the "
              f"rest): {message[:500]}")
        return EXIT_FAILED
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    return _finish(job, config, store, manifest, resources, writer, job.timings(t0, t_planned, t_ray, t_run, writer))


def _finish(job, config, store, manifest, resources, writer, timings) -> int:
    """Writes the final manifest, prints the summary line, returns 0 or 3 (too many errors)."""
    from diffseg.model import redact_uri

    noun = job.tables.item_name
    items, errors = writer.counts["images"], writer.counts["errors"]
    fraction = errors / items if items else 0.0
    too_many = fraction > config.max_error_fraction
    write_manifest(store, manifest("too many errors" if too_many else "succeeded", resources, writer, timings=timings))
    print(
        f"diffseg: {items} {noun} ({writer.counts['segmented']} {job.done_word}, {errors} errors = {fraction:.1%}) "
        f"in {timings['process_s']:.1f} s, {timings[f'{noun}_per_s']:.2f} {noun}/s; {len(writer.committed)} units "
        f"committed to run {config.run_id!r} of {redact_uri(config.output)}"
        + (f"; error fraction above --max-error-fraction {config.max_error_fraction:g}" if too_many else "")
    )
    return EXIT_TOO_MANY_ERRORS if too_many else EXIT_OK
