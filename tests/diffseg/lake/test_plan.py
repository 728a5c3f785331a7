"""Planning loose files as a stream (diffseg.lake.plan): the plan holds every listed key not done in exactly
one unit, cut as diffseg.lake.units.make_units cuts sorted keys, in a spread order, read back unit by unit."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest

from diffseg.lake.done_index import empty_done, replay
from diffseg.lake.key_shards import key_shard
from diffseg.lake.plan import (
    KeySpill,
    UnitList,
    cut_units,
    plan_keys,
    remove_plans,
    shard_groups,
    units_of_plan,
)
from diffseg.lake.store import OutputStore
from diffseg.lake.units import make_units, unit_id_of


def hashed(n: int, start: int = 0) -> list[str]:
    return [f"s3://bucket/images/{hashlib.md5(str(i).encode()).hexdigest()}.jpg" for i in range(start, start + n)]


def done_with(committed: list[list[str]], errors: dict[str, bool] | None = None):
    """A DoneSet of units holding `committed` keys; `errors`: key -> retryable for its error row."""
    errors = errors or {}
    units = []
    for keys in committed:
        keys = sorted(keys)
        units.append({"unit_id": unit_id_of(keys), "keys": keys, "files": {},
                      "errors": [i for i, k in enumerate(keys) if k in errors and not errors[k]],
                      "retry": [i for i, k in enumerate(keys) if errors.get(k)]})
    return replay(empty_done(), [{"kind": "commit", "version": 0, "units": units}])


def test_spill_returns_every_key_of_its_shard(tmp_path):
    keys = hashed(5000)
    with KeySpill(shards=8, flush_bytes=4096) as spill:  # small buffers: many flushes
        for start in range(0, len(keys), 700):
            spill.add(pa.array(keys[start:start + 700]))
        shard = key_shard(pa.array(keys), 8)
        for s in range(8):
            assert sorted(spill.read(s).to_pylist()) == sorted(k for k, x in zip(keys, shard) if x == s)
        folder = spill.folder
    import os

    assert not os.path.exists(folder)


def test_cut_units_match_make_units():
    keys = sorted(hashed(23))
    batches, ids = cut_units(pa.array(keys), 5)
    expected = make_units(keys, 5)
    assert ids == [u.unit_id for u in expected]
    assert [tuple(b.column("uri").to_pylist()) for b in batches] == [u.uris for u in expected]
    assert batches[-1].column("pos").to_pylist() == [0, 1, 2] and batches[-1].column("unit_rows").to_pylist() == [3] * 3
    with pytest.raises(ValueError, match="unit size must be at least 1, got 0"):
        cut_units(pa.array(keys), 0)


def test_plan_holds_every_key_not_done_once_in_spread_units(tmp_path):
    listed = hashed(3000)
    done_keys = listed[:1000]
    failed = {listed[0]: True, listed[1]: False}  # a retryable and a final error row
    done = done_with([done_keys[i:i + 100] for i in range(0, 1000, 100)], failed)
    listing = pa.array(listed + listed[2000:2100])  # duplicates in the listing are planned once
    store = OutputStore(str(tmp_path))
    plan, counts = plan_keys(listing, done, store, "default", "0123456789ab", unit_size=64, shards=16, group_keys=1)
    units = list(units_of_plan(store, plan))
    planned = [k for u in units for k in u.uris]
    assert sorted(planned) == sorted(listed[1000:] + [listed[0]])  # the retryable error is planned again
    assert len(planned) == len(set(planned)) == plan.total_items == counts.to_process == 2001
    assert (counts.listed, counts.already_done) == (3000, 999)
    assert plan.held_keys().to_pylist() == [listed[0]]
    for unit in units:  # sorted members, id from them, every member of one shard
        assert list(unit.uris) == sorted(unit.uris) and unit.unit_id == unit_id_of(unit.uris)
        assert len(set(key_shard(pa.array(unit.uris), 16).tolist())) == 1
    # spread: consecutive units never hold adjacent keys of the sorted listing
    firsts = [u.uris[0] for u in units]
    assert firsts != sorted(firsts)
    assert sorted(plan.shards.tolist()) == plan.shards.tolist()
    # a plan without its first units gives the others, read back the same
    rest = plan.without([units[0].unit_id, units[3].unit_id])
    assert [u.unit_id for u in units_of_plan(store, rest)] == [u.unit_id for i, u in enumerate(units) if i not in (0, 3)]
    remove_plans(store, "default", ["0123456789ab"])
    assert store.list("_plans") == []


def test_retry_errors_plans_final_errors_too(tmp_path):
    listed = hashed(50)
    done = done_with([listed[:10]], {listed[0]: True, listed[1]: False})
    store = OutputStore(str(tmp_path))
    plan, counts = plan_keys(pa.array(listed), done, store, "r", "0123456789ab", 8, retry_errors=True, shards=4)
    assert counts.to_process == 42 and sorted(plan.held_keys().to_pylist()) == sorted(listed[:2])


def test_limit_takes_n_keys_spread_by_hash(tmp_path):
    listed = hashed(400)
    store = OutputStore(str(tmp_path))
    plan, counts = plan_keys(pa.array(listed), done_with([]), store, "r", "0123456789ab", 16, limit=50, shards=8,
                             group_keys=1)
    planned = [k for u in units_of_plan(store, plan) for k in u.uris]
    assert len(planned) == counts.to_process == 50 and counts.limited_out == 350
    assert planned != sorted(listed)[:50] and set(planned) <= set(listed)
    # the first shards, whole, then part of the next one
    shard = key_shard(pa.array(planned), 8)
    assert np.all(np.diff(shard) >= 0)


def test_a_listing_that_streams_batches_is_consumed_batch_by_batch(tmp_path):
    listed = hashed(300)

    class Streamed:
        def batches(self):
            for start in range(0, 300, 64):
                yield pa.array(listed[start:start + 64])

    store = OutputStore(str(tmp_path))
    plan, counts = plan_keys(Streamed(), done_with([]), store, "r", "0123456789ab", 32, shards=4)
    assert sorted(k for u in units_of_plan(store, plan) for k in u.uris) == sorted(listed)


def test_a_small_lake_or_delta_is_one_group_cut_as_its_sorted_keys(tmp_path):
    listed = hashed(100)
    store = OutputStore(str(tmp_path))
    plan, _ = plan_keys(pa.array(listed), done_with([]), store, "r", "0123456789ab", 30)
    assert shard_groups(np.full(256, 4)) == [range(0, 256)]
    assert shard_groups([3, 0, 2, 5, 1], group_keys=4) == [range(0, 3), range(3, 4), range(4, 5)]
    expected = make_units(listed, 30)  # full units, in the order of their ids
    assert [u.uris for u in units_of_plan(store, plan)] == [u.uris for u in sorted(expected, key=lambda u: u.unit_id)]
    # a delta of 40 new keys against 2,000 done ones: full units too, whatever the number of groups
    done = done_with([hashed(2000, start=1000)[i:i + 500] for i in range(0, 2000, 500)])
    delta = pa.array(hashed(2000, start=1000) + hashed(40, start=5000))
    plan, counts = plan_keys(delta, done, store, "r", "0123456789ac", 16, shards=16)
    assert counts.to_process == 40 and sorted(plan.rows.tolist()) == [8, 16, 16]


def test_unit_list_answers_as_a_stored_plan():
    units = UnitList(make_units(["a", "b", "c"], 2))
    ids, rows = units.facts()
    assert ids.tolist() == [u.unit_id.encode() for u in units] and rows.tolist() == [2, 1]
    assert units.total_items == 3 and units.held_keys().to_pylist() == ["a", "b", "c"]
    assert [u.unit_id for u in units.without([units[0].unit_id])] == [units[1].unit_id]


def test_a_sharded_done_index_is_asked_shard_by_shard(tmp_path):
    listed = hashed(200)

    class ShardedDone:  # what diffseg.lake.done_index offers once it is sharded
        asked = []

        def exclude_shard(self, keys, shard, retry_errors=False):
            self.asked.append((shard, retry_errors))
            done = pa.array(listed[:50])
            todo = keys.filter(pa.compute.invert(pa.compute.is_in(keys, value_set=done)))
            return todo, todo.filter(pa.compute.equal(todo, listed[60]))

    store = OutputStore(str(tmp_path))
    plan, counts = plan_keys(pa.array(listed), ShardedDone(), store, "r", "0123456789ab", 64, retry_errors=True)
    assert ShardedDone.asked == [(s, True) for s in range(256)]
    assert (counts.to_process, plan.held_keys().to_pylist()) == (150, [listed[60]])


def test_a_done_index_reading_shards_ahead_is_used_through_exclude_shards(tmp_path):
    listed = hashed(300)
    inner = done_with([listed[:100]], {listed[5]: True})

    class Prefetching:  # exclude_shards over (shard, keys) pairs, as diffseg.lake.done_index offers it
        seen = []

        def exclude_shards(self, groups, retry_errors=False):
            for shard, keys in list(groups):  # reads every shard before answering: order must not matter
                self.seen.append(shard)
                todo = keys.filter(pa.compute.invert(pa.compute.is_in(keys, value_set=inner.done_keys())))
                yield shard, todo, todo.filter(pa.compute.equal(todo, listed[5]))

    store = OutputStore(str(tmp_path))
    plan, counts = plan_keys(pa.array(listed), Prefetching(), store, "r", "0123456789ab", 64)
    assert Prefetching.seen == list(range(256))
    assert (counts.listed, counts.already_done, counts.to_process) == (300, 99, 201)
    assert plan.held_keys().to_pylist() == [listed[5]]
    assert sorted(k for u in units_of_plan(store, plan) for k in u.uris) == sorted(listed[100:] + [listed[5]])
