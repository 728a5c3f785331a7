"""A run's state replayed from its commit log (diffseg.lake.log), and the done index that shortens the replay.

:func:`load_state` gives, for one run: every committed unit with its files (what readers read) and, shard by
shard, every committed work-item key with its outcome (what planning excludes). It reads the newest
``index`` entry, which lists the index's live *segments* (diffseg.lake.index_segments: per segment a keys
file grouped by key shard and a units file), and replays only the entries after it, so a restarted driver
reads the commit records written since the last index write (every few minutes), not one record per unit.

What a loaded state holds: the segment list (with each keys file's footer), the unit records
(diffseg.lake.unit_records), and the key rows of the entries replayed after the index (the *delta*); never
every key. Keys are read shard by shard when asked (:meth:`DoneSet.exclude_shard`: one ranged GET per
segment that has rows in the shard).

:func:`write_index` stores the delta as a new segment (merged with the newest segments by the policy of
diffseg.lake.index_segments.merge_count, so a key is rewritten O(log n) times and a small delta never
rewrites a big base), appends the fenced ``index`` entry naming the live segments, drops the delta from
memory and removes the files the entry no longer names (not those of a newer writer).

Key status: :data:`OK` (segmented), :data:`FINAL` (a final error row), :data:`RETRY` (a retryable error row:
the next invocation retries it, diffseg.lake.retry), :data:`RELEASED` (a tombstone: a ``retry`` entry handed
the key's error row in that unit back). The newest row of each (key, unit) pair wins (diffseg.lake.key_state).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow as pa

from diffseg.lake.done_set import HELD_KEYS_SCHEMA, SWEEPS, DoneSet
from diffseg.lake.index_segments import (
    LAYOUT,
    Segment,
    flat_segment,
    map_ordered,
    merge_count,
    open_segments,
    read_units,
    shard_parts,
    write_keys,
)
from diffseg.lake.key_shards import KEY_SHARDS
from diffseg.lake.key_state import FINAL, OK, RELEASED, RETRY, ROWS_SCHEMA, duplicates_of, resolve, stack
from diffseg.lake.log import LAST_INDEX, CommitRecordError, entry_path, list_versions, log_dir, read_entries
from diffseg.lake.store import TMP_PREFIX, OutputStore
from diffseg.lake.unit_records import UNITS_SCHEMA, UnitRecord, add_records, newest_records, records_table

log = logging.getLogger("diffseg.lake.done_index")

__all__ = ["OK", "FINAL", "RETRY", "RELEASED", "SWEEPS", "DoneSet", "replay", "empty_done", "load_state",
           "write_index", "describe_done", "KEYS_SCHEMA", "UNITS_SCHEMA", "HELD_KEYS_SCHEMA"]

INDEX = "_index"
KEYS_SCHEMA = ROWS_SCHEMA  # uri, unit_id, status: the rows of a keys file


def _entry_rows(units: list[dict], status_of) -> pa.Table:
    """One HELD_KEYS_SCHEMA table of the keys of `units` (a log entry's), status from status_of(unit)."""
    keys = [k for u in units for k in u["keys"]]
    counts = [len(u["keys"]) for u in units]
    unit_index = np.repeat(np.arange(len(units), dtype=np.int32), counts)
    status = np.concatenate([status_of(u) for u in units]) if units else np.zeros(0, np.int8)
    return pa.table({"uri": pa.array(keys, pa.string()),
                     "unit_id": pa.DictionaryArray.from_arrays(pa.array(unit_index, pa.int32()),
                                                               pa.array([u["unit_id"] for u in units], pa.string())),
                     "status": pa.array(status, pa.int8())}, schema=HELD_KEYS_SCHEMA)


def _commit_status(unit: dict) -> np.ndarray:
    status = np.full(len(unit["keys"]), OK, np.int8)
    status[list(unit.get("errors", ()))] = FINAL
    status[list(unit.get("retry", ()))] = RETRY
    return status


def replay(done: DoneSet, entries: list[dict]) -> DoneSet:
    """`done` advanced by log `entries` (ascending versions after ``done.version``)."""
    added = []
    for entry in entries:
        kind = entry["kind"]
        if kind == "commit":
            for unit in entry["units"]:
                retry = len(unit.get("retry", ()))
                done.units[unit["unit_id"]] = UnitRecord.of(len(unit["keys"]), len(unit.get("errors", ())) + retry,
                                                            retry, unit["files"])
                done.dirty.add(unit["unit_id"])
            added.append(_entry_rows(entry["units"], _commit_status))
        elif kind == "retry":
            released = []
            for unit in entry["units"]:
                record, n = done.units[unit["unit_id"]], len(unit["released"])
                done.units[unit["unit_id"]] = UnitRecord.of(record.n_items - n, record.n_errors - n,
                                                            max(0, record.n_retry - n),
                                                            {**record["files"], **unit["files"]})
                done.dirty.add(unit["unit_id"])
                released.append({"unit_id": unit["unit_id"], "keys": unit["released"]})
            added.append(_entry_rows(released, lambda u: np.full(len(u["keys"]), RELEASED, np.int8)))
        elif kind == "begin":
            done.invocations.setdefault(entry["invocation"], {})["begin"] = entry
        elif kind == "swept":
            for inv in entry["invocations"]:
                state = done.invocations.setdefault(inv, {})
                state["swept"] = int(state.get("swept") or 0) + 1
        done.changes += kind in ("commit", "retry")
        done.version, done.last_at = entry["version"], entry.get("at")
        done.entries_read += 1
    added = [t for t in added if t.num_rows]
    if added:
        done.delta = done.delta + added
        done._view = done._contains = None
    return done


def empty_done() -> DoneSet:
    return DoneSet()


def _newest_index(store: OutputStore, run_id: str, versions: list[int], scan: bool = False) -> dict | None:
    """The ``index`` entry the hint names (the hint is rewritten with every index entry), or with `scan`
    the newest one found reading the log backwards; None: the whole log is replayed. A hint older than the
    newest index is harmless: replaying the entries after the index it names gives the same state."""
    if scan:
        for end in range(len(versions), 0, -256):
            for entry in reversed(read_entries(store, run_id, versions[max(0, end - 256): end])):
                if entry["kind"] == "index":
                    return entry
        return None
    try:
        version = int(store.get_json(f"{log_dir(run_id)}/{LAST_INDEX}")["version"])
        if version in versions:
            entry = read_entries(store, run_id, [version])[0]
            if entry["kind"] == "index":
                return entry
    except FileNotFoundError:
        pass
    except Exception as exc:
        log.warning("run %r: ignoring the index hint (%s); replaying the whole log", run_id, exc)
    return None


def _segments_of(index: dict) -> list[Segment]:
    if "segments" in index:
        return [Segment.of_entry(s) for s in index["segments"]]
    files = index["files"]  # diffseg 0.3: one snapshot
    return [flat_segment(files["keys"], files["units"], int(index.get("keys", 0)), int(index.get("units", 0)),
                         int(index["covers"]))]


def _from_index(store: OutputStore, index: dict) -> DoneSet:
    segments = _segments_of(index)
    try:
        open_segments(store, segments)
        units: dict = {}
        for table in read_units(store, segments):
            add_records(units, table)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CommitRecordError(f"cannot read the done index of index entry {index['version']} ({type(exc).__name__}: "
                                f"{exc}); retry later, or remove the log's {LAST_INDEX} hint to rebuild from the "
                                f"log") from exc
    return DoneSet([], units, version=index["covers"], invocations=dict(index.get("invocations", {})),
                   index_version=index["version"], last_at=index.get("at"), segments=segments, store=store, dirty=set())


def load_state(store: OutputStore, run_id: str) -> DoneSet:
    """The run's state: its newest index (segment list, footers, unit records) plus the log entries after it."""
    versions = list_versions(store, run_id)
    if not versions:
        return DoneSet(store=store)
    done = None
    for attempt in range(3):
        index = _newest_index(store, run_id, versions, scan=attempt > 0)
        if index is None:
            break
        try:
            done = _from_index(store, index)
            break
        except FileNotFoundError as exc:  # replaced by a newer index meanwhile: look again
            log.warning("run %r: index entry %d names a file that is gone (%s); reading the newest index again",
                        run_id, index["version"], exc)
            versions = list_versions(store, run_id)
    if done is None:
        done = DoneSet(store=store, dirty=set())
    tail = [v for v in versions if v > done.version]
    missing = sorted(set(range(done.version + 1, versions[-1] + 1)) - set(tail))
    if missing:  # entries are never deleted: a gap is a record removed by hand or by a tool, never "not committed"
        raise CommitRecordError(
            f"cannot read commit record {store.uri(entry_path(run_id, missing[0]))} (missing: version(s) "
            f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''} of the run's log are gone while later "
            f"ones exist); the run's committed rows cannot be known without it: restore it from a backup")
    tail = [v for v in tail if v != done.index_version]  # the index entry itself was read
    for start in range(0, len(tail), 512):
        replay(done, read_entries(store, run_id, tail[start: start + 512]))
    return done


_SEGMENT_FILE = re.compile(r"^[0-9a-f]{12}-(\d{20})-(keys|units)\.parquet$")


def _written_at(rel: str) -> int:
    """The log version an index file's name says it was written at (-1 for a name of another format)."""
    match = _SEGMENT_FILE.match(rel.rsplit("/", 1)[-1])
    return int(match[1]) if match else -1


def write_index(store: OutputStore, commit_log, done: DoneSet) -> dict | None:
    """Stores the delta of `done` (the run's state up to ``done.version``) as a segment, merged with the
    newest live segments when the policy says so (diffseg.lake.index_segments.merge_count; an index of
    diffseg 0.3 is rewritten sharded at once), appends the fenced ``index`` entry naming the live segments,
    then drops the delta from `done` and removes the index files no entry names any more (not those of a
    newer writer: it took the run over while this one wrote). Returns the entry (None when nothing is new)."""
    if done.changes == 0:
        return None
    done.store = done.store or store
    delta, bounds, _ = done._delta_by_shard()
    dirty = sorted((u, done.units[u]) for u in done.dirty if u in done.units)
    sizes = [s.size for s in done.segments] + [delta.num_rows + len(dirty)]
    k = len(sizes) if any(s.flat for s in done.segments) else merge_count(sizes)
    base, merged = done.segments[: len(sizes) - k], done.segments[len(sizes) - k:]
    stem = f"{INDEX}/{commit_log.run_id}/{commit_log.invocation}-{done.version:020d}"
    files = {"keys": f"{stem}-keys.parquet", "units": f"{stem}-units.parquet"}
    duplicates = []

    def shard_rows(shard: int):
        parts = shard_parts(store, merged, shard) if merged else []
        live = resolve(stack(parts + [delta.slice(bounds[shard], bounds[shard + 1] - bounds[shard])]),
                       keep_released=bool(base))
        duplicates.append(duplicates_of(live))
        return shard, live

    keys_bytes, keys_rows = write_keys(store, files["keys"], map_ordered(shard_rows, range(KEY_SHARDS)))
    units = newest_records((read_units(store, merged) if merged else []) + [records_table(dirty)])
    store.put_parquet(files["units"], units)
    segment = Segment(files["keys"], files["units"], keys_bytes, keys_rows, units.num_rows, sum(duplicates), done.version)
    segments = base + [segment]
    invocations = {i: {"swept": int(s.get("swept") or 0)} for i, s in done.invocations.items()}
    entry = commit_log.append("index", {"covers": done.version, "layout": LAYOUT,
                                        "segments": [s.entry() for s in segments], "invocations": invocations,
                                        "keys": len(done), "units": len(done.units),
                                        "duplicates": sum(s.duplicates for s in segments)})
    commit_log.write_hint(LAST_INDEX, {"version": entry["version"]})
    named = {f for s in segments for f in (s.keys, s.units)}
    old = [r for r in store.list(f"{INDEX}/{commit_log.run_id}") if r not in named
           and not r.rsplit("/", 1)[-1].startswith(TMP_PREFIX) and _written_at(r) < done.version]
    store.remove(old)  # a newer writer's files (it took the run over) were written at a later version: kept
    open_segments(store, [segment])
    done.segments, done.delta, done.dirty, done.changes = segments, [], set(), 0
    done.index_version, done._view, done._contains = entry["version"], None, None
    log.info("run %r: done index at version %d: %d segment(s), wrote %d key row(s) (%d bytes) merging %d segment(s)",
             commit_log.run_id, entry["version"], len(segments), keys_rows, keys_bytes, len(merged))
    return entry


def describe_done(done: DoneSet) -> dict:
    """Planning counts of a done set (for the manifest): cheap, reads no key."""
    return {"index_entries_read": done.entries_read, "duplicate_items": done.duplicates()}
