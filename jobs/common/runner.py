"""The one runner of both Ray jobs (jobs.segment, jobs.synthesize): checks -> plan -> nothing to do ->
Ray -> commit -> manifest -> summary.

1. Checks that need no model work (the job's :meth:`Job.check`, then the run identity). Any failure
   exits 2 with a message naming the option, before an input is read.
2. Reads the commit markers, removes a killed run's debris, and lets the job cut what the run does not
   have yet (its done set) into units (:meth:`Job.plan`). Nothing left: says so, exits 0 without Ray.
3. Starts or joins Ray, sizes the actor pool and streams the job's dataset (:meth:`Job.dataset`) into
   the UnitWriter (diffseg.lake.writer), which commits units as they complete.
4. Rewrites manifest.json, prints a one-line summary, returns the exit code.

A job supplies only what differs: a :class:`Job` subclass (its tables, words, checks, planning, dataset
and manifest extras). Exit codes: 0 success (also "nothing to do"); 1 the run failed (committed units
are kept, rerun to finish); 2 bad options or a failed check; 3 finished with more errors than
``--max-error-fraction``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from diffseg.lake.manifest import RunInfo, build_manifest, check_run_identity, write_manifest
from diffseg.lake.schemas import TableSet
from diffseg.lake.store import OutputStore
from diffseg.lake.units import Unit, check_run_id, done_set, load_commits, remove_debris
from jobs.common.config import ConfigError, Resources, resolve_resources

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TOO_MANY_ERRORS = 0, 1, 2, 3


@dataclass(frozen=True)
class Words:
    """How a job names its work items in the summary line, the manifest and the logs."""

    items: str  # "images", "samples"
    done: str  # what happened to an item without an error: "segmented", "generated"
    run_done: str  # manifest count of the run's items done so far: "run_images_done"
    planning: str  # timings key of the checks and planning: "checks_and_listing_s"


@dataclass(frozen=True)
class Checked:
    """What a job's checks found: everything the run needs that reads no input."""

    store: OutputStore
    vocab: object  # diffseg.Vocabulary (the segment job's classes, the synthesize job's class names)
    vocab_spec: str  # the option as given (--vocab / --classes)
    run_hash: str  # the rows' vocab_hash (segment: the vocabulary's hash; synthesize: classes and prompt)
    identity: dict  # the run identity (diffseg.lake.manifest.run_identity)
    inputs: list[str] = field(default_factory=list)  # listed inputs (segment: image URIs)


@dataclass(frozen=True)
class Planned:
    """A job's plan: the units to run and the planning counts of the manifest."""

    units: list[Unit]
    counts: dict  # "already_done", "units_to_process" and the job's own counts
    everything: str  # what "nothing to do" says is committed: "12 input images"


class Job:
    """What differs between the jobs; :func:`run` does the rest."""

    log: logging.Logger
    tables: TableSet
    words: Words

    def check(self, config) -> Checked:
        """All checks that read no input (raise ValueError naming the option: exit 2)."""
        raise NotImplementedError

    def plan(self, config, checked: Checked, done: set[str]) -> Planned:
        """The units of the work items not in `done` (the run's committed items)."""
        raise NotImplementedError

    def dataset(self, config, checked: Checked, units: list[Unit], resources: Resources):
        """The lazy Ray dataset of the units' result rows (``tables.result_schema``)."""
        raise NotImplementedError

    def manifest_extra(self, manifest: dict, config, checked: Checked) -> dict:
        """The manifest with the job's own fields (default: unchanged)."""
        return manifest


@dataclass
class _Invocation:
    """One run of a job: what the manifest and the summary are built from."""

    job: Job
    config: object
    checked: Checked
    planned: Planned
    run_markers: list[dict]
    done: int  # items the run had before this invocation
    started_at: str
    t0: float
    t_planned: float
    t_ray: float = 0.0
    t_run: float = 0.0
    resources: Resources | None = None
    writer: object = None  # diffseg.lake.writer.UnitWriter once the pipeline runs

    def counts(self) -> dict:
        words, w = self.job.words, self.writer
        counts = dict(self.planned.counts)
        if w is not None:
            counts.update({"processed": w.counts["items"], words.done: w.counts["done"], "errors": w.counts["errors"],
                           "errors_by_stage": w.errors_by_stage(),
                           **{key: w.counts[key] for key in self.job.tables.row_counters.values()},
                           "units_committed": len(w.committed), "units_incomplete": len(w.incomplete)})
        counts[words.run_done] = self.done + (w.counts["items"] if w else 0)
        return counts

    def timings(self) -> dict:
        now = time.monotonic()
        if not self.t_ray:
            return {"total_s": round(now - self.t0, 3)}
        items = self.writer.counts["items"] if self.writer else 0
        process = now - self.t_run
        return {self.job.words.planning: round(self.t_planned - self.t0, 3), "ray_start_s": round(self.t_run - self.t_ray, 3),
                "process_s": round(process, 3), "total_s": round(now - self.t0, 3),
                f"{self.job.words.items}_per_s": round(items / process, 3) if process > 0 else 0.0}

    def write_manifest(self, status: str, error: str | None = None) -> dict:
        c, config = self.checked, self.config
        committed = sorted({m["unit_id"] for m in self.run_markers} | set(self.writer.committed if self.writer else []))
        res = None if self.resources is None else {k: getattr(self.resources, k) for k in self.resources.__dataclass_fields__}
        timings = {} if status == "running" else self.timings()
        info = RunInfo(run_id=config.run_id, output=config.output, config=config.to_dict(), model=config.model,
                       vocab=c.vocab, vocab_spec=c.vocab_spec, vocab_hash=c.run_hash, started_at=self.started_at)
        manifest = build_manifest(info, status, self.counts(), timings, committed, res, error)
        manifest = self.job.manifest_extra(manifest, config, c)
        write_manifest(c.store, manifest)
        return timings


def run(job: Job, config) -> int:
    """Runs `job` as `config` says; returns the process exit code (see the module docstring)."""
    from diffseg.model import redact_uri

    t0 = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        check_run_id(config.run_id)
        checked = job.check(config)
        check_run_identity(checked.store, config.run_id, checked.identity, checked.vocab.names)
    except ValueError as exc:  # ConfigError, ModelLoadError, OutputError, InputError, RunConflictError...
        job.log.error("%s", exc)
        print(f"diffseg: error: {exc}")
        return EXIT_USAGE
    all_markers = load_commits(checked.store)
    debris = remove_debris(checked.store, all_markers, job.tables.schemas)
    run_markers = [m for m in all_markers if m["run_id"] == config.run_id]
    done = done_set(run_markers)
    planned = job.plan(config, checked, done)
    planned.counts["debris_files_removed"] = len(debris)
    run = _Invocation(job, config, checked, planned, run_markers, len(done), started_at, t0, time.monotonic())
    if not planned.units:
        run.write_manifest("nothing to do")
        print(f"diffseg: nothing to do: all {planned.everything} are already committed in run "
              f"{config.run_id!r} of {redact_uri(config.output)} (no model work)")
        return EXIT_OK
    run.write_manifest("running")
    return _run_on_ray(run)


def _run_on_ray(run: _Invocation) -> int:
    """The Ray part: resources, pipeline, unit writer, final manifest and summary."""
    import ray

    from diffseg.lake.writer import UnitWriter
    from jobs.common.ray_env import PlacementWatchdog, alive_nodes, init_ray

    job, config, log = run.job, run.config, run.job.log
    started_ray = not ray.is_initialized()
    run.t_ray = run.t_run = time.monotonic()
    try:
        init_ray(config)
        nodes = alive_nodes()
        try:
            check_output_visible(run.checked.store, config, len(nodes))
            run.resources = resolve_resources(config, nodes)
        except ConfigError as exc:
            log.error("%s", exc)
            run.write_manifest("failed", error=str(exc))
            print(f"diffseg: error: {exc}")
            return EXIT_USAGE
        res = run.resources
        if res.actors > res.capacity:
            log.warning("%d actor(s) x (%g CPU, %g GPU) requested but the alive nodes hold %d now: the job waits for "
                        "nodes (--wait-for-nodes: an autoscaler or an operator adds them)", res.actors, res.cpus_per_actor, res.gpus_per_actor,
                        res.capacity)
        log.info("cluster: %d node(s), %g CPUs, %g GPUs -> %d actor(s) x (%g CPU, %g GPU) on %s, batch %d", len(nodes),
                 res.cluster_cpus, res.cluster_gpus, res.actors, res.cpus_per_actor, res.gpus_per_actor, res.device,
                 config.batch_size)
        run.t_run = time.monotonic()
        run.writer = UnitWriter(run.checked.store, config.run_id, run.planned.units, run.checked.identity["model"],
                                run.checked.run_hash, tables=job.tables)
        dataset = job.dataset(config, run.checked, run.planned.units, res)
        with PlacementWatchdog("MapWorker", res, after_s=config.placement_warn_s):
            for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                run.writer.add(batch)
        if run.writer.incomplete:
            raise RuntimeError(f"{len(run.writer.incomplete)} unit(s) did not receive all their rows")
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        run.write_manifest("failed", error=message[:2000])
        log.exception("run failed")
        w = run.writer
        print(f"diffseg: FAILED after {w.counts['items'] if w else 0} {job.words.items} were committed "
              f"({len(w.committed) if w else 0} units; rerun the same command to finish the rest): {message[:500]}")
        return EXIT_FAILED
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    return _finish(run)


def check_output_visible(store, config, nodes: int) -> None:
    """ConfigError when OUTPUT is a local path on a cluster of several nodes (the workers write their rows
    there: other nodes would write to their own disks) unless ``--shared-output`` says every node sees it."""
    from diffseg.model import redact_uri

    if store.local and nodes > 1 and not config.shared_output:
        raise ConfigError(
            f"OUTPUT {redact_uri(config.output)!r} is a local path but the cluster has {nodes} alive nodes: the "
            f"workers write their rows to OUTPUT, and other nodes cannot see this node's disk. Use an object store "
            f"(s3://, gs://) or pass --shared-output if the path is shared by every node (NFS)"
        )


def _finish(run: _Invocation) -> int:
    """Writes the final manifest, prints the summary line, returns 0 or 3 (too many errors)."""
    from diffseg.model import redact_uri

    config, words, w = run.config, run.job.words, run.writer
    items, errors = w.counts["items"], w.counts["errors"]
    fraction = errors / items if items else 0.0
    too_many = fraction > config.max_error_fraction
    timings = run.write_manifest("too many errors" if too_many else "succeeded")
    print(
        f"diffseg: {items} {words.items} ({w.counts['done']} {words.done}, {errors} errors = {fraction:.1%}) "
        f"in {timings['process_s']:.1f} s, {timings[f'{words.items}_per_s']:.2f} {words.items}/s; {len(w.committed)} "
        f"units committed to run {config.run_id!r} of {redact_uri(config.output)}"
        + (f"; error fraction above --max-error-fraction {config.max_error_fraction:g}" if too_many else "")
    )
    return EXIT_TOO_MANY_ERRORS if too_many else EXIT_OK
