"""The sharded, appended done index (issue 22 item 3): segments per index write, LSM merges, latest wins,
shard probes, the diffseg 0.3 snapshot format, fenced writers. Answers are checked against a reference
model replaying the log entries in plain Python (a dict of (key, unit) pairs)."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffseg.lake.done_index import FINAL, OK, RETRY, empty_done, load_state, replay, write_index
from diffseg.lake.index_segments import merge_count
from diffseg.lake.key_shards import KEY_SHARDS, key_shard
from diffseg.lake.log import CommitLog, LogFencedError, list_versions, new_invocation_id, read_entries
from diffseg.lake.retry import release_errors
from diffseg.lake.schemas import ERRORS_SCHEMA, SCHEMAS, SEGMENT_TABLES
from diffseg.lake.store import OutputStore
from diffseg.lake.units import Unit, unit_id_of, write_unit


def begun(store, run_id="r") -> CommitLog:
    commit_log = CommitLog(store, run_id, new_invocation_id())
    commit_log.begin()
    return commit_log


def uri(i: int) -> str:
    return f"s3://bucket/images/{random.Random(i).getrandbits(128):032x}.jpg"


def commit(store, commit_log, keys, retry=(), final=()) -> Unit:
    """Commits one unit of `keys` with error rows for `retry` (retryable) and `final` keys."""
    keys = tuple(sorted(keys))
    unit = Unit(unit_id_of(keys), keys)
    rows = [{"uri": k, "stage": "read", "error_type": "OSError", "message": "503 SlowDown", "retryable": True,
             "run_id": commit_log.run_id} for k in retry]
    rows += [{"uri": k, "stage": "decode", "error_type": "ValueError", "message": "bad", "retryable": False,
              "run_id": commit_log.run_id} for k in final]
    errors = pa.Table.from_pylist(rows, schema=ERRORS_SCHEMA)
    write_unit(store, commit_log.run_id, unit, {**{t: s.empty_table() for t, s in SCHEMAS.items()}, "errors": errors},
               commit_log=commit_log)
    return unit


def commit_fast(commit_log, units: list[tuple[str, list[str]]]) -> None:
    """A commit entry of units (id, keys) naming files that are never read (index tests only)."""
    files = {"masks": {"path": "masks/x.parquet", "bytes": 1, "md5": "0", "rows": 0}}
    commit_log.append("commit", {"units": [{"unit_id": u, "keys": keys, "files": files, "errors": [], "retry": []}
                                           for u, keys in units]})


def reference(store, run_id="r") -> dict:
    """{(key, unit_id): status} replaying every entry in plain Python: a retry entry removes the pairs it releases."""
    pairs = {}
    for entry in read_entries(store, run_id, list_versions(store, run_id)):
        for unit in entry.get("units", ()) if entry["kind"] in ("commit", "retry") else ():
            if entry["kind"] == "retry":
                for key in unit["released"]:
                    pairs.pop((key, unit["unit_id"]), None)
                continue
            for i, key in enumerate(unit["keys"]):
                pairs[(key, unit["unit_id"])] = FINAL if i in unit["errors"] else RETRY if i in unit["retry"] else OK
    return pairs


def reference_todo(pairs: dict, listing: list[str], retry_errors=False) -> list[str]:
    done = {k for (k, _), s in pairs.items() if s == OK or (s == FINAL and not retry_errors)}
    return [k for k in listing if k not in done]


def test_appends_merges_and_releases_equal_a_replay_of_the_whole_log(tmp_path):
    """Many invocations commit units with retryable and final errors, write the index, release error keys
    and commit them again: after each step the loaded state (segments + delta) answers like the log."""
    store = OutputStore(str(tmp_path))
    rng = random.Random(7)
    keys = [uri(i) for i in range(600)]
    listing = keys + [uri(i) for i in range(600, 640)]
    todo = list(keys)
    rng.shuffle(todo)
    for round_ in range(6):
        commit_log = begun(store)
        done = load_state(store, "r")
        for _ in range(4):
            batch, todo = todo[:25], todo[25:]
            if batch:
                commit(store, commit_log, batch, retry=batch[:3], final=batch[3:4])
            if rng.random() < 0.6:
                write_index(store, commit_log, load_state(store, "r"))
        done = load_state(store, "r")
        pending, held = done.exclude(pa.array(listing)), []
        shards = key_shard(pending)
        for shard in np.unique(shards):
            held += done.exclude_shard(pending.filter(pa.array(shards == shard)), int(shard))[1].to_pylist()
        if held and round_ % 2:  # hand the retryable rows back and process those keys again
            assert release_errors(store, commit_log, done, pa.array(held), SEGMENT_TABLES) == len(held)
            commit(store, commit_log, held[:10])
            todo = held[10:] + todo
        write_index(store, commit_log, load_state(store, "r"))
        state, pairs = load_state(store, "r"), reference(store)
        assert state.exclude(listing) == reference_todo(pairs, listing)
        assert state.exclude(listing, retry_errors=True) == reference_todo(pairs, listing, retry_errors=True)
        live = state.all_keys()
        assert sorted(zip(*(live[c].to_pylist() for c in ("uri", "unit_id", "status")))) == \
            sorted((k, u, s) for (k, u), s in pairs.items())
        whole = replay(empty_done(), read_entries(store, "r", list_versions(store, "r")))
        assert dict(state.units) == dict(whole.units) and len(state) == len(whole) == len(pairs)
        assert state.error_fraction() == whole.error_fraction()
        assert sorted(state.retryable().column("uri").to_pylist()) == sorted(
            k for (k, _), s in pairs.items() if s == RETRY)
        assert state.duplicates() == state.count_duplicates() == 0
        assert state.delta == [] and state.entries_read <= 1  # nothing after the index but a begin at most
        assert len(state.segments) <= 8


def test_a_small_append_after_a_big_one_writes_only_its_own_rows(tmp_path):
    store = OutputStore(str(tmp_path))
    commit_log = begun(store)
    big = [uri(i) for i in range(20000)]
    commit_fast(commit_log, [(f"{u:016x}", big[u * 256: (u + 1) * 256]) for u in range((len(big) + 255) // 256)])
    write_index(store, commit_log, load_state(store, "r"))
    base = {r: store.fs.size(store.path(r)) for r in store.list("_index/r")}
    commit_fast(commit_log, [("f" * 16, [uri(i) for i in range(20000, 20100)])])
    done = load_state(store, "r")
    assert (len(done), done.entries_read) == (20100, 1)
    write_index(store, commit_log, done)
    after = {r: store.fs.size(store.path(r)) for r in store.list("_index/r")}
    new = {r: n for r, n in after.items() if r not in base}
    assert set(base) <= set(after) and len(new) == 2  # the base is kept as it was: one new keys + units file
    keys_file = next(r for r in new if r.endswith("-keys.parquet"))
    assert pq.read_metadata(store.path(keys_file)).num_rows == 100
    assert sum(new.values()) < sum(base.values()) / 5
    assert [s.keys_rows for s in done.segments] == [20000, 100]
    assert done.exclude([uri(5), uri(20050), uri(30000)]) == [uri(30000)]


def test_the_merge_policy_never_rewrites_a_big_base_for_a_small_delta():
    assert merge_count([10**8, 10**6]) == 1  # a nightly delta on a big base: appended
    assert merge_count([100, 60]) == 2  # at least half the one before: merged
    assert merge_count([2000, 300, 200]) == 2 and merge_count([1000, 300, 200]) == 3
    assert merge_count([3**i for i in range(12, 2, -1)]) == 3  # ten segments a third of the one before: 8 stay
    sizes, rewritten = [], 0
    for _ in range(1000):  # equal appends: each row is rewritten O(log n) times, at most 8 segments live
        sizes.append(1)
        k = merge_count(sizes)
        rewritten += sum(sizes[-k:]) if k > 1 else 1
        sizes = sizes[: len(sizes) - k] + [sum(sizes[len(sizes) - k:])]
        assert len(sizes) <= 8 and sizes == sorted(sizes, reverse=True)
    assert rewritten < 1000 * 12  # log2(1000) ~ 10 rewrites per row


def test_compaction_keeps_few_segments_and_removes_the_merged_files(tmp_path):
    store = OutputStore(str(tmp_path))
    commit_log = begun(store)
    for step in range(12):
        commit_fast(commit_log, [(f"{step:016x}", [uri(step * 100 + i) for i in range(100)])])
        done = load_state(store, "r")
        write_index(store, commit_log, done)
        sizes = [s.size for s in done.segments]
        assert sizes == sorted(sizes, reverse=True) and all(2 * b < a for a, b in zip(sizes, sizes[1:]))
        named = {f for s in done.segments for f in (s.keys, s.units)}
        assert set(store.list("_index/r")) == named
    assert sum(s.keys_rows for s in done.segments) == 1200
    assert sorted(done.all_keys().column("uri").to_pylist()) == sorted(uri(i) for i in range(1200))


def test_latest_wins_across_segments(tmp_path):
    """A retryable key in one segment, its release (a tombstone) in the next, its new commit in the delta:
    done. A unit released whole and committed again under the same id: its new rows win."""
    store = OutputStore(str(tmp_path))
    commit_log = begun(store)
    a, b = [uri(1), uri(2)], [uri(3), uri(4)]
    unit_a = commit(store, commit_log, a, retry=a[:1])
    unit_b = commit(store, commit_log, b, retry=b)
    write_index(store, commit_log, load_state(store, "r"))
    done = load_state(store, "r")
    assert done.exclude(a + b) == [a[0]] + b
    release_errors(store, commit_log, done, pa.array([a[0]] + b), SEGMENT_TABLES)
    write_index(store, commit_log, done)  # the tombstones: a segment of their own (merged or not)
    commit(store, commit_log, [a[0]])
    commit(store, commit_log, b, final=b[1:])  # the same unit id as unit_b, new outcome
    done = load_state(store, "r")
    assert done.delta and done.exclude(a + b) == []
    assert done.exclude(a + b, retry_errors=True) == [b[1]]
    assert {k: s for k, _, s in zip(*(done.all_keys()[c].to_pylist() for c in ("uri", "unit_id", "status")))} == \
        {a[0]: OK, a[1]: OK, b[0]: OK, b[1]: FINAL}
    assert done.units[unit_b.unit_id]["items"] == 2 and done.units[unit_a.unit_id]["items"] == 1
    assert len(done) == 4 and done.duplicates() == 0


def test_exclude_shard_agrees_with_exclude_and_names_the_held_keys(tmp_path):
    store = OutputStore(str(tmp_path))
    commit_log = begun(store)
    keys = [uri(i) for i in range(3000)]
    for u in range(0, 2000, 200):
        chunk = keys[u: u + 200]
        commit(store, commit_log, chunk, retry=chunk[:5], final=chunk[5:8])
        if u == 1000:
            write_index(store, commit_log, load_state(store, "r"))
    done = load_state(store, "r")
    assert len(done.segments) == 1 and done.delta  # half stored, half replayed
    listing = pa.array(keys)
    for retry_errors in (False, True):
        whole = done.exclude(listing, retry_errors=retry_errors).to_pylist()
        shards = key_shard(listing)
        todo, held = [], []
        for shard in np.unique(shards):
            part = listing.filter(pa.array(shards == shard))
            t, h = done.exclude_shard(part, int(shard), retry_errors=retry_errors)
            assert t.to_pylist() == [k for k in part.to_pylist() if k in set(whole)]  # same order
            todo += t.to_pylist()
            held += h.to_pylist()
        assert sorted(todo) == sorted(whole)
        groups = [(int(s), listing.filter(pa.array(shards == s))) for s in np.unique(shards)]
        streamed = list(done.exclude_shards(groups, retry_errors=retry_errors))
        assert [s for s, _, _ in streamed] == [s for s, _ in groups]
        assert sorted(k for _, t, _ in streamed for k in t.to_pylist()) == sorted(whole)
        assert sorted(k for _, _, h in streamed for k in h.to_pylist()) == sorted(held)
        expected = {k for u in range(0, 2000, 200) for k in keys[u: u + (8 if retry_errors else 5)]}
        assert set(held) == expected and len(whole) == 1000 + len(expected)
    assert done.exclude(keys[:3]) == keys[:3] and done.exclude(keys[10:12]) == []
    wrong = (int(key_shard([keys[0]])[0]) + 1) % KEY_SHARDS
    with pytest.raises(ValueError, match=f"not {wrong}: group keys with diffseg.lake.key_shards.key_shard"):
        done.exclude_shard(pa.array(keys[:1]), wrong)


def test_a_probe_reads_one_range_per_segment_holding_the_shard(tmp_path, monkeypatch):
    store = OutputStore(str(tmp_path))
    commit_log = begun(store)
    for step in range(3):  # 300 rows, then 30 and 3: three segments (each less than half the one before)
        n = 300 // 10**step
        commit_fast(commit_log, [(f"{step:016x}", [uri(step * 1000 + i) for i in range(n)])])
        write_index(store, commit_log, load_state(store, "r"))
    done = load_state(store, "r")
    assert [s.keys_rows for s in done.segments] == [300, 30, 3]
    calls = []
    real = type(store.fs).cat_ranges

    def counting(self, paths, starts, ends, **kwargs):
        calls.append(list(zip(paths, starts, ends)))
        return real(self, paths, starts, ends, **kwargs)

    monkeypatch.setattr(type(store.fs), "cat_ranges", counting)
    probe = uri(2000)  # in the newest segment
    shard = int(key_shard([probe])[0])
    assert done.exclude_shard(pa.array([probe, uri(5000)]), shard)[0].to_pylist() == [uri(5000)]
    holding = [s for s in done.segments if s.shard_rows[shard]]
    assert len(calls) == 1 and sorted(p for p, _, _ in calls[0]) == sorted(store.path(s.keys) for s in holding)
    for seg, (_, start, end) in zip(holding, calls[0]):
        assert end - start < seg.keys_bytes  # a range of the file, not the file


def test_an_index_of_the_old_format_loads_and_is_rewritten_sharded(tmp_path):
    """An index entry of diffseg 0.3 (files {"keys", "units"}: one snapshot) still loads; the next index
    write rewrites it into sharded segments and removes the snapshot."""
    store = OutputStore(str(tmp_path))
    commit_log = begun(store)
    keys = [uri(i) for i in range(40)]
    commit_fast(commit_log, [("a" * 16, keys[:20])])
    files_json = json.dumps({"masks": {"path": "masks/x.parquet", "bytes": 1, "md5": "0", "rows": 0}}, separators=(",", ":"))
    stem = f"_index/r/{commit_log.invocation}-{commit_log.next_version - 1:020d}"
    old = {"keys": f"{stem}-keys.parquet", "units": f"{stem}-units.parquet"}
    store.put_parquet(old["keys"], pa.table({"uri": keys[:20], "unit_id": ["a" * 16] * 20,
                                             "status": pa.array([RETRY] + [OK] * 19, pa.int8())}))
    store.put_parquet(old["units"], pa.table({"unit_id": ["a" * 16], "items": [20], "errors": [1], "retry": [1],
                                              "files": [files_json]}))
    entry = commit_log.append("index", {"covers": commit_log.next_version - 1, "files": old, "invocations": {},
                                        "keys": 20, "units": 1})
    commit_log.write_hint("_last_index.json", {"version": entry["version"]})
    commit_fast(commit_log, [("b" * 16, keys[20:30])])
    done = load_state(store, "r")
    assert (done.index_version, done.entries_read, len(done)) == (entry["version"], 1, 30)
    assert done.exclude(keys) == [keys[0]] + keys[30:]
    assert done.units["a" * 16]["retry"] == 1 and done.retryable().column("uri").to_pylist() == [keys[0]]
    write_index(store, commit_log, done)
    assert not any(store.exists(r) for r in old.values()) and len(done.segments) == 1
    again = load_state(store, "r")
    assert "segments" in read_entries(store, "r", [again.index_version])[0]
    assert again.exclude(keys) == [keys[0]] + keys[30:] and len(again) == 30


def test_a_fenced_writer_names_no_segment_and_its_files_are_removed(tmp_path):
    store = OutputStore(str(tmp_path))
    a = begun(store)
    commit_fast(a, [("a" * 16, [uri(i) for i in range(10)])])
    state_a = load_state(store, "r")
    b = begun(store)  # takes the run over
    commit_fast(b, [("b" * 16, [uri(i) for i in range(10, 20)])])
    with pytest.raises(LogFencedError):
        write_index(store, a, state_a)
    orphans = [r for r in store.list("_index/r") if a.invocation in r]
    assert len(orphans) == 2  # written, never named
    named = [f for e in read_entries(store, "r", list_versions(store, "r")) if e["kind"] == "index"
             for s in e["segments"] for f in (s["keys"], s["units"])]
    assert not set(orphans) & set(named)
    write_index(store, b, load_state(store, "r"))
    assert not any(store.exists(r) for r in orphans)
    done = load_state(store, "r")
    assert len(done) == 20 and done.exclude([uri(0), uri(15), uri(99)]) == [uri(99)]


def test_copies_share_the_keys_and_write_index_drops_the_delta(tmp_path):
    store = OutputStore(str(tmp_path))
    commit_log = begun(store)
    commit_fast(commit_log, [("a" * 16, [uri(i) for i in range(50)])])
    done = load_state(store, "r")
    copy = done.copy()
    assert copy.delta[0] is done.delta[0] and copy.units["a" * 16] is done.units["a" * 16]
    commit_fast(commit_log, [("b" * 16, [uri(i) for i in range(50, 60)])])
    replay(copy, read_entries(store, "r", [commit_log.next_version - 1]))
    assert (len(done), len(copy)) == (50, 60)
    write_index(store, commit_log, copy)
    assert (copy.delta, copy.changes, len(copy)) == ([], 0, 60) and len(done.delta) == 1
    assert copy.exclude([uri(55), uri(70)]) == [uri(70)]
    assert KEY_SHARDS == copy.shards == 256


def test_exclude_takes_chunked_listings_and_an_empty_run_hashes_nothing(tmp_path):
    store = OutputStore(str(tmp_path))
    commit_log = begun(store)
    keys = [uri(i) for i in range(30)]
    assert load_state(store, "r").exclude(keys) == keys  # only a begin entry: nothing committed
    commit_fast(commit_log, [("a" * 16, keys[:10])])
    write_index(store, commit_log, load_state(store, "r"))
    done = load_state(store, "r")
    listing = pa.chunked_array([keys[:15], keys[15:]])
    todo = done.exclude(listing)
    assert isinstance(todo, pa.ChunkedArray) and todo.to_pylist() == keys[10:]
    assert done.exclude(pa.array(keys).dictionary_encode()).to_pylist() == keys[10:]


def test_segments_on_object_storage(bucket):
    """The same index on moto S3: ranged GETs for footers and shards, uploads of merged segments."""
    store = OutputStore(f"s3://{bucket}/out")
    commit_log = begun(store)
    keys = [uri(i) for i in range(400)]
    for step in range(4):
        commit_fast(commit_log, [(f"{step:016x}", keys[step * 100: (step + 1) * 100])])
        write_index(store, commit_log, load_state(store, "r"))
    done = load_state(OutputStore(f"s3://{bucket}/out"), "r")
    assert done.entries_read == 0 and len(done) == 400
    assert done.exclude(keys + [uri(999)]) == [uri(999)]
    assert set(store.list("_index/r")) == {f for s in done.segments for f in (s.keys, s.units)}
