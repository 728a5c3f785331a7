"""The driver's side of "workers write, the driver commits": :class:`UnitCommitter`.

The workers write every row themselves (diffseg.lake.commit.write_results) under attempt-unique names and
send the driver one small metadata row per (batch, unit): the positions of the unit's items the batch
holds, which are error rows, counts, and the files written (path, bytes, md5). The committer keeps, per
unit in flight, which positions are covered (one boolean array) and which parts it accepted, first come
first served: a part that repeats positions already accepted (a retried batch) only contributes its new
ones. When a unit is covered:

- by one part holding the whole unit (the common case: input blocks are cut along units), its files are
  already in the table folders: the unit is queued for commit at once;
- by several parts, it returns a :class:`diffseg.lake.commit.Compaction` that the job runs in the cluster
  (diffseg.lake.commit.compact_unit); :meth:`UnitCommitter.compacted` then queues the unit.

A commit thread appends the queued units to the run's log, as many as are ready in one entry (group
commit: while one entry is being written the next batch of units gathers, so commits keep up with any
rate at any store latency). Files no commit will name (late or repeated attempts, merged staging parts)
are deleted in batches. The driver's work is per unit and per batch, never per row of a table.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from diffseg.lake.commit import Compaction, Part
from diffseg.lake.schemas import SEGMENT_TABLES, TableSet
from diffseg.lake.store import OutputStore

log = logging.getLogger("diffseg.lake.writer")

MAX_UNITS_PER_ENTRY = 512  # a commit entry names at most this many units (keeps entries under a few MB)
INDEX_EVERY_S = 300.0  # a done-index snapshot at most this often while committing (a restarted driver reads
                       # only the entries written since)


class UnitCommitter:
    """Consumes worker metadata (diffseg.lake.commit.META_SCHEMA batches) and commits complete units to the
    run's log (`commit_log`, a begun diffseg.lake.log.CommitLog). `units`: the plan (a
    diffseg.lake.plan.StoredPlan or UnitList, or a list of Units): the committer keeps of it only each unit's
    id and size (compact arrays: ~30 bytes a unit), learns a unit's keys from its rows' metadata, and keeps
    per committed unit only its item count (``committed_units``). Counts what it committed: ``items``,
    ``done`` (items without an error row), ``errors``, ``errors_<stage>``, ``errors_retryable`` and the
    tables' row counters (``tables.row_counters``).

    `before_commit`: called before each log entry (the job checks it still holds the run's lease and
    records the run identity with the first commit). `background`: commit from a thread (group commit);
    False commits synchronously in :meth:`add` (tests, tools)."""

    def __init__(self, store: OutputStore, commit_log, units, tables: TableSet = SEGMENT_TABLES,
                 before_commit: Callable[[], None] | None = None, background: bool = True, done=None,
                 index_every_s: float = INDEX_EVERY_S):
        from diffseg.lake.plan import as_plan

        self.store, self.log, self.tables = store, commit_log, tables
        self.run_id = commit_log.run_id
        ids, rows = as_plan(units).facts()  # per planned unit: its id and size (0: the workers tell it)
        order = np.argsort(ids, kind="stable")
        self._ids, self._rows = ids[order], np.array(rows[order], dtype=np.int64)
        self._closed = np.zeros(len(ids), dtype=bool)  # queued or committed (later parts of them are stale)
        self._committed = np.zeros(len(ids), dtype=bool)
        self.covered: dict[str, np.ndarray] = {}  # unit_id -> bool per position, for units in flight
        self.parts: dict[str, list[Part]] = {}
        self.keys: dict[str, list[str | None]] = {}  # units in flight: their keys as the workers told them
        self.committed_units: dict[str, int] = {}  # unit_id -> items committed, in commit order (no keys)
        self.compacting: set[str] = set()
        self.stale: list[str] = []  # files no commit names (late attempts, merged staging parts)
        self.counts = Counter()
        self.bytes_received = 0
        self.entries = 0
        self.total_items = int(self._rows.sum())
        self.before_commit = before_commit
        self.done = done  # the run's diffseg.lake.done_index.DoneSet, kept current: what a snapshot writes
        self.index_every_s = index_every_s
        self._last_index = time.monotonic()
        self.index_snapshots = 0
        self._queue: list[tuple[dict, dict, list[str], int]] = []  # (unit record, counts, staging files, index)
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._busy = False
        self._stopping = False
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._commit_loop, name="unit-committer", daemon=True)
            self._thread.start()

    def _find(self, unit_id: str) -> int:
        """The index of a planned unit, -1 for a unit this committer does not know."""
        key = np.array(unit_id.encode(), dtype=self._ids.dtype) if len(self._ids) else None
        if key is None or len(unit_id) > self._ids.dtype.itemsize:
            return -1
        i = int(np.searchsorted(self._ids, key))
        return i if i < len(self._ids) and self._ids[i] == key else -1

    # -- intake ---------------------------------------------------------------------------------------
    def add(self, meta: pa.Table) -> list[Compaction]:
        """Takes one batch of metadata rows; queues the units they complete with one final part and
        returns the compactions of units completed by several parts. A unit's keys come with its rows
        (META_SCHEMA ``keys``): the committer holds the keys of the units in flight only."""
        self._raise_error()
        self.bytes_received += meta.nbytes
        todo = []
        names = ("unit_id", "positions", "errors", "retry", "counts", "files", "final", "unit_rows", "keys")
        columns = (meta.column(c).to_pylist() if c in meta.column_names else [None] * meta.num_rows for c in names)
        for unit_id, positions, errors, retry, counts, files, final, unit_rows, keys in zip(*columns):
            files = json.loads(files)
            i = self._find(unit_id)
            if i < 0 or self._closed[i] or unit_id in self.compacting:
                self._discard(files)
                continue
            if keys is None or len(keys) != len(positions):
                raise ValueError(f"metadata of unit {unit_id} carries {0 if keys is None else len(keys)} key(s) for "
                                 f"{len(positions)} position(s): the workers must send every row's key "
                                 f"(diffseg.lake.commit.write_results)")
            if not self._rows[i]:  # a container: its size is what the workers read
                self._rows[i] = int(unit_rows)
                self.total_items += int(unit_rows)
            size = int(self._rows[i])
            known = self.keys.setdefault(unit_id, [None] * size)
            if final:
                known = [None] * size
                for position, key in zip(positions, keys):
                    known[position] = key
                self.keys.pop(unit_id, None)
                self._discard([f for p in self.parts.pop(unit_id, []) for f in p.files.values()])
                self.covered.pop(unit_id, None)
                self._enqueue(i, unit_id, known, files, errors, retry, json.loads(counts), [])
                continue
            covered = self.covered.setdefault(unit_id, np.zeros(size, dtype=bool))
            pos = np.asarray(positions, dtype=np.int64)
            pos, first = np.unique(pos, return_index=True)
            fresh = ~covered[pos]
            new = pos[fresh]
            if not len(new):
                self._discard(files)
                continue
            for position, j in zip(new, first[fresh]):
                known[position] = keys[j]
            covered[new] = True
            self.parts.setdefault(unit_id, []).append(Part(files, tuple(int(p) for p in new)))
            if covered.all():
                del self.covered[unit_id]
                self.compacting.add(unit_id)
                todo.append(Compaction(self.store.output, self.run_id, self.log.invocation, unit_id, tuple(known),
                                       tuple(self.parts[unit_id])))
        self._sync_commit()
        return todo

    def compacted(self, spec: Compaction, result: dict) -> None:
        """Queues a unit whose parts :func:`diffseg.lake.commit.compact_unit` merged (`result`: its return)."""
        self._raise_error()
        parts = self.parts.pop(spec.unit_id, [])
        self.compacting.discard(spec.unit_id)
        self.keys.pop(spec.unit_id, None)
        staging = [f["path"] for p in parts for f in p.files.values()]
        self._enqueue(self._find(spec.unit_id), spec.unit_id, list(spec.keys), result["files"], result["errors"],
                      result["retry"], result["counts"], staging)
        self._sync_commit()

    def _enqueue(self, i: int, unit_id: str, keys: list[str], files: dict, errors: list, retry: list, counts: dict,
                 staging: list[str]) -> None:
        self._closed[i] = True
        record = {"unit_id": unit_id, "keys": keys, "files": files, "errors": sorted(errors), "retry": sorted(retry)}
        with self._cond:
            self._queue.append((record, counts, staging, i))
            self._cond.notify_all()

    def abandon_in_flight(self) -> None:
        """Forgets the parts of units not queued for commit (their pipeline is gone): they are redone whole,
        and their staging files are deleted."""
        self._discard([f for parts in self.parts.values() for p in parts for f in p.files.values()])
        self.parts.clear()
        self.covered.clear()
        self.compacting.clear()
        self.keys.clear()

    def _discard(self, files) -> None:
        paths = [f["path"] for f in (files.values() if isinstance(files, dict) else files)]
        with self._cond:
            self.stale += paths

    # -- committing -----------------------------------------------------------------------------------
    def _commit_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue and self._stopping:
                    return
                self._busy = True
            try:
                self._commit_queued()
            except BaseException as exc:  # LogFencedError, LeaseLostError, a store that stays down
                with self._cond:
                    self._error = exc
                    self._busy = False
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _commit_queued(self) -> None:
        with self._cond:
            batch, self._queue = self._queue[:MAX_UNITS_PER_ENTRY], self._queue[MAX_UNITS_PER_ENTRY:]
            stale, self.stale = self.stale, []
        if batch:
            if self.before_commit is not None:
                self.before_commit()
            entry = self.log.append("commit", {"units": [record for record, _, _, _ in batch]})
            self.entries += 1
            self._keep_index(entry)
            for record, counts, _, i in batch:
                self.committed_units[record["unit_id"]] = len(record["keys"])
                self._committed[i] = True
                self.counts.update({k: int(v) for k, v in counts.items()})
            stale += [f for _, _, staging, _ in batch for f in staging]
        if stale:
            try:
                self.store.remove(stale)
            except Exception as exc:  # the sweep of the next invocation removes them
                log.warning("could not delete %d uncommitted file(s) (%s); the next run's sweep removes them",
                            len(stale), exc)

    def _keep_index(self, entry: dict) -> None:
        """Replays `entry` into the run's state and writes a done-index snapshot every ``index_every_s``
        (from the thread that appends: the log stays sequential)."""
        from diffseg.lake.done_index import replay, write_index

        if self.done is None:
            return
        replay(self.done, [entry])
        if time.monotonic() - self._last_index >= self.index_every_s:
            self._last_index = time.monotonic()
            try:
                write_index(self.store, self.log, self.done)
                self.done.index_version, self.done.changes = self.log.next_version - 1, 0
                self.index_snapshots += 1
            except Exception as exc:  # a LogFencedError surfaces at the next commit
                log.warning("could not write a done-index snapshot (%s); the next one is tried later", exc)

    def _sync_commit(self) -> None:
        if self._thread is None:
            while self._queue:
                self._commit_queued()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every queued unit is committed (raises what stopped the commit thread)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._busy) and self._error is None and self._thread is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{len(self._queue)} unit(s) still waiting to be committed")
                self._cond.wait(left)
        self._raise_error()

    def finish(self) -> list[str]:
        """Commits what is queued, stops the commit thread and deletes files no commit names; returns them."""
        try:
            self.flush()
        finally:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join(timeout=60)
        stale, self.stale = self.stale, []
        self.store.remove(stale)
        return stale

    # -- what happened --------------------------------------------------------------------------------
    @property
    def committed(self) -> list[str]:
        """The units committed, in commit order."""
        return list(self.committed_units)

    @property
    def incomplete(self) -> list[str]:
        """Units not committed (after the dataset is exhausted and :meth:`finish` this should be empty)."""
        return [u.decode() for u in self._ids[~self._committed]]

    def errors_by_stage(self) -> dict[str, int]:
        return {k.removeprefix("errors_"): v for k, v in self.counts.items()
                if k.startswith("errors_") and k != "errors_retryable"}
