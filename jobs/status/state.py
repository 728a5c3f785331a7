"""A run's state from what OUTPUT holds: its latest invocation's manifest and its commit log.

Pure functions on already-read data (:func:`run_status`) plus one reader (:func:`read_run_status`); no Ray.

- The invocation: ``manifest.json`` when its ``run_id`` is the run, else the newest
  ``_history/<run_id>/*.json`` (finished invocations of runs that are not the latest).
- The run's totals come from its commit log (diffseg.lake.log), over every invocation: images committed (segmented or
  final error) and error rows. A run finished in several invocations (one failed half-way, a rerun
  did the rest) is judged on all of its images, not on the last invocation's.
- Outcome and exit code:

  =================================================  ===============  ====
  invocation status                                  outcome          exit
  =================================================  ===============  ====
  succeeded / too many errors / nothing to do        succeeded        0
    ... and run-wide error fraction > the limit      too many errors  3
  failed                                             failed           1
  running, last sign of life within ``stale_after``  running          0
  running, nothing for longer than ``stale_after``   stale            1
  the run has no manifest of its own (killed before  interrupted      1
  it finished while another run came after it)
  =================================================  ===============  ====

  The limit is the run's ``--max-error-fraction`` (recorded in the manifest's config), unless given.
  The last sign of life of a running invocation is the later of its start and its newest log entry.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import asdict, dataclass

from diffseg.lake.done_index import load_state
from diffseg.lake.manifest import MANIFEST, RUNS
from diffseg.lake.read import OutputError, read_manifest, run_manifest
from diffseg.lake.store import OutputStore
from jobs.common.config import RunOptions
from jobs.common.runner import EXIT_FAILED, EXIT_OK, EXIT_TOO_MANY_ERRORS, EXIT_USAGE

EXIT_MISSING = EXIT_USAGE  # OUTPUT or the run is unknown
DEFAULT_MAX_ERROR_FRACTION = RunOptions.max_error_fraction  # the jobs' default, for manifests that do not record it
DEFAULT_STALE_AFTER_S = 3600.0  # a running invocation that committed nothing for an hour is presumed dead


@dataclass(frozen=True)
class RunStatus:
    """What ``jobs.status`` prints (``--json``: this as a dict)."""

    output: str
    run_id: str
    outcome: str  # succeeded, too many errors, failed, running, stale, interrupted
    exit_code: int
    invocation_status: str | None  # the manifest's status (None: no manifest for this run)
    started_at: str | None
    finished_at: str | None
    last_activity: str | None  # newest of start and log entries
    images: int  # committed in the run (segmented + errors), every invocation
    errors: int
    error_fraction: float
    max_error_fraction: float
    units: int
    listed: int | None  # INPUT's size at the latest invocation (None when unknown)
    error: str | None  # the failed invocation's message

    def to_dict(self) -> dict:
        return asdict(self)


def parse_time(stamp: str | None) -> float | None:
    """``2024-06-01T02:00:00Z`` -> seconds since the epoch (None for None or an unreadable stamp)."""
    if not stamp:
        return None
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def run_status(output: str, run_id: str, manifest: dict | None, totals: dict, now: float,
               stale_after_s: float = DEFAULT_STALE_AFTER_S, max_error_fraction: float | None = None) -> RunStatus:
    """The status of run `run_id` from its invocation `manifest` (None: none recorded) and the `totals` of
    its commit log (:func:`log_totals`: images, errors, units, last_at)."""
    images, errors = totals["images"], totals["errors"]
    fraction = errors / images if images else 0.0
    config = (manifest or {}).get("config") or {}
    limit = max_error_fraction if max_error_fraction is not None else float(
        config.get("max_error_fraction", DEFAULT_MAX_ERROR_FRACTION))
    stamps = [s for s in ((manifest or {}).get("started_at"), totals.get("last_at")) if parse_time(s)]
    last = max(stamps, key=parse_time) if stamps else None
    status = (manifest or {}).get("status")
    if manifest is None:
        outcome, code = "interrupted", EXIT_FAILED
    elif status == "failed":
        outcome, code = "failed", EXIT_FAILED
    elif status == "running":
        alive = last is not None and now - parse_time(last) <= stale_after_s
        outcome, code = ("running", EXIT_OK) if alive else ("stale", EXIT_FAILED)
    elif fraction > limit:
        outcome, code = "too many errors", EXIT_TOO_MANY_ERRORS
    else:
        outcome, code = "succeeded", EXIT_OK
    counts = (manifest or {}).get("counts") or {}
    return RunStatus(output=output, run_id=run_id, outcome=outcome, exit_code=code, invocation_status=status,
                     started_at=(manifest or {}).get("started_at"), finished_at=(manifest or {}).get("finished_at"),
                     last_activity=last, images=images, errors=errors, error_fraction=fraction,
                     max_error_fraction=limit, units=totals["units"], listed=counts.get("listed"),
                     error=(manifest or {}).get("error"))


def invocation_manifest(store: OutputStore, run_id: str | None) -> tuple[str, dict | None]:
    """(run id, the manifest of its latest invocation or None). OutputError when OUTPUT or the run is unknown."""
    latest = read_manifest(store.output)
    chosen = run_id or latest.get("run_id")
    if not chosen:
        raise OutputError(f"{store.output!r}: manifest.json names no run_id: is it a jobs.segment OUTPUT?")
    manifest = run_manifest(store.output, chosen, latest)
    if manifest is not None:
        return chosen, manifest
    if store.exists(f"{RUNS}/{chosen}.json"):
        return chosen, None
    known = sorted(r.rsplit("/", 1)[-1][: -len(".json")] for r in store.list(RUNS) if r.endswith(".json"))
    raise OutputError(f"OUTPUT {store.output!r} has no run {chosen!r}; its runs: {', '.join(known) or 'none'} "
                      f"(latest: {latest.get('run_id')!r}, from {MANIFEST})")


def read_run_status(output: str, run_id: str | None = None, now: float | None = None,
                    stale_after_s: float = DEFAULT_STALE_AFTER_S, max_error_fraction: float | None = None) -> RunStatus:
    """Reads OUTPUT and returns :func:`run_status` of `run_id` (default: the latest run)."""
    store = OutputStore(output)
    chosen, manifest = invocation_manifest(store, run_id)
    return run_status(output, chosen, manifest, log_totals(store, chosen), time.time() if now is None else now,
                      stale_after_s, max_error_fraction)


def log_totals(store: OutputStore, run_id: str) -> dict:
    """{"images", "errors", "units", "last_at"} of a run's commit log (its index and the entries after it)."""
    done = load_state(store, run_id)
    images, errors = done.error_fraction()
    return {"images": images, "errors": errors, "units": len(done.units), "last_at": done.last_at}
