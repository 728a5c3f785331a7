"""Work units, commit entries, the done set, the sweep and the committed-read helper."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pytest

from diffseg.lake.done_index import load_state
from diffseg.lake.log import CommitLog
from diffseg.lake.schemas import ERRORS_SCHEMA, MASKS_SCHEMA, SCHEMAS, STATS_SCHEMA
from diffseg.lake.store import OutputStore
from diffseg.lake.sweep import sweep
from diffseg.lake.units import check_run_id, committed_files, make_units, read_committed, write_unit


def tables_for(uris: list[str], run_id: str = "default") -> dict[str, pa.Table]:
    masks = [{"uri": u, "width": 2, "height": 1, "method": "m", "label_map_png": b"png", "classes": [],
              "scores_png": None, "run_id": run_id, "model": "tiny", "vocab_hash": "h"} for u in uris[1:]]
    errors = [{"uri": uris[0], "stage": "decode", "error_type": "ImageDecodeError", "message": "bad", "run_id": run_id}]
    return {"masks": pa.Table.from_pylist(masks, schema=MASKS_SCHEMA),
            "stats": STATS_SCHEMA.empty_table(),
            "errors": pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA)}


def test_units_are_deterministic_sorted_chunks():
    uris = [f"s3://b/{i:03d}.jpg" for i in range(10)]
    units = make_units(list(reversed(uris)) + uris[:3], unit_size=4)
    assert [len(u.uris) for u in units] == [4, 4, 2]
    assert [u for unit in units for u in unit.uris] == uris
    assert units == make_units(uris, 4)  # same URIs -> same unit ids
    assert len({u.unit_id for u in units}) == 3
    assert make_units(uris[4:], 4)[0].unit_id != units[0].unit_id
    with pytest.raises(ValueError, match="unit size"):
        make_units(uris, 0)


def test_run_ids_must_be_safe_file_name_parts():
    assert check_run_id("nightly-2024.06_01") == "nightly-2024.06_01"
    for bad in ("", "a/b", "../x", "-x", "a b"):
        with pytest.raises(ValueError, match="run id"):
            check_run_id(bad)


def test_a_commit_entry_names_every_file_and_defines_the_done_set(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    units = make_units([f"file:///img/{i}.jpg" for i in range(5)], 3)
    committed = write_unit(store, "default", units[0], tables_for(list(units[0].uris)))
    assert committed["rows"] == {"masks": 2, "stats": 0, "errors": 1}
    files = committed["files"]
    for table, info in files.items():  # attempt-unique names, identified by size and md5
        data = store.get(info["path"])
        assert info["path"].startswith(f"{table}/part-default-") and len(data) == info["bytes"]
        assert hashlib.md5(data).hexdigest() == info["md5"]
    entries = [json.loads(store.get(rel)) for rel in store.list("_log/default")]
    assert [e["kind"] for e in entries] == ["begin", "commit"]
    done = load_state(store, "default")
    assert set(done.done_keys().to_pylist()) == set(units[0].uris) and load_state(store, "other-run").units == {}
    # a second attempt at the same unit writes new names: the committed files never change
    again = write_unit(store, "default", units[0], tables_for(list(units[0].uris)))
    assert {i["path"] for i in again["files"].values()}.isdisjoint(i["path"] for i in files.values())
    assert all(store.get(i["path"]) for i in files.values())


def test_sweep_removes_only_uncommitted_files_of_ended_invocations(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    units = make_units([f"file:///img/{i}.jpg" for i in range(6)], 3)
    killed = CommitLog(store, "default", "aaaaaaaaaaaa")
    killed.begin()
    committed = write_unit(store, "default", units[0], tables_for(list(units[0].uris)), commit_log=killed)
    # the killed invocation's half-written unit 1, a staging part, and files of someone else
    half = f"masks/part-default-aaaaaaaaaaaa-{units[1].unit_id}-0badc0de.parquet"
    store.put(half, b"half a parquet file")
    store.put(f"_staging/default/aaaaaaaaaaaa/{units[1].unit_id}/masks-12345678.parquet", b"a part")
    foreign = ["masks/README.txt", "masks/part-0.parquet", f"masks/part-elsewhere-bbbbbbbbbbbb-{units[1].unit_id}-00000000.parquet"]
    for rel in foreign:
        store.put(rel, b"a user's file is never touched")
    nxt = CommitLog(store, "default", "cccccccccccc")
    nxt.begin()  # the fence: the killed invocation can append nothing more
    done = load_state(store, "default")
    assert done.unswept("cccccccccccc") == ["aaaaaaaaaaaa"]
    removed = sweep(store, nxt, done, done.unswept("cccccccccccc"), SCHEMAS)
    assert sorted(removed) == sorted([half, f"_staging/default/aaaaaaaaaaaa/{units[1].unit_id}/masks-12345678.parquet"])
    assert all(store.exists(i["path"]) for i in committed["files"].values())
    assert all(store.exists(rel) for rel in foreign)
    # recorded: the next invocation sweeps it once more (a worker still alive then is gone with its driver),
    # then it is never listed again
    assert load_state(store, "default").unswept("cccccccccccc") == ["aaaaaaaaaaaa"]
    late = f"masks/part-default-aaaaaaaaaaaa-{units[1].unit_id}-1badc0de.parquet"
    store.put(late, b"a zombie worker's late write")
    third = CommitLog(store, "default", "dddddddddddd")
    third.begin()
    done = load_state(store, "default")
    assert sweep(store, third, done, done.unswept("dddddddddddd"), SCHEMAS) == [late]
    assert load_state(store, "default").unswept("dddddddddddd") == ["cccccccccccc"]


def test_committed_helper_reads_only_committed_rows_of_a_run(tmp_path, bucket):
    for output in (str(tmp_path / "out"), f"s3://{bucket}/seg"):
        store = OutputStore(output)
        units = make_units([f"s3://lake/{i}.jpg" for i in range(6)], 3)
        write_unit(store, "a", units[0], tables_for(list(units[0].uris), "a"))
        write_unit(store, "b", units[1], tables_for(list(units[1].uris), "b"))
        store.put(f"masks/part-a-aaaaaaaaaaaa-{units[1].unit_id}-00000000.parquet", b"debris: never read")
        assert len(committed_files(output, "masks")) == 2
        assert read_committed(output, "masks").num_rows == 4
        table = read_committed(output, "masks", run_id="b", columns=["uri", "run_id"])
        assert table.column_names == ["uri", "run_id"] and set(table["run_id"].to_pylist()) == {"b"}
        assert read_committed(output, "errors", run_id="nope").schema == ERRORS_SCHEMA
