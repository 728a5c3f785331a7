"""The done index: planning reads the newest index snapshot plus the log entries written since, gets the
same done set as replaying the whole log, and reports items held by two units."""

from __future__ import annotations

import pytest

from diffseg.lake.done_index import FINAL, OK, RETRY, load_state, write_index
from diffseg.lake.log import CommitLog, list_versions
from diffseg.lake.schemas import ERRORS_SCHEMA, SCHEMAS
from diffseg.lake.store import OutputStore
from diffseg.lake.units import Unit, make_units, unit_id_of, write_unit


def empty_tables():
    return {t: s.empty_table() for t, s in SCHEMAS.items()}


def begun(store, run_id="r") -> CommitLog:
    from diffseg.lake.log import new_invocation_id

    commit_log = CommitLog(store, run_id, new_invocation_id())
    commit_log.begin()
    return commit_log


def test_index_plus_new_entries_equals_the_whole_log_and_filters_a_listing(tmp_path):
    store = OutputStore(str(tmp_path))
    uris = [f"s3://lake/{i:03d}.jpg" for i in range(30)]
    units = make_units(uris[:20], 4)
    first = begun(store)
    for unit in units[:3]:
        write_unit(store, "r", unit, empty_tables(), commit_log=first)
    done = load_state(store, "r")
    assert (len(done), done.entries_read) == (12, 4)  # begin + 3 commits
    write_index(store, first, done)
    second = begun(store)
    for unit in units[3:]:  # committed by the next invocation, before its own index
        write_unit(store, "r", unit, empty_tables(), commit_log=second)
    again = load_state(store, "r")
    assert (len(again), again.entries_read) == (20, 3)  # the snapshot, plus begin and two commits
    assert again.exclude(uris) == uris[20:] and "s3://lake/000.jpg" in again and "s3://lake/029.jpg" not in again
    write_index(store, second, again)
    assert load_state(store, "r").entries_read == 0 and load_state(store, "other").exclude(uris[:2]) == uris[:2]
    assert again.error_fraction() == (20, 0) and again.duplicates() == 0
    assert len(store.list("_index/r")) == 2  # the older snapshot is gone once a newer entry names its files
    # a lost hint costs a whole replay, never a wrong answer
    store.remove(["_log/r/_last_index.json"])
    full = load_state(store, "r")
    assert full.entries_read == len(list_versions(store, "r")) and sorted(full.done_keys().to_pylist()) == uris[:20]


def test_duplicates_from_overlapping_units_are_counted(tmp_path):
    store = OutputStore(str(tmp_path))
    a = ("s3://lake/a.jpg", "s3://lake/b.jpg")
    b = ("s3://lake/b.jpg", "s3://lake/c.jpg")  # written by a tool that did not plan against the log
    for uris in (a, b):
        write_unit(store, "r", Unit(unit_id_of(uris), uris), empty_tables())
    done = load_state(store, "r")
    assert done.duplicates() == 1 and len(done) == 4
    assert done.exclude(["s3://lake/c.jpg", "s3://lake/d.jpg"]) == ["s3://lake/d.jpg"]


def test_error_keys_carry_their_status_and_only_retryable_ones_are_planned_again(tmp_path):
    import pyarrow as pa

    store = OutputStore(str(tmp_path))
    unit = make_units(["s3://lake/a.jpg", "s3://lake/b.jpg", "s3://lake/c.jpg"], 3)[0]
    errors = pa.Table.from_pylist([
        {"uri": "s3://lake/a.jpg", "stage": "decode", "error_type": "ImageDecodeError", "message": "bad",
         "retryable": False, "run_id": "r"},
        {"uri": "s3://lake/b.jpg", "stage": "read", "error_type": "OSError", "message": "503 SlowDown",
         "retryable": True, "run_id": "r"}], schema=ERRORS_SCHEMA)
    write_unit(store, "r", unit, {**empty_tables(), "errors": errors})
    done = load_state(store, "r")
    status = dict(zip(*(done.all_keys()[c].to_pylist() for c in ("uri", "status"))))
    assert status == {"s3://lake/a.jpg": FINAL, "s3://lake/b.jpg": RETRY, "s3://lake/c.jpg": OK}
    listing = list(unit.uris) + ["s3://lake/d.jpg"]
    assert done.exclude(listing) == ["s3://lake/b.jpg", "s3://lake/d.jpg"]
    assert done.exclude(listing, retry_errors=True) == ["s3://lake/a.jpg", "s3://lake/b.jpg", "s3://lake/d.jpg"]
    assert done.error_fraction() == (3, 2)


def test_planning_in_arrow_cuts_the_same_units_as_planning_python_lists(tmp_path):
    """jobs.segment plans from an Arrow listing (list_inputs_array, DoneSet.exclude of an array,
    units_of_sorted): the same units, in the same order, as make_units of the Python list filtered."""
    import random

    import pyarrow as pa

    from diffseg.lake.units import units_of_sorted

    store = OutputStore(str(tmp_path))
    uris = sorted(f"s3://lake/{random.Random(i).randrange(10**9):09d}/é{i}.jpg" for i in range(3000))
    done_units = make_units(random.Random(0).sample(uris, 1100), 100)
    first = begun(store)
    for unit in done_units[:7]:
        write_unit(store, "r", unit, empty_tables(), commit_log=first)
    write_index(store, first, load_state(store, "r"))
    for unit in done_units[7:]:  # entries newer than the index
        write_unit(store, "r", unit, empty_tables(), commit_log=first)
    done = load_state(store, "r")
    assert (len(done), done.entries_read) == (1100, 4)
    old = make_units(done.exclude(uris), 64)
    todo = done.exclude(pa.array(uris))
    assert isinstance(todo, pa.Array) and len(todo) == 1900
    for size in (64, 1, 5000):
        assert units_of_sorted(todo, size) == make_units(done.exclude(uris), size)
    assert [u.unit_id for u in units_of_sorted(todo, 64)] == [u.unit_id for u in old] and len(old) == 30
    assert units_of_sorted(todo.slice(0, 0), 64) == []
    with pytest.raises(ValueError, match="unit size must be at least 1"):
        units_of_sorted(todo, 0)
