"""The done index: planning reads one compacted index plus the markers written since, gets the same done
set as reading every marker, and reports items held by two units (duplicates of older versions)."""

from __future__ import annotations

import pytest

from diffseg.lake.done_index import load_done, merge_index
from diffseg.lake.schemas import SCHEMAS
from diffseg.lake.store import OutputStore
from diffseg.lake.units import Unit, make_units, unit_id_of, write_unit


def empty_tables():
    return {t: s.empty_table() for t, s in SCHEMAS.items()}


def test_index_plus_new_markers_equals_every_marker_and_filters_a_listing(tmp_path):
    store = OutputStore(str(tmp_path))
    uris = [f"s3://lake/{i:03d}.jpg" for i in range(30)]
    units = make_units(uris[:20], 4)
    for unit in units[:3]:
        write_unit(store, "r", unit, empty_tables())
    done = load_done(store, "r")
    assert (len(done), done.markers_read) == (12, 3)
    merge_index(store, "r", done, [])
    for unit in units[3:]:  # committed by the next invocation, before its own merge
        write_unit(store, "r", unit, empty_tables())
    again = load_done(store, "r")
    assert (len(again), again.markers_read) == (20, 2)  # the index, plus only the two new markers
    assert again.exclude(uris) == uris[20:] and "s3://lake/000.jpg" in again and "s3://lake/029.jpg" not in again
    merge_index(store, "r", again, [])
    assert load_done(store, "r").markers_read == 0 and load_done(store, "other").exclude(uris[:2]) == uris[:2]
    assert again.error_fraction() == (20, 0) and again.duplicates() == 0


def test_duplicates_from_overlapping_units_are_counted_and_a_broken_index_is_ignored(tmp_path):
    store = OutputStore(str(tmp_path))
    a = ("s3://lake/a.jpg", "s3://lake/b.jpg")
    b = ("s3://lake/b.jpg", "s3://lake/c.jpg")  # an older version let two invocations overlap
    for uris in (a, b):
        write_unit(store, "r", Unit(unit_id_of(uris), uris), empty_tables())
    done = load_done(store, "r")
    assert done.duplicates() == 1 and len(done) == 4
    store.put("_index/r/units.parquet", b"not parquet")
    store.put("_index/r/uris.parquet", b"not parquet")
    rebuilt = load_done(store, "r")
    assert rebuilt.markers_read == 2 and rebuilt.exclude(["s3://lake/c.jpg", "s3://lake/d.jpg"]) == ["s3://lake/d.jpg"]


def test_planning_in_arrow_cuts_the_same_units_as_planning_python_lists(tmp_path):
    """jobs.segment plans from an Arrow listing (list_inputs_array, DoneSet.exclude of an array,
    units_of_sorted): the same units, in the same order, as make_units of the Python list filtered."""
    import random

    import pyarrow as pa

    from diffseg.lake.units import units_of_sorted

    store = OutputStore(str(tmp_path))
    uris = sorted(f"s3://lake/{random.Random(i).randrange(10**9):09d}/é{i}.jpg" for i in range(3000))
    done_units = make_units(random.Random(0).sample(uris, 1100), 100)
    for unit in done_units[:7]:
        write_unit(store, "r", unit, empty_tables())
    merge_index(store, "r", load_done(store, "r"), [])
    for unit in done_units[7:]:  # markers newer than the index
        write_unit(store, "r", unit, empty_tables())
    done = load_done(store, "r")
    assert (len(done), done.markers_read) == (1100, 4)
    old = make_units(done.exclude(uris), 64)
    todo = done.exclude(pa.array(uris))
    assert isinstance(todo, pa.Array) and len(todo) == 1900
    for size in (64, 1, 5000):
        assert units_of_sorted(todo, size) == make_units(done.exclude(uris), size)
    assert [u.unit_id for u in units_of_sorted(todo, 64)] == [u.unit_id for u in old] and len(old) == 30
    assert units_of_sorted(todo.slice(0, 0), 64) == []
    with pytest.raises(ValueError, match="unit size must be at least 1"):
        units_of_sorted(todo, 0)
