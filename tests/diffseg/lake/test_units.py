"""Work units, commit markers, the done set, debris removal and the committed-read helper."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from diffseg.lake.schemas import ERRORS_SCHEMA, MASKS_SCHEMA, STATS_SCHEMA
from diffseg.lake.store import OutputStore
from diffseg.lake.units import (
    check_run_id,
    committed_files,
    done_set,
    find_debris,
    load_commits,
    make_units,
    read_committed,
    remove_debris,
    write_unit,
)


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


def test_commit_marker_is_written_last_and_defines_the_done_set(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    units = make_units([f"file:///img/{i}.jpg" for i in range(5)], 3)
    marker = write_unit(store, "default", units[0], tables_for(list(units[0].uris)))
    assert marker["rows"] == {"masks": 2, "stats": 0, "errors": 1}
    assert sorted(store.list("")) == sorted(
        [f"{t}/part-default-{units[0].unit_id}.parquet" for t in ("masks", "stats", "errors")]
        + [f"_commits/default/{units[0].unit_id}.json"]
    )
    markers = load_commits(store)
    assert done_set(markers) == set(units[0].uris)
    assert load_commits(store, "other-run") == []


def test_debris_of_a_killed_run_is_found_and_removed(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    units = make_units([f"file:///img/{i}.jpg" for i in range(6)], 3)
    write_unit(store, "default", units[0], tables_for(list(units[0].uris)))
    # a killed run: unit 1's masks file written, its marker not; a temporary file; a cut-short marker
    store.put(f"masks/part-default-{units[1].unit_id}.parquet", b"half a parquet file")
    store.put("stats/.tmp-123-part-default-x.parquet", b"tmp")
    store.put("_commits/default/ffffffffffffffff.json", b'{"unit_id": "ffff')
    store.put(f"_staging/default/{units[1].unit_id}/masks-0123456789abcdef.parquet", b"a part never compacted")
    # files this job could not have written: other names, runs this OUTPUT never had, sub-folders
    foreign = ["masks/README.txt", "masks/part-0.parquet", "masks/part-elsewhere-0123456789abcdef.parquet",
               f"masks/2024/part-default-{units[1].unit_id}.parquet"]
    for rel in foreign:
        store.put(rel, b"a user's file is never touched")
    markers = load_commits(store)
    assert [m["unit_id"] for m in markers] == [units[0].unit_id]
    debris = find_debris(store, markers)
    assert sorted(debris) == sorted([f"masks/part-default-{units[1].unit_id}.parquet",
                                     "stats/.tmp-123-part-default-x.parquet",
                                     f"_staging/default/{units[1].unit_id}/masks-0123456789abcdef.parquet",
                                     "_commits/default/ffffffffffffffff.json"])
    assert sorted(remove_debris(store, markers)) == sorted(debris)
    assert find_debris(store, load_commits(store)) == []
    assert all(store.exists(rel) for rel in foreign)
    # a run whose first invocation was killed before its first commit: the runner names it
    store.put(f"masks/part-first-{units[1].unit_id}.parquet", b"half")
    assert find_debris(store, load_commits(store), runs={"first"}) == [f"masks/part-first-{units[1].unit_id}.parquet"]


def test_committed_helper_reads_only_committed_rows_of_a_run(tmp_path, bucket):
    for output in (str(tmp_path / "out"), f"s3://{bucket}/seg"):
        store = OutputStore(output)
        units = make_units([f"s3://lake/{i}.jpg" for i in range(6)], 3)
        write_unit(store, "a", units[0], tables_for(list(units[0].uris), "a"))
        write_unit(store, "b", units[1], tables_for(list(units[1].uris), "b"))
        store.put(f"masks/part-a-{units[1].unit_id}.parquet", b"debris: never read")
        assert len(committed_files(output, "masks")) == 2
        assert read_committed(output, "masks").num_rows == 4
        table = read_committed(output, "masks", run_id="b", columns=["uri", "run_id"])
        assert table.column_names == ["uri", "run_id"] and set(table["run_id"].to_pylist()) == {"b"}
        assert read_committed(output, "errors", run_id="nope").schema == ERRORS_SCHEMA
        marker = json.loads(store.get(f"_commits/a/{units[0].unit_id}.json"))
        assert marker["uris"] == list(units[0].uris)
