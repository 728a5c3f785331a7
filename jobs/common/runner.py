"""The one runner of both Ray jobs (jobs.segment, jobs.synthesize): checks -> plan -> nothing to do ->
Ray -> commit -> manifest -> summary.

1. Checks that need no model work (the job's :meth:`Job.check`, then the run identity). Any failure
   exits 2 with a message naming the option, before an input is read.
2. Takes the run's lease (diffseg.lake.lease: a second invocation of the run exits 2), reads the run's
   done index (diffseg.lake.done_index), checks the run identity, removes a killed run's debris, and lets
   the job cut what the run does not have yet into units (:meth:`Job.plan`). Nothing left: reports the
   run's recorded outcome without Ray (exit 0, or 3 when its error fraction is over the limit).
3. Starts or joins Ray, sizes the actor pool from the alive nodes and runs the job's dataset
   (:meth:`Job.dataset`): its actors write the rows to OUTPUT and the driver receives only metadata,
   which the UnitCommitter (diffseg.lake.writer) turns into commits (compacting a unit that arrived in
   several parts with a Ray task in the cluster).
4. Rewrites manifest.json, appends to the done index, prints a one-line summary, returns the exit code.

A job supplies only what differs: a :class:`Job` subclass (its tables, words, checks, planning, dataset
and manifest extras). Exit codes: 0 success (also "nothing to do"); 1 the run failed (committed units
are kept, rerun to finish); 2 bad options or a failed check; 3 finished with more errors than
``--max-error-fraction``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field

from diffseg.lake.manifest import check_run_identity, utc_stamp
from diffseg.lake.schemas import TableSet
from diffseg.lake.store import OutputStore
from diffseg.lake.units import check_run_id
from jobs.common.config import ConfigError, Resources, resolve_resources
from jobs.common.invocation import Invocation

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
    inputs: object = field(default_factory=list)  # listed inputs (segment: image URIs, a pyarrow StringArray)


@dataclass(frozen=True)
class Planned:
    """A job's plan: the units to run and the planning counts of the manifest. `units`: a
    diffseg.lake.plan.StoredPlan (loose files: stored under OUTPUT, a few numbers per unit in memory) or a
    UnitList (a list of Units is made one): both give len, ``total_items``, ``held_keys()``, ``without()``."""

    units: object
    counts: dict  # "already_done", "units_to_process" and the job's own counts
    everything: str  # what "nothing to do" says is committed: "12 input images"

    def __post_init__(self):
        from diffseg.lake.plan import as_plan

        object.__setattr__(self, "units", as_plan(self.units))


class Job:
    """What differs between the jobs; :func:`run` does the rest."""

    log: logging.Logger
    tables: TableSet
    words: Words

    def check(self, config) -> Checked:
        """All checks that read no input (raise ValueError naming the option: exit 2)."""
        raise NotImplementedError

    def plan(self, config, checked: Checked, done, invocation: str) -> Planned:
        """The units of the work items not in `done` (the run's committed items: a
        diffseg.lake.done_index.DoneSet; ``key in done``, ``done.exclude(keys)``). `invocation`: this
        invocation's id (a stored plan's folder, diffseg.lake.plan.plan_folder)."""
        raise NotImplementedError

    def dataset(self, config, checked: Checked, units, resources: Resources, target):
        """The lazy Ray dataset of `units` (the plan, or after a restart the part of it not committed) whose
        actors write the units' rows to `target` (a
        diffseg.lake.commit.WriteTarget) and return diffseg.lake.commit.META_SCHEMA rows. It sets Ray Data's
        progress output (jobs.common.progress.configure_ray_data) before the dataset executes."""
        raise NotImplementedError

    def manifest_extra(self, manifest: dict, config, checked: Checked) -> dict:
        """The manifest with the job's own fields (default: unchanged)."""
        return manifest


def run(job: Job, config) -> int:
    """Runs `job` as `config` says; returns the process exit code (see the module docstring)."""
    from diffseg.lake.lease import acquire
    from jobs.common.interrupt import Interrupted, StopSignals

    t0 = time.monotonic()
    started_at = utc_stamp()
    stop = StopSignals(config.grace_s).install()
    try:
        try:
            check_run_id(config.run_id)
            checked = job.check(config)
            lease = acquire(checked.store, config.run_id, config.lease_stale_s, config.break_lease)
        except ValueError as exc:  # ConfigError, ModelLoadError, OutputError, InputError, LeaseHeldError...
            return _usage_error(job, exc)
        stop.on_timeout.append(lease.release)
        try:
            return _run_leased(job, config, checked, lease, t0, started_at, stop)
        finally:
            lease.release()
    except Interrupted as sig:  # before the pipeline started: nothing of this invocation to commit
        print(f"diffseg: interrupted by {sig} before any {job.words.items} were processed; nothing was written "
              f"to the run (rerun the same command)")
        return sig.exit_code
    finally:
        stop.restore()


def _usage_error(job: Job, exc: Exception) -> int:
    print(f"diffseg: error: {exc}", file=sys.stderr)  # once: not logged as well
    return EXIT_USAGE


def _run_leased(job: Job, config, checked: Checked, lease, t0: float, started_at: str, stop) -> int:
    """Everything after the lease is taken: the fence, identity, sweeps, planning, Ray, index."""
    import os
    import socket

    from diffseg.lake.done_index import describe_done, load_state
    from diffseg.lake.legacy import has_markers, import_markers
    from diffseg.lake.log import CommitLog, new_invocation_id
    from diffseg.lake.manifest import record_run_identity
    from diffseg.lake.sweep import sweep, sweep_other_runs
    from diffseg.model import redact_uri
    from jobs.common.bookkeeping import end_invocation, release_retried

    store, run_id = checked.store, config.run_id
    commit_log = CommitLog(store, run_id, new_invocation_id())
    commit_log.begin({"host": socket.gethostname(), "pid": os.getpid(), "started_at": started_at,
                      "lease": lease.token})
    done = load_state(store, run_id)
    if has_markers(store, run_id):  # committed by diffseg 0.2: imported into the log once
        import_markers(store, commit_log, job.tables, set(done.units))
        done = load_state(store, run_id)
    try:
        new_run = check_run_identity(store, run_id, checked.identity, has_commits=len(done.units) > 0)
    except ValueError as exc:  # RunConflictError
        return _usage_error(job, exc)
    if new_run and len(done.units):  # committed units but no identity (written by another tool): record it now
        record_run_identity(store, run_id, checked.identity, checked.vocab.names)
        new_run = False
    debris = sweep(store, commit_log, done, done.unswept(commit_log.invocation), job.tables.schemas)
    others = sweep_other_runs(store, run_id, job.tables.schemas, config.lease_stale_s)
    planned = job.plan(config, checked, done, commit_log.invocation)
    planned.counts.update(debris_files_removed=len(debris) + sum(others.values()), **describe_done(done))
    if planned.counts["duplicate_items"]:
        job.log.warning("run %r holds %d item(s) in two committed units; a plain read sees them twice: read with "
                        "diffseg.lake.units.read_committed and drop duplicate URIs, or rerun into a new --run-id",
                        run_id, planned.counts["duplicate_items"])
    run = Invocation(job, config, checked, planned, done, started_at, t0, time.monotonic(), commit_log=commit_log,
                      stop=stop)

    def before_commit() -> None:
        nonlocal new_run
        lease.check()
        if new_run:  # the run identity is recorded with its first commit (issue 14.6)
            record_run_identity(store, run_id, checked.identity, checked.vocab.names)
            new_run = False

    run.before_commit = before_commit
    if not planned.units:
        return _nothing_to_do(run, redact_uri(config.output))
    release_retried(run)
    run.write_manifest("running")
    try:
        return _run_on_ray(run)
    finally:
        end_invocation(run)


def _nothing_to_do(run: Invocation, output: str) -> int:
    """A rerun of a finished run: reports the run's recorded outcome (exit 3 when its error fraction is over
    --max-error-fraction, as its last invocation exited)."""
    from jobs.common.bookkeeping import end_invocation

    config, planned = run.config, run.planned
    items, errors = run.done_set.error_fraction()
    fraction, too_many = _error_fraction(items, errors, config.max_error_fraction)
    planned.counts.update(run_items=items, run_errors=errors)
    end_invocation(run)
    run.write_manifest("nothing to do")
    print(f"diffseg: nothing to do: all {planned.everything} are already committed in run {config.run_id!r} of "
          f"{output} (no model work); the run has {errors} errors in {items} {run.job.words.items} = {fraction:.1%}"
          + (f", above --max-error-fraction {config.max_error_fraction:g}" if too_many else ""))
    return EXIT_TOO_MANY_ERRORS if too_many else EXIT_OK


def _error_fraction(items: int, errors: int, limit: float) -> tuple[float, bool]:
    """The error fraction of `items`, and whether it is over `limit` (--max-error-fraction: exit 3)."""
    fraction = errors / items if items else 0.0
    return fraction, fraction > limit


def _run_on_ray(run: Invocation) -> int:
    """The Ray part: resources, pipeline, unit writer, final manifest and summary."""
    import ray

    from diffseg.lake.commit import WriteTarget
    from diffseg.lake.writer import UnitCommitter
    from jobs.common.checks import check_output_visible
    from jobs.common.interrupt import Interrupted, finish_interrupted
    from jobs.common.progress import CounterPoller, Progress
    from jobs.common.ray_env import PlacementWatchdog, alive_nodes, batch_counter, commit_stream, init_ray
    from jobs.common.restarts import (
        PIPELINE_RESTARTS,
        StallAlarm,
        describe_lost,
        lost_worker,
        restart_pipeline,
    )

    job, config, log = run.job, run.config, run.job.log
    started_ray = not ray.is_initialized()
    run.t_ray = run.t_run = time.monotonic()
    try:
        init_ray(config)
        run.stop.install()  # ours again: Ray's handler would exit the process at once
        nodes = alive_nodes()
        run.nodes_at_start = len(nodes)
        try:
            check_output_visible(run.checked.store, config, len(nodes))
            run.resources = resolve_resources(config, nodes)
        except ConfigError as exc:
            run.write_manifest("failed", error=str(exc))
            print(f"diffseg: error: {exc}", file=sys.stderr)
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
        target = WriteTarget(config.output, config.run_id, run.checked.identity["model"], run.checked.run_hash,
                             vocabulary=tuple(run.checked.vocab.names), invocation=run.commit_log.invocation)
        run.writer = UnitCommitter(run.checked.store, run.commit_log, run.planned.units, job.tables,
                                   before_commit=run.before_commit, done=run.done_set.copy())
        progress = Progress(run.planned.units.total_items, items=job.words.items)
        counter = batch_counter()  # the actors count per model batch: progress moves per batch, not per unit
        run.resources = dataclasses.replace(run.resources, counter=counter)
        units = run.planned.units
        try:
            for restart in range(PIPELINE_RESTARTS + 1):
                dataset = job.dataset(config, run.checked, units, run.resources, target)
                try:
                    poller = CounterPoller(counter, progress)
                    with StallAlarm() as alarm, poller, PlacementWatchdog(
                            "MapWorker", run.resources, after_s=config.placement_warn_s,
                            nodes_at_start=run.nodes_at_start, on_lost_node=alarm.ring, progress=lambda p=poller: p.taken):
                        commit_stream(run.writer, dataset, job.tables)
                    break
                except Exception as exc:
                    if not lost_worker(exc) or restart == PIPELINE_RESTARTS:
                        raise
                    reason = describe_lost(exc)
                # out of the except block: the exception's frames (which hold the dead pipeline's iterator)
                # are gone, so the pipeline shuts down and frees its actors' CPUs and GPUs
                dataset = None
                units = restart_pipeline(run, reason)
        finally:
            progress.close()
        run.writer.flush()
        if run.writer.incomplete:
            raise RuntimeError(f"{len(run.writer.incomplete)} unit(s) did not receive all their rows")
    except Interrupted as sig:
        return finish_interrupted(run, sig, started_ray)
    except Exception as exc:
        from diffseg.redact import describe_error

        uris = [getattr(config, "input", None), config.output, run.checked.vocab_spec, config.model]
        message = describe_error(exc, [u for u in uris if u])
        run.write_manifest("failed", error=message[:2000])
        log.exception("run failed")
        w = run.writer
        print(f"diffseg: FAILED after {w.counts['items'] if w else 0} {job.words.items} were committed "
              f"({len(w.committed_units) if w else 0} units; rerun the same command to finish the rest): {message[:500]}")
        return EXIT_FAILED
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    return _finish(run)


def _finish(run: Invocation) -> int:
    """Writes the final manifest, prints the summary line, returns 0 or 3 (too many errors)."""
    from diffseg.model import redact_uri

    config, words, w = run.config, run.job.words, run.writer
    items, errors = w.counts["items"], w.counts["errors"]
    fraction, too_many = _error_fraction(items, errors, config.max_error_fraction)
    timings = run.write_manifest("too many errors" if too_many else "succeeded")
    print(
        f"diffseg: {items} {words.items} ({w.counts['done']} {words.done}, {errors} errors = {fraction:.1%}) "
        f"in {timings['process_s']:.1f} s, {timings[f'{words.items}_per_s']:.2f} {words.items}/s; {len(w.committed_units)} "
        f"units committed to run {config.run_id!r} of {redact_uri(config.output)}"
        + (f"; error fraction above --max-error-fraction {config.max_error_fraction:g}" if too_many else "")
    )
    return EXIT_TOO_MANY_ERRORS if too_many else EXIT_OK
