"""Run-level rules that need no Ray: a second invocation of a running run exits 2 naming the holder; a
rerun of a finished run reports that run's outcome; a run that committed nothing may be redefined."""

from __future__ import annotations

import pyarrow as pa

from diffseg.lake.lease import acquire
from diffseg.lake.schemas import ERRORS_SCHEMA, SCHEMAS
from diffseg.lake.store import OutputStore
from diffseg.lake.units import make_units, write_unit
from jobs.common.config import JobConfig
from jobs.segment.run import run


def lake(tmp_path, n: int) -> list[str]:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i}.jpg").write_bytes(b"listed, never read")
    return [f"file://{folder}/{i}.jpg" for i in range(n)]


def config(tmp_path, **kw) -> JobConfig:
    return JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), vocab="cat", model="tiny", **kw)


def commit_errors(store, uris: list[str], failed: set[str]) -> None:
    for unit in make_units(uris, 2):
        errors = [{"uri": u, "stage": "decode", "error_type": "E", "message": "bad", "run_id": "default"}
                  for u in unit.uris if u in failed]
        tables = {t: s.empty_table() for t, s in SCHEMAS.items()} | {"errors": pa.Table.from_pylist(errors, ERRORS_SCHEMA)}
        write_unit(store, "default", unit, tables)


def test_second_invocation_of_a_running_run_exits_2_naming_the_holder(tmp_path, capsys):
    lake(tmp_path, 2)
    store = OutputStore(str(tmp_path / "out"))
    holder = acquire(store, "default")  # the first invocation, still running
    try:
        assert run(config(tmp_path)) == 2
        out = capsys.readouterr().err
        assert "being written by another invocation" in out and "--break-lease" in out and "pid" in out
        assert not store.exists("manifest.json")  # it touched nothing
    finally:
        holder.release()


def test_rerun_of_a_finished_run_reports_its_outcome(tmp_path, capsys):
    uris = lake(tmp_path, 4)
    store = OutputStore(str(tmp_path / "out"))
    commit_errors(store, uris, failed={uris[0]})  # 1 error in 4 images: 25 %
    assert run(config(tmp_path)) == 3
    out = capsys.readouterr().out
    assert "nothing to do" in out and "1 errors in 4 images = 25.0%" in out and "--max-error-fraction" in out
    assert run(config(tmp_path, max_error_fraction=0.5)) == 0
    counts = store.get_json("manifest.json")["counts"]
    assert (counts["run_items"], counts["run_errors"], counts["duplicate_items"]) == (4, 1, 0)
    assert any(r.endswith("-keys.parquet") for r in store.list("_index/default"))  # a done-index snapshot
