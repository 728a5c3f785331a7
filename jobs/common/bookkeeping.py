"""An invocation's bookkeeping around its pipeline (the runner calls these): handing retried error rows
back before it, sweeping its own leftovers and writing the done index after it (a
jobs.common.invocation.Invocation is the `run` they take)."""

from __future__ import annotations


def release_retried(run) -> None:
    """Hands the error rows of planned keys back (a fenced ``retry`` entry; diffseg.lake.retry): the keys the
    plan holds from error rows (diffseg.lake.plan: ``held_keys``), not every planned key."""
    from diffseg.lake.retry import release_errors

    keys = run.planned.units.held_keys()
    released = release_errors(run.checked.store, run.commit_log, run.done_set, keys, run.job.tables)
    run.planned.counts["errors_retried"] = released
    if released:
        run.job.log.info("retrying %d error row(s) of earlier invocations", released)


def end_invocation(run) -> None:
    """After the pipeline: removes this invocation's plan, sweeps its uncommitted files and writes the done
    index (a failure only costs re-reads: the log stays the truth; a plan left behind goes with the
    invocation's sweep by the next run)."""
    from diffseg.lake.done_index import load_state, write_index
    from diffseg.lake.log import LogFencedError
    from diffseg.lake.plan import remove_plans
    from diffseg.lake.sweep import sweep

    store, log = run.checked.store, run.job.log
    try:
        remove_plans(store, run.config.run_id, [run.commit_log.invocation])
    except Exception as exc:
        log.warning("could not remove this invocation's plan (%s); the next run's sweep does", exc)
    try:
        if run.writer is not None:
            run.writer.finish()
        done = load_state(store, run.config.run_id)
        if not run.actors_may_write:  # else the next invocation sweeps this one, once its actors are gone
            sweep(store, run.commit_log, done, [run.commit_log.invocation], run.job.tables.schemas)
        write_index(store, run.commit_log, load_state(store, run.config.run_id))
    except LogFencedError as exc:
        log.error("%s", exc)
    except Exception as exc:
        log.warning("could not finish the bookkeeping of run %r (%s); the next run does it", run.config.run_id, exc)
