"""jobs.status on hand-built OUTPUTs: exit codes for every outcome, run-wide error fractions over several
invocations, other runs from _history, stale running invocations, missing OUTPUT/run."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pytest
from jobtest_utils import run_main

from diffseg.lake.manifest import write_manifest
from diffseg.lake.schemas import SCHEMAS
from diffseg.lake.store import OutputStore
from diffseg.lake.units import Unit, unit_id_of, write_unit
from jobs.status.cli import main


def stamp(seconds_ago: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


def commit(store: OutputStore, run_id: str, images: int, errors: int, prefix: str = "img") -> None:
    """One committed unit of `images` URIs, the first `errors` of them error rows."""
    uris = tuple(sorted(f"s3://lake/{prefix}{i:04d}.jpg" for i in range(images)))
    err = [{"uri": u, "stage": "decode", "error_type": "ValueError", "message": "bad", "run_id": run_id}
           for u in uris[:errors]]
    tables = {"masks": SCHEMAS["masks"].empty_table(), "stats": SCHEMAS["stats"].empty_table(),
              "errors": pa.Table.from_pylist(err, schema=SCHEMAS["errors"])}
    write_unit(store, run_id, Unit(unit_id_of(uris), uris), tables)


def manifest(store: OutputStore, run_id: str, status: str, started_ago: float = 60.0, limit: float = 0.05,
             error: str | None = None) -> None:
    m = {"format": 1, "status": status, "run_id": run_id, "started_at": stamp(started_ago),
         "finished_at": None if status == "running" else stamp(), "config": {"max_error_fraction": limit},
         "counts": {"listed": 100}}
    if error:
        m["error"] = error
    write_manifest(store, m)
    if not store.exists(f"_runs/{run_id}.json"):
        store.put_json(f"_runs/{run_id}.json", {"run_id": run_id, "identity": {}, "classes": ["cat"]})


def status(capsys, *argv) -> tuple[int, str, str]:
    return run_main(main, capsys, *argv)


@pytest.fixture
def store(tmp_path):
    return OutputStore(str(tmp_path / "seg"))


def test_succeeded_run_exits_0_and_prints_counts(store, capsys):
    commit(store, "nightly", 100, 2)
    manifest(store, "nightly", "succeeded")
    code, out, _ = status(capsys, store.output)
    assert code == 0
    assert "run 'nightly'" in out and "SUCCEEDED" in out
    assert "100 images of 100 listed in 1 units; 2 errors = 2.0% (limit 5.0%)" in out


def test_rerun_with_nothing_to_do_still_reports_too_many_errors(store, capsys):
    """The RayJob-retry case: the run ended with exit 3, the retry found nothing to do and exited 0."""
    commit(store, "nightly", 100, 9)
    manifest(store, "nightly", "too many errors")
    assert status(capsys, store.output)[0] == 3
    manifest(store, "nightly", "nothing to do")
    code, out, _ = status(capsys, store.output)
    assert code == 3 and "TOO MANY ERRORS" in out and "latest invocation: nothing to do" in out
    assert status(capsys, store.output, "--max-error-fraction", "0.1")[0] == 0


def test_error_fraction_counts_every_invocation_of_the_run(store, capsys):
    """First invocation failed half-way with many errors; the rerun finished cleanly: still over the limit."""
    commit(store, "r", 50, 10, prefix="a")
    manifest(store, "r", "failed", error="RuntimeError: storage gone")
    code, out, _ = status(capsys, store.output)
    assert code == 1 and "FAILED" in out and "storage gone" in out
    commit(store, "r", 50, 0, prefix="b")
    manifest(store, "r", "succeeded")
    code, out, _ = status(capsys, store.output, "--json")
    data = json.loads(out)
    assert code == 3 and data["images"] == 100 and data["errors"] == 10 and data["outcome"] == "too many errors"


def test_running_is_0_while_alive_and_1_when_stale(store, capsys):
    manifest(store, "r", "running", started_ago=7200)
    commit(store, "r", 10, 0)  # a unit committed just now: alive
    code, out, _ = status(capsys, store.output)
    assert code == 0 and "RUNNING" in out
    code, out, _ = status(capsys, store.output, "--stale-after", "3600")
    assert code == 0
    other = OutputStore(store.output + "-2")
    manifest(other, "r", "running", started_ago=7200)  # started two hours ago, committed nothing since
    code, out, _ = status(capsys, other.output)
    assert code == 1 and "STALE" in out
    assert status(capsys, other.output, "--stale-after", "10000")[0] == 0


def test_other_runs_come_from_history_and_unknown_runs_exit_2(store, capsys):
    commit(store, "old", 20, 5, prefix="o")
    manifest(store, "old", "too many errors")
    commit(store, "new", 20, 0, prefix="n")
    manifest(store, "new", "succeeded")
    assert status(capsys, store.output)[0] == 0
    code, out, _ = status(capsys, store.output, "--run-id", "old")
    assert code == 3 and "run 'old'" in out
    store.put_json("_runs/killed.json", {"run_id": "killed", "identity": {}})  # started, never finished
    code, out, _ = status(capsys, store.output, "--run-id", "killed")
    assert code == 1 and "INTERRUPTED" in out
    code, _, err = status(capsys, store.output, "--run-id", "nope")
    assert code == 2 and "no run 'nope'" in err and "killed, new, old" in err
    code, _, err = status(capsys, store.output + "-missing")
    assert code == 2 and "no manifest.json" in err


def test_bad_options_exit_2_and_help_documents_exit_codes(store, capsys):
    assert status(capsys, store.output, "--stale-after", "0")[0] == 2
    code, out, _ = status(capsys, "--help")
    assert code == 0 and "exit codes" in out and "3  the run finished" in out
