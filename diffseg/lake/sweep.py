"""Removing what no commit will ever name: the files of invocations that are over (killed, fenced, finished),
and their stored plans (``_plans/<run>/<invocation>/``, diffseg.lake.plan).

Only what is provably dead is swept. A file is removed when (1) its name says which run and invocation wrote
it (``<table>/part-<run>-<invocation>-...``, ``_staging/<run>/<invocation>/...``), (2) no commit entry of the
run names it, and (3) that invocation can never commit again: the sweeper holds the run's lease and has
appended its own ``begin`` entry to the run's log after the invocation's entries (the fence,
diffseg.lake.log), or the invocation is the sweeper itself after its last commit. A ``swept`` entry then
records the invocation; it is swept once more by the next invocation of the run (by then any worker of it
that was still alive is gone with its driver), then never listed again.

A worker of a fenced invocation that is still alive (cut off, not killed) may write a file after the first
sweep; no commit can name it, readers going through the log never see it, and a plain read of the folder
sees its rows until the next run's second sweep of that invocation's prefix (docs/commits.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from diffseg.lake.commit import STAGING
from diffseg.lake.store import OutputStore

log = logging.getLogger("diffseg.lake.sweep")


def invocation_files(store: OutputStore, run_id: str, invocation: str, schemas: Mapping) -> list[str]:
    """Every file an invocation of a run may have written: its table-folder attempts and staging parts."""
    found = [rel for table in schemas for rel in store.list_prefix(f"{table}/part-{run_id}-{invocation}-")]
    return found + store.list(f"{STAGING}/{run_id}/{invocation}")


def sweep(store: OutputStore, commit_log, done, invocations: list[str], schemas: Mapping) -> list[str]:
    """Deletes the files of `invocations` of the run that no commit of `done` (the run's state, read after
    `commit_log`'s begin entry) names, and records them swept with one fenced log entry. Returns the files."""
    if not invocations:
        return []
    keep = {f["path"] for unit in done.units.values() for f in unit["files"].values()}
    debris = [rel for inv in invocations for rel in invocation_files(store, commit_log.run_id, inv, schemas)
              if rel not in keep]
    commit_log.append("swept", {"invocations": sorted(invocations), "files": len(debris)})
    _remove_plans(store, commit_log.run_id, invocations)
    if debris:
        log.info("run %r: removing %d uncommitted file(s) of %d ended invocation(s): %s%s", commit_log.run_id,
                 len(debris), len(invocations), ", ".join(debris[:3]), " ..." if len(debris) > 3 else "")
        store.remove(debris)
    for inv in invocations:
        state = done.invocations.setdefault(inv, {})
        state["swept"] = int(state.get("swept") or 0) + 1
    return debris


def _remove_plans(store: OutputStore, run_id: str, invocations: list[str]) -> None:
    """The stored plans of swept invocations (``_plans/<run>/<invocation>/``: only their own read tasks read
    them, and those are over)."""
    from diffseg.lake.plan import remove_plans

    try:
        remove_plans(store, run_id, invocations)
    except Exception as exc:  # a plan is no row: the next sweep tries again
        log.warning("run %r: could not remove the plans of %d invocation(s) (%s)", run_id, len(invocations), exc)


def sweep_other_runs(store: OutputStore, current_run: str, schemas: Mapping, stale_s: float) -> dict[str, int]:
    """Sweeps the ended invocations of every other run of OUTPUT that no invocation holds now (each under
    that run's own lease and fence, released after). Returns {run_id: files removed}; a run whose lease is
    held is left alone."""
    from diffseg.lake.done_index import load_state
    from diffseg.lake.lease import LeaseHeldError, acquire
    from diffseg.lake.log import CommitLog, logged_runs, new_invocation_id

    removed = {}
    for run_id in logged_runs(store):
        if run_id == current_run or not load_state(store, run_id).unswept():
            continue
        try:
            lease = acquire(store, run_id, stale_s, heartbeat_s=max(5.0, stale_s / 4))
        except LeaseHeldError:
            continue  # another invocation writes it: its own sweep will do
        try:
            commit_log = CommitLog(store, run_id, new_invocation_id())
            commit_log.begin({"purpose": f"sweep by run {current_run!r}"})
            done = load_state(store, run_id)
            removed[run_id] = len(sweep(store, commit_log, done, done.unswept(), schemas))
        except Exception as exc:
            log.warning("could not sweep run %r (%s); its next invocation will", run_id, exc)
        finally:
            lease.release()
    return removed
