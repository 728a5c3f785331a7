"""An OUTPUT written by diffseg 0.2 (commit markers) becomes an ordinary run of this version: its units are
imported into the run's log once, its uncommitted 0.2 debris is removed, and nothing is redone."""

from __future__ import annotations

import json

import pyarrow.dataset as pads
from test_units import tables_for

from diffseg.lake.done_index import load_state
from diffseg.lake.legacy import import_markers
from diffseg.lake.log import CommitLog
from diffseg.lake.schemas import SCHEMAS, SEGMENT_TABLES
from diffseg.lake.store import OutputStore
from diffseg.lake.units import make_units, read_committed


def write_v02_unit(store, run_id, unit):
    files = {t: f"{t}/part-{run_id}-{unit.unit_id}.parquet" for t in SCHEMAS}
    tables = tables_for(list(unit.uris), run_id)
    for t, path in files.items():
        store.put_parquet(path, tables[t])
    rows = {t: tables[t].num_rows for t in SCHEMAS}
    store.put_json(f"_commits/{run_id}/{unit.unit_id}.json", {"format": 1, "run_id": run_id, "unit_id": unit.unit_id,
                                                              "files": files, "rows": rows, "uris": list(unit.uris)})


def test_v02_markers_are_imported_once_and_their_debris_removed(tmp_path):
    store = OutputStore(str(tmp_path))
    units = make_units([f"s3://lake/{i}.jpg" for i in range(6)], 3)
    write_v02_unit(store, "default", units[0])
    write_v02_unit(store, "default", units[1])
    debris = f"masks/part-default-{'f' * 16}.parquet"  # a killed 0.2 invocation's file no marker names
    store.put(debris, b"half-written")
    commit_log = CommitLog(store, "default", "0123456789ab")
    commit_log.begin()
    assert import_markers(store, commit_log, SEGMENT_TABLES) == 2
    done = load_state(store, "default")
    assert sorted(done.units) == sorted(u.unit_id for u in units)
    status = dict(zip(*(done.all_keys()[c].to_pylist() for c in ("uri", "status"))))
    assert status["s3://lake/0.jpg"] == 1 and status["s3://lake/1.jpg"] == 0  # tables_for: first URI is an error
    assert not store.exists(debris) and store.list("_commits") == []
    assert read_committed(str(tmp_path), "masks").num_rows == 4
    plain = pads.dataset(str(tmp_path / "masks"), format="parquet").to_table()
    assert plain.num_rows == 4
    assert import_markers(store, commit_log, SEGMENT_TABLES) == 0  # nothing left to import
    entry = json.loads(store.get("_log/default/00000000000000000001.json"))
    assert entry["kind"] == "commit" and entry["imported_from"] == "diffseg 0.2 markers"
