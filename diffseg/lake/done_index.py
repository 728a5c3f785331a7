"""A run's state replayed from its commit log (diffseg.lake.log), and the done index that shortens the replay.

:func:`load_state` gives, for one run: every committed unit with its files (what readers read) and every
committed work-item key with its outcome (what planning excludes). It reads the newest ``index`` entry's
snapshot (two Parquet files) and replays only the entries after it, so a restarted driver reads the commit
records written since the last snapshot, not one record per unit for ever:

    _index/<run_id>/<invocation>-<version>-keys.parquet    uri, unit_id, status: every committed key
    _index/<run_id>/<invocation>-<version>-units.parquet   unit_id, items, errors, retry, files (JSON)

Snapshot files have unique names and are named by a fenced ``index`` log entry, so two writers can never
pair one's keys with the other's units; an older snapshot is deleted only after a newer entry names its
replacement. Keys stay in Arrow (no Python set of ten million strings): :meth:`DoneSet.exclude` filters a
listing with ``pyarrow.compute.is_in``.

Key status: :data:`OK` (segmented), :data:`FINAL` (a final error row), :data:`RETRY` (a retryable error row:
the next invocation retries it, diffseg.lake.retry).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diffseg.lake.log import LAST_INDEX, CommitRecordError, entry_path, list_versions, log_dir, read_entries
from diffseg.lake.store import OutputStore

log = logging.getLogger("diffseg.lake.done_index")

INDEX = "_index"
OK, FINAL, RETRY = 0, 1, 2
SWEEPS = 2  # an invocation's files are listed by two sweeps: its own (or its successor's) and the next run's
KEYS_SCHEMA = pa.schema([("uri", pa.string()), ("unit_id", pa.string()), ("status", pa.int8())])
UNITS_SCHEMA = pa.schema([("unit_id", pa.string()), ("items", pa.int64()), ("errors", pa.int64()),
                          ("retry", pa.int64()), ("files", pa.string())])
# KEYS_SCHEMA as planning holds it: a unit's id stored once per unit, not once per item
HELD_KEYS_SCHEMA = pa.schema([("uri", pa.string()), ("unit_id", pa.dictionary(pa.int32(), pa.string())),
                              ("status", pa.int8())])


@dataclass
class DoneSet:
    """The committed work items of one run: keys (Arrow strings) with their status, and its units.

    ``units``: unit_id -> {"items", "errors", "retry", "files": {table: {"path", "bytes", "md5", "rows"}}}.
    ``version``: the last log version replayed (-1 for an empty log)."""

    uris: pa.Table  # HELD_KEYS_SCHEMA rows
    units: dict[str, dict]
    version: int = -1
    entries_read: int = 0  # log entries replayed after the snapshot
    invocations: dict[str, dict] = field(default_factory=dict)  # invocation -> {"begin": entry, "swept": times}
    index_version: int = -1  # the version of the index entry the snapshot came from (-1: none)
    changes: int = 0  # commit and retry entries replayed after the snapshot (what a new snapshot would add)
    last_at: str | None = None  # when the newest replayed entry was written
    _set: set[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.uris.num_rows

    def copy(self) -> DoneSet:
        """A copy that replaying entries into does not change this one."""
        return replace(self, units={k: dict(v) for k, v in self.units.items()},
                       invocations={k: dict(v) for k, v in self.invocations.items()}, _set=None)

    def __contains__(self, key: str) -> bool:
        if self._set is None:
            self._set = set(self.done_keys().to_pylist())
        return key in self._set

    @property
    def unit_ids(self) -> set[str]:
        return set(self.units)

    def done_keys(self, retry_errors: bool = False) -> pa.ChunkedArray:
        """Keys planning must not redo: every committed key but retryable errors (and, with
        `retry_errors`, but final errors too)."""
        status = self.uris.column("status")
        keep = pc.equal(status, OK) if retry_errors else pc.not_equal(status, RETRY)
        return self.uris.column("uri").filter(keep)

    def retryable(self, retry_errors: bool = False) -> pa.Table:
        """(uri, unit_id) rows of error keys a new invocation retries."""
        status = self.uris.column("status")
        want = pc.not_equal(status, OK) if retry_errors else pc.equal(status, RETRY)
        return self.uris.filter(want).select(["uri", "unit_id"])

    def exclude(self, keys, retry_errors: bool = False):
        """`keys` (in order) minus the done ones: a list for a list, an Arrow array for an Arrow array."""
        array = keys if isinstance(keys, pa.Array) else pa.array(keys, pa.string())
        done = self.done_keys(retry_errors)
        if len(done):
            array = array.filter(pc.invert(pc.is_in(array, value_set=done)))
        return array if isinstance(keys, pa.Array) else array.to_pylist()

    def duplicates(self) -> int:
        """Keys held by more than one committed unit (rows a plain read would see twice)."""
        return len(self) - (pc.count_distinct(self.uris.column("uri")).as_py() if len(self) else 0)

    def error_fraction(self) -> tuple[int, int]:
        """(items, errors) of the run's committed units."""
        return sum(u["items"] for u in self.units.values()), sum(u["errors"] for u in self.units.values())

    def files(self, table: str) -> list[str]:
        """Relative paths of the committed files of `table`, in unit order."""
        return [u["files"][table]["path"] for _, u in sorted(self.units.items()) if table in u["files"]]

    def unswept(self, current: str | None = None) -> list[str]:
        """Invocations (but `current`) whose files were swept fewer than :data:`SWEEPS` times. The second sweep
        comes from a later invocation, after the first one's end: by then a worker of the swept invocation that
        was still alive (cut off, not killed) is gone with its driver, so nothing it writes outlives it."""
        return [i for i, s in self.invocations.items() if int(s.get("swept") or 0) < SWEEPS and i != current]


def _unit_record(unit: dict) -> dict:
    return {"items": len(unit["keys"]), "errors": len(unit.get("errors", ())) + len(unit.get("retry", ())),
            "retry": len(unit.get("retry", ())), "files": unit["files"]}


def _unit_keys(unit: dict) -> pa.Table:
    status = [OK] * len(unit["keys"])
    for p in unit.get("errors", ()):
        status[p] = FINAL
    for p in unit.get("retry", ()):
        status[p] = RETRY
    return pa.table({"uri": pa.array(unit["keys"], pa.string()),
                     "unit_id": pa.array([unit["unit_id"]] * len(unit["keys"]), pa.string()).dictionary_encode(),
                     "status": pa.array(status, pa.int8())}).cast(HELD_KEYS_SCHEMA)


def replay(done: DoneSet, entries: list[dict]) -> DoneSet:
    """`done` advanced by log `entries` (ascending versions after ``done.version``)."""
    keys = [done.uris]
    released: list[str] = []
    for entry in entries:
        kind = entry["kind"]
        if kind == "commit":
            for unit in entry["units"]:
                done.units[unit["unit_id"]] = _unit_record(unit)
                keys.append(_unit_keys(unit))
        elif kind == "retry":
            for unit in entry["units"]:
                record = done.units[unit["unit_id"]]
                record["files"] = {**record["files"], **unit["files"]}
                record["items"] -= len(unit["released"])
                record["errors"] -= len(unit["released"])
                record["retry"] = max(0, record["retry"] - len(unit["released"]))
                released += unit["released"]
        elif kind == "begin":
            done.invocations.setdefault(entry["invocation"], {})["begin"] = entry
        elif kind == "swept":
            for inv in entry["invocations"]:
                state = done.invocations.setdefault(inv, {})
                state["swept"] = int(state.get("swept") or 0) + 1
        done.changes += kind in ("commit", "retry")
        done.version, done.last_at = entry["version"], entry.get("at")
        done.entries_read += 1
    uris = pa.concat_tables(keys) if len(keys) > 1 else done.uris
    if released:  # keys handed back to planning: the rows of those (unit, key) pairs are gone
        gone = pc.is_in(uris.column("uri"), value_set=pa.array(released, pa.string()))
        uris = uris.filter(pc.invert(pc.and_(gone, pc.not_equal(uris.column("status"), OK))))
    done.uris = uris
    done._set = None
    return done


def empty_done() -> DoneSet:
    return DoneSet(HELD_KEYS_SCHEMA.empty_table(), {})


def _newest_index(store: OutputStore, run_id: str, versions: list[int]) -> dict | None:
    """The ``index`` entry the hint names (the hint is rewritten with every index entry), or None: then the
    whole log is replayed. A hint older than the newest index is harmless: replaying the entries after the
    index it names gives the same state."""
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


def _read_parquet(store: OutputStore, rel: str, schema: pa.Schema) -> pa.Table:
    try:
        data = store.get(rel)
        return pq.read_table(pa.BufferReader(data), schema=schema)
    except Exception as exc:
        raise CommitRecordError(f"cannot read the done index {store.uri(rel)} ({type(exc).__name__}: {exc}); "
                                f"retry later, or remove its index entry's hint to rebuild from the log") from exc


def load_state(store: OutputStore, run_id: str) -> DoneSet:
    """The run's state: its newest index snapshot plus the log entries after it."""
    versions = list_versions(store, run_id)
    if not versions:
        return empty_done()
    done = empty_done()
    index = _newest_index(store, run_id, versions)
    try:
        keys = _read_parquet(store, index["files"]["keys"], KEYS_SCHEMA) if index else None
        units = _read_parquet(store, index["files"]["units"], UNITS_SCHEMA).to_pylist() if index else None
    except CommitRecordError as exc:  # the snapshot is gone (replaced by a newer index): the log has it all
        if not isinstance(exc.__cause__, FileNotFoundError):
            raise
        log.warning("run %r: %s; replaying the whole log instead", run_id, exc)
        index = None
    if index is not None:
        done = DoneSet(keys.cast(HELD_KEYS_SCHEMA),
                       {u["unit_id"]: {**{k: u[k] for k in ("items", "errors", "retry")}, "files": json.loads(u["files"])}
                        for u in units},
                       version=index["covers"], invocations=dict(index.get("invocations", {})),
                       index_version=index["version"], last_at=index.get("at"))
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


def snapshot_tables(done: DoneSet) -> tuple[pa.Table, pa.Table]:
    """The index snapshot of `done`: (keys, units) with KEYS_SCHEMA and UNITS_SCHEMA."""
    units = sorted(done.units.items())
    return (done.uris.cast(KEYS_SCHEMA),
            pa.table({"unit_id": [u for u, _ in units], "items": [r["items"] for _, r in units],
                      "errors": [r["errors"] for _, r in units], "retry": [r["retry"] for _, r in units],
                      "files": [json.dumps(r["files"], separators=(",", ":")) for _, r in units]}, schema=UNITS_SCHEMA))


_SNAPSHOT = re.compile(r"^[0-9a-f]{12}-(\d{20})-(keys|units)\.parquet$")


def _snapshot_covers(rel: str) -> int:
    """The log version a snapshot file's name says it covers (-1 for a name of another format)."""
    match = _SNAPSHOT.match(rel.rsplit("/", 1)[-1])
    return int(match[1]) if match else -1


def write_index(store: OutputStore, commit_log, done: DoneSet) -> dict | None:
    """Writes a snapshot of `done` (the run's state up to ``done.version``) and its fenced ``index`` entry;
    removes the snapshot files of earlier indexes (not those of a newer writer: it took the run over while
    this one wrote). Returns the entry (None when nothing is new)."""
    if done.changes == 0:
        return None
    keys, units = snapshot_tables(done)
    stem = f"{INDEX}/{commit_log.run_id}/{commit_log.invocation}-{done.version:020d}"
    files = {"keys": f"{stem}-keys.parquet", "units": f"{stem}-units.parquet"}
    store.put_parquet(files["keys"], keys)
    store.put_parquet(files["units"], units)
    invocations = {i: {"swept": int(s.get("swept") or 0)} for i, s in done.invocations.items()}
    entry = commit_log.append("index", {"covers": done.version, "files": files, "invocations": invocations,
                                        "keys": keys.num_rows, "units": units.num_rows})
    commit_log.write_hint(LAST_INDEX, {"version": entry["version"]})
    old = [r for r in store.list(f"{INDEX}/{commit_log.run_id}") if r not in files.values()
           and _snapshot_covers(r) < done.version]  # a newer writer's snapshot (it took the run over) stays
    store.remove(old)
    return entry


def describe_done(done: DoneSet) -> dict:
    """Planning counts of a done set (for the manifest)."""
    return {"index_entries_read": done.entries_read, "duplicate_items": done.duplicates()}
