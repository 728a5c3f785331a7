"""The committed work items of one run as planning holds them: :class:`DoneSet` (built by
diffseg.lake.done_index.load_state and replay; its layout and costs are described there).

Keys are never all in memory: a DoneSet holds the index's segment list (diffseg.lake.index_segments), the unit
records (diffseg.lake.unit_records) and the key rows replayed after the index (the delta), and reads keys
shard by shard when asked (diffseg.lake.key_state decides each key's state).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from diffseg.lake.index_segments import map_ordered, shard_parts
from diffseg.lake.key_shards import KEY_SHARDS, key_shard, shard_order
from diffseg.lake.key_state import (
    FINAL,
    NO_ROW,
    OK,
    RETRY,
    ROWS_SCHEMA,
    done_mask,
    duplicates_of,
    key_status,
    resolve,
    stack,
)
from diffseg.lake.store import OutputStore
from diffseg.lake.unit_records import UnitRecord

SWEEPS = 2  # an invocation's files are listed by two sweeps: its own (or its successor's) and the next run's

# key rows as the delta holds them: a unit's id stored once per unit, not once per item
HELD_KEYS_SCHEMA = pa.schema([("uri", pa.string()), ("unit_id", pa.dictionary(pa.int32(), pa.string())),
                              ("status", pa.int8())])


@dataclass
class DoneSet:
    """The committed work items of one run: its index segments plus the key rows replayed after them, and
    its units.

    ``units``: unit_id -> :class:`diffseg.lake.unit_records.UnitRecord` (a mapping: "items", "errors",
    "retry", "files": {table: {"path", "bytes", "md5", "rows"}}). ``version``: the last log version
    replayed (-1 for an empty log). ``delta``: key-row tables (HELD_KEYS_SCHEMA, log order) replayed after
    the index; :func:`write_index` stores and drops them."""

    delta: list = field(default_factory=list)  # a pa.Table is taken as one delta table
    units: dict = field(default_factory=dict)
    version: int = -1
    entries_read: int = 0  # log entries replayed after the index
    invocations: dict[str, dict] = field(default_factory=dict)  # invocation -> {"begin": entry, "swept": times}
    index_version: int = -1  # the version of the index entry the segments came from (-1: none)
    changes: int = 0  # commit and retry entries replayed after the index (what the next index write stores)
    last_at: str | None = None  # when the newest replayed entry was written
    segments: list = field(default_factory=list)  # diffseg.lake.index_segments.Segment, oldest first
    store: OutputStore | None = None  # where the segments are
    dirty: set | None = None  # units whose records changed after the index (None: every unit)
    _view: tuple | None = field(default=None, repr=False)  # the delta by shard (see _delta_by_shard)
    _contains: dict | None = field(default=None, repr=False)  # shard -> set of done keys (for `in`)

    def __post_init__(self):
        if isinstance(self.delta, pa.Table):
            self.delta = [self.delta] if self.delta.num_rows else []
        self.units = {u: r if isinstance(r, UnitRecord) else UnitRecord.of(r["items"], r["errors"], r["retry"], r["files"])
                      for u, r in self.units.items()}
        if self.dirty is None:
            self.dirty = set(self.units)

    # -- counts -------------------------------------------------------------------------------------
    @property
    def shards(self) -> int:
        return KEY_SHARDS

    def __len__(self) -> int:
        """Committed keys (live (key, unit) pairs): the units' items."""
        return sum(r.n_items for r in self.units.values())

    @property
    def unit_ids(self) -> set[str]:
        return set(self.units)

    def error_fraction(self) -> tuple[int, int]:
        """(items, errors) of the run's committed units."""
        return sum(u.n_items for u in self.units.values()), sum(u.n_errors for u in self.units.values())

    def duplicates(self) -> int:
        """Keys held by more than one committed unit (rows a plain read would see twice), as counted inside
        each stored segment when it was written or merged, plus inside the delta. A key held by units whose
        rows sit in two different segments is counted once those segments are merged (a full count:
        :meth:`count_duplicates`). Cheap: no key is read."""
        return sum(s.duplicates for s in self.segments) + self._delta_by_shard()[2]

    def count_duplicates(self) -> int:
        """The exact :meth:`duplicates`, reading every shard of every segment."""
        return sum(duplicates_of(t) for t in self.iter_shards())

    def files(self, table: str) -> list[str]:
        """Relative paths of the committed files of `table`, in unit order."""
        return [f[table]["path"] for _, u in sorted(self.units.items()) if table in (f := u["files"])]

    def unswept(self, current: str | None = None) -> list[str]:
        """Invocations (but `current`) whose files were swept fewer than :data:`SWEEPS` times. The second sweep
        comes from a later invocation, after the first one's end: by then a worker of the swept invocation that
        was still alive (cut off, not killed) is gone with its driver, so nothing it writes outlives it."""
        return [i for i, s in self.invocations.items() if int(s.get("swept") or 0) < SWEEPS and i != current]

    def copy(self) -> DoneSet:
        """A copy that replaying entries into does not change this one (keys are not copied: segments and
        delta tables are immutable and shared)."""
        return replace(self, units=dict(self.units), invocations={k: dict(v) for k, v in self.invocations.items()},
                       delta=list(self.delta), segments=list(self.segments), dirty=set(self.dirty), _view=None,
                       _contains=None)

    # -- keys, shard by shard -----------------------------------------------------------------------
    def _delta_by_shard(self) -> tuple[pa.Table, np.ndarray, int]:
        """The delta as one ROWS_SCHEMA table sorted by shard (log order kept inside a shard), the row bounds
        of each shard, and the duplicates inside it."""
        if self._view is None:
            rows = stack(self.delta)
            order, bounds = shard_order(rows.column("uri"))
            rows = rows.take(pa.array(order)) if rows.num_rows else rows
            dups = duplicates_of(resolve(rows)) if rows.num_rows else 0
            self._view = (rows, bounds, dups)
        return self._view

    def _delta_shard(self, shard: int) -> pa.Table:
        rows, bounds, _ = self._delta_by_shard()
        return rows.slice(bounds[shard], bounds[shard + 1] - bounds[shard])

    def shard_rows(self, shard: int) -> pa.Table:
        """Every stored and replayed row of `shard` (ROWS_SCHEMA, log order, tombstones included)."""
        if not 0 <= shard < KEY_SHARDS:
            raise ValueError(f"shard {shard!r}: must be 0 .. {KEY_SHARDS - 1}")
        parts = shard_parts(self.store, self.segments, shard) if self.segments else []
        return stack(parts + [self._delta_shard(shard)])

    def _status(self, keys: pa.Array, shard: int) -> tuple[np.ndarray, pa.Table]:
        return key_status(keys, self.shard_rows(shard))

    def exclude_shard(self, keys: pa.Array, shard: int, retry_errors: bool = False) -> tuple[pa.Array, pa.Array]:
        """(todo, held) for `keys` (a StringArray, every key in `shard`): todo = `keys` in order minus the done
        ones (OK, or FINAL unless `retry_errors`); held = the keys of todo this run holds an error row for
        (hand them to diffseg.lake.retry.release_errors before processing them). Reads the shard's rows of
        each segment once (one ranged GET each) plus the delta."""
        keys = _string_array(keys)
        if len(keys) and int(key_shard(keys.slice(0, 1))[0]) != shard:  # a cheap check of the precondition
            raise ValueError(f"exclude_shard: key {keys[0].as_py()!r} is in shard {int(key_shard(keys.slice(0, 1))[0])}, "
                             f"not {shard}: group keys with diffseg.lake.key_shards.key_shard")
        best, _ = self._status(keys, shard)
        done = done_mask(best, retry_errors)
        return keys.filter(pa.array(~done)), keys.filter(pa.array(~done & (best != NO_ROW)))

    def exclude_shards(self, groups, retry_errors: bool = False):
        """:meth:`exclude_shard` over (shard, keys) pairs, a few shards read at once (hides the store's
        latency); yields (shard, todo, held) in the order of `groups`, holding a few shards at a time."""
        self._delta_by_shard()  # built once here, not by each thread
        yield from map_ordered(lambda g: (g[0], *self.exclude_shard(g[1], g[0], retry_errors)), groups)

    def _grouped(self, array: pa.Array):
        """(shard, positions) of `array`'s keys, shards ascending."""
        order, bounds = shard_order(array)
        return [(s, order[bounds[s]: bounds[s + 1]]) for s in range(KEY_SHARDS) if bounds[s + 1] > bounds[s]]

    def exclude(self, keys, retry_errors: bool = False):
        """`keys` (in order) minus the done ones: a list for a list, an Arrow array for an Arrow array.
        Reads the shards `keys` fall in (every shard for a large listing), a few at once."""
        arrow = isinstance(keys, pa.Array | pa.ChunkedArray)
        array = keys if arrow else pa.array(keys, pa.string())
        if array.type != pa.string():
            array = array.cast(pa.string())
        if not self.segments and not self.delta:  # nothing committed: no key is hashed
            return array if arrow else list(keys)
        done = np.zeros(len(array), bool)
        self._delta_by_shard()  # built once here, not by each thread

        def probe(group):
            shard, positions = group
            best, _ = self._status(_string_array(array.take(pa.array(positions))), shard)
            return positions, done_mask(best, retry_errors)

        for positions, mask in map_ordered(probe, self._grouped(array)):
            done[positions] = mask
        array = array.filter(pa.array(~done)) if done.any() else array
        return array if arrow else array.to_pylist()

    def held_rows(self, keys: pa.Array) -> pa.Table:
        """Live error rows (uri, unit_id, status: FINAL or RETRY) of `keys`, read shard by shard."""
        array = _string_array(keys)
        if not len(array) or not any(r.n_errors for r in self.units.values()):
            return ROWS_SCHEMA.empty_table()
        self._delta_by_shard()  # built once here, not by each thread

        def probe(group):
            shard, positions = group
            _, live = self._status(array.take(pa.array(positions)), shard)
            return live.filter(pc.not_equal(live.column("status"), OK))

        return stack(list(map_ordered(probe, self._grouped(array))))

    def iter_shards(self, shards=None):
        """Per shard (ascending, or those of `shards`) a ROWS_SCHEMA table of its live rows: every committed
        (key, unit) pair with its status. Reads every segment's shard (the whole index over all shards:
        for tools, tests and the cheap paths' checks, not for planning a delta)."""
        self._delta_by_shard()  # built once here, not by each thread
        yield from map_ordered(lambda s: resolve(self.shard_rows(s)), range(KEY_SHARDS) if shards is None else shards)

    def all_keys(self) -> pa.Table:
        """Every live row (uri, unit_id, status) of the run: the whole index in memory (tests and tools)."""
        return stack(list(self.iter_shards()))

    def done_keys(self, retry_errors: bool = False) -> pa.ChunkedArray:
        """Keys planning must not redo: every committed key but retryable errors (and, with `retry_errors`,
        but final errors too). Reads the whole index and holds the answer: for tools and tests."""
        parts = []
        for rows in self.iter_shards():
            status = rows.column("status")
            parts.append(rows.column("uri").filter(pc.equal(status, OK) if retry_errors else pc.not_equal(status, RETRY)))
        return pa.chunked_array([c for p in parts for c in p.chunks], pa.string())

    def _error_shards(self) -> list[int]:
        if any(s.flat for s in self.segments):
            return list(range(KEY_SHARDS))
        counts = sum((s.shard_errors for s in self.segments if s.shard_errors is not None), np.zeros(KEY_SHARDS, np.int64))
        rows, bounds, _ = self._delta_by_shard()
        if rows.num_rows:
            errors = np.isin(rows.column("status").to_numpy(zero_copy_only=False), (FINAL, RETRY))
            cumulative = np.concatenate([[0], np.cumsum(errors, dtype=np.int64)])
            counts = counts + cumulative[bounds[1:]] - cumulative[bounds[:-1]]
        return [int(s) for s in np.flatnonzero(counts)]

    def retryable(self, retry_errors: bool = False) -> pa.Table:
        """(uri, unit_id) rows of error keys a new invocation retries. Reads only the shards that hold error
        rows (counted per shard in each keys file's footer); nothing when the run has none."""
        if not any(r.n_errors for r in self.units.values()):
            return pa.table({"uri": pa.array([], pa.string()), "unit_id": pa.array([], pa.string())})
        want = (FINAL, RETRY) if retry_errors else (RETRY,)
        parts = [t.filter(pc.is_in(t.column("status"), value_set=pa.array(want, pa.int8())))
                 for t in self.iter_shards(self._error_shards())]
        return stack(parts).select(["uri", "unit_id"])

    def __contains__(self, key: str) -> bool:
        """Whether `key` is done (OK or FINAL). Reads and keeps the done keys of the key's shard (a set of
        Python strings: fine for a few shards, the whole index for many)."""
        shard = int(key_shard([key])[0])
        if self._contains is None:
            self._contains = {}
        if shard not in self._contains:
            rows = resolve(self.shard_rows(shard))
            self._contains[shard] = set(rows.column("uri").filter(pc.not_equal(rows.column("status"), RETRY)).to_pylist())
        return key in self._contains[shard]


def _string_array(keys) -> pa.Array:
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks() if keys.num_chunks != 1 else keys.chunk(0)
    if not isinstance(keys, pa.Array):
        keys = pa.array(keys, pa.string())
    return keys if keys.type == pa.string() else keys.cast(pa.string())
