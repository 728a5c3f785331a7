"""Planning loose files as a stream: the listing spilled by key shard, units cut group by group and stored.

The driver never holds the lake. :func:`plan_keys` consumes the listing in batches (``pyarrow.StringArray``),
spills each key to the file of its shard (diffseg.lake.key_shards: 256 shards, a stable hash) in a local
temporary folder (:class:`KeySpill`: Arrow IPC, a ~1 MB buffer per shard). Then per shard it drops
duplicates and what the run has done (``DoneSet.exclude_shard``) and spills what is left back; and per group
of consecutive shards (:func:`shard_groups`: ~500k keys to do each, one group for a small lake or a nightly
delta), in order, it sorts their keys, cuts them into units of ``unit_size`` (id:
diffseg.lake.units.unit_id_of of the members) and writes the group's plan to OUTPUT::

    _plans/<run_id>/<invocation>/<first shard:03d>.arrow   Arrow IPC stream, one record batch per unit
                                                           (uri, unit_id, pos int32, unit_rows int32)

A worker fetches a unit with one ranged read of its record batch (a Parquet file of ~1,500 row groups would
make every unit read its footer). The driver keeps per unit its id, rows, file and byte range (38 bytes:
:class:`StoredPlan`) and the keys of error rows planned again (``held``); its memory is one listing batch,
the spill buffers (256 MB at most) and one group of shards.

Order: units come group by group, and a group's keys are spread over the whole key range by the hash; within
a group units go in the order of their ids (a hash too). So at scale the reads in flight are never one moving
range of adjacent keys (a store throttles per key prefix); images within a unit stay sorted. ``limit`` takes
the first N keys to do in that order: N images spread by hash (the first N sorted ones of a small lake).

No Ray here (jobs.segment.dataset feeds a StoredPlan to Ray Data, one block per unit). Units the other
planners make (jobs.synthesize, containers) are a :class:`UnitList`; both answer len, ``total_items``,
``facts()``, ``without()`` and ``held_keys()``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from diffseg.lake.key_shards import KEY_SHARDS, key_shard, shard_order
from diffseg.lake.units import Unit, UnitList

PLANS = "_plans"  # _plans/<run_id>/<invocation>/<shard:03d>.arrow
PLAN_SCHEMA = pa.schema([("uri", pa.string()), ("unit_id", pa.string()), ("pos", pa.int32()), ("unit_rows", pa.int32())])
KEYS_SCHEMA = pa.schema([("uri", pa.string())])
SPILL_FLUSH_BYTES = 1 << 20  # a shard's spill buffer is written out at this size


def plan_folder(run_id: str, invocation: str) -> str:  # relative to OUTPUT
    return f"{PLANS}/{run_id}/{invocation}"


def plan_file(run_id: str, invocation: str, shard: int) -> str:  # the plan of the group starting at `shard`
    return f"{plan_folder(run_id, invocation)}/{shard:03d}.arrow"


class KeySpill:
    """Keys bucketed by shard into local Arrow IPC files (one per shard) in a temporary folder (removed by
    :meth:`close`, or on leaving a ``with`` block). Memory: at most ``flush_bytes`` of keys per shard."""

    def __init__(self, shards: int = KEY_SHARDS, flush_bytes: int = SPILL_FLUSH_BYTES, folder: str | None = None):
        self.shards, self.flush_bytes = shards, flush_bytes
        self.folder = tempfile.mkdtemp(prefix="diffseg-plan-", dir=folder)
        self._buffers: list[list[pa.Array]] = [[] for _ in range(shards)]
        self._sizes = np.zeros(shards, np.int64)
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self.keys = 0  # keys added (duplicates included)

    def __enter__(self) -> KeySpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, keys: pa.Array) -> None:
        """Spills a batch of keys (a pyarrow string array; nulls are not keys)."""
        for chunk in keys.chunks if isinstance(keys, pa.ChunkedArray) else ():
            self.add(chunk)
        if isinstance(keys, pa.ChunkedArray) or not len(keys):
            return
        if keys.null_count:
            keys = keys.drop_null()
        order, bounds = shard_order(keys, self.shards)
        ordered = keys.take(pa.array(order))
        for s in np.flatnonzero(np.diff(bounds)):
            part = ordered.slice(int(bounds[s]), int(bounds[s + 1] - bounds[s]))
            self._buffers[s].append(part)
            self._sizes[s] += part.nbytes
            if self._sizes[s] >= self.flush_bytes:
                self._flush(int(s))
        self.keys += len(keys)

    def _flush(self, shard: int) -> None:  # called with keys in the buffer
        writer = self._writers.get(shard)
        if writer is None:
            writer = self._writers[shard] = pa.ipc.new_stream(self._path(shard), KEYS_SCHEMA)
        writer.write_batch(pa.record_batch([pa.concat_arrays(self._buffers[shard])], schema=KEYS_SCHEMA))
        self._buffers[shard], self._sizes[shard] = [], 0

    def _path(self, shard: int) -> str:
        return os.path.join(self.folder, f"{shard:03d}.arrow")

    def put(self, shard: int, keys: pa.Array) -> None:
        """Makes `keys` the shard's spill (after :meth:`read` took what it held)."""
        self._buffers[shard], self._sizes[shard] = [keys], keys.nbytes
        if keys.nbytes >= self.flush_bytes:
            self._flush(shard)

    def read(self, shard: int) -> pa.Array:
        """Every key spilled to `shard` (in spill order, duplicates kept), one string array."""
        parts = []
        writer = self._writers.pop(shard, None)
        if writer is not None:
            writer.close()
            with pa.OSFile(self._path(shard), "rb") as f:
                parts += [b.column(0) for b in pa.ipc.open_stream(f)]
            os.remove(self._path(shard))
        parts += self._buffers[shard]
        self._buffers[shard], self._sizes[shard] = [], 0
        return pa.concat_arrays(parts) if parts else pa.array([], pa.string())

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def unit_ids_of_sorted(keys: pa.Array, unit_size: int) -> list[str]:
    """diffseg.lake.units.unit_id_of of each consecutive ``unit_size`` slice of sorted `keys`: one joined
    string per unit (pyarrow's binary_join), never a Python string per key."""
    n = len(keys)
    if not n:
        return []
    starts = np.unique(np.append(np.arange(0, n, unit_size), n)).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(starts, pa.int32()), keys)
    joined = pc.binary_join(lists, "\n")
    return [hashlib.sha256(j.as_buffer().to_pybytes()).hexdigest()[:16] for j in joined]


def cut_units(keys: pa.Array, unit_size: int) -> tuple[list[pa.RecordBatch], list[str]]:
    """Sorted unique `keys` (a string array) cut into units of at most `unit_size`: one PLAN_SCHEMA record
    batch per unit (uri, unit_id, pos, unit_rows) and the unit ids, as diffseg.lake.units.make_units cuts them."""
    if unit_size < 1:
        raise ValueError(f"unit size must be at least 1, got {unit_size}")
    ids = unit_ids_of_sorted(keys, unit_size)
    batches = []
    for i, unit_id in enumerate(ids):
        uris = keys.slice(i * unit_size, unit_size)
        n = len(uris)
        batches.append(pa.record_batch([uris, pa.array([unit_id] * n, pa.string()),
                                        pa.array(np.arange(n, dtype=np.int32)), pa.array(np.full(n, n, np.int32))],
                                       schema=PLAN_SCHEMA))
    return batches, ids


def ipc_batches(batches: list[pa.RecordBatch]) -> tuple[bytes, list[tuple[int, int]]]:
    """An Arrow IPC stream of `batches` and the (offset, length) of each batch's message in it."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, PLAN_SCHEMA) as writer:
        for batch in batches:
            writer.write_batch(batch)
    data = sink.getvalue()
    reader, ranges = pa.BufferReader(data), []
    while True:  # the message boundaries, as a reader finds them (the schema message comes first)
        start = reader.tell()
        try:
            message = pa.ipc.read_message(reader)
        except (StopIteration, EOFError, OSError):
            break
        if message.type == "record batch":
            ranges.append((start, reader.tell() - start))
    if len(ranges) != len(batches):
        raise RuntimeError(f"plan file: {len(ranges)} record batch messages found for {len(batches)} units")
    return data.to_pybytes(), ranges


def unit_from_bytes(data: bytes) -> pa.Table:
    """One unit's PLAN_SCHEMA rows from the bytes of its record batch message (a range of a plan file)."""
    message = pa.ipc.read_message(pa.BufferReader(data))
    return pa.Table.from_batches([pa.ipc.read_record_batch(message, PLAN_SCHEMA)])


@dataclass
class StoredPlan:
    """The units of one invocation, stored under OUTPUT (see the module docstring); per unit only (N,) arrays:
    ``unit_ids`` bytes (S16), ``rows`` int32, ``shards`` int16, ``offsets``/``lengths`` int64 (the unit's record
    batch in its shard's file). ``held``: keys of error rows the plan processes again (released first)."""

    output: str
    folder: str  # relative to OUTPUT: _plans/<run_id>/<invocation>
    unit_ids: np.ndarray
    rows: np.ndarray
    shards: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    held: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))

    def __len__(self) -> int:
        return len(self.unit_ids)

    @property
    def total_items(self) -> int:
        return int(self.rows.sum())

    def facts(self) -> tuple[np.ndarray, np.ndarray]:
        """(unit ids as bytes, rows) of every unit, in plan order."""
        return self.unit_ids, self.rows

    def held_keys(self) -> pa.Array:  # keys of error rows planned again
        return self.held

    def where(self, i: int) -> tuple[str, int, int]:
        """(plan file relative to OUTPUT, offset, length) of unit `i`."""
        return f"{self.folder}/{int(self.shards[i]):03d}.arrow", int(self.offsets[i]), int(self.lengths[i])

    def without(self, unit_ids: Iterable[str]) -> StoredPlan:
        """The plan of the units not in `unit_ids` (e.g. the committed ones), same order."""
        gone = np.array([u.encode() for u in unit_ids], dtype=self.unit_ids.dtype)
        keep = ~np.isin(self.unit_ids, gone) if len(gone) else np.ones(len(self), bool)
        return StoredPlan(self.output, self.folder, self.unit_ids[keep], self.rows[keep], self.shards[keep],
                          self.offsets[keep], self.lengths[keep], self.held)


def read_unit(store, rel: str, offset: int, length: int) -> pa.Table:
    """A unit's PLAN_SCHEMA rows from a plan file of `store` (a diffseg.lake.store.OutputStore): one ranged read."""
    return unit_from_bytes(store.fs.cat_file(store.path(rel), start=offset, end=offset + length))


def read_unit_blocks(output: str, rel: str, offset: int, length: int) -> list[pa.Table]:
    """[read_unit] from OUTPUT's URL: a Ray Data read task's blocks (a light import for its worker)."""
    from diffseg.lake.store import OutputStore

    return [read_unit(OutputStore(output), rel, offset, length)]


def as_plan(units) -> StoredPlan | UnitList:
    """`units` as a plan: a StoredPlan or UnitList as it is, a list of Units as a UnitList."""
    return units if isinstance(units, (StoredPlan, UnitList)) else UnitList(units)


def batches_of(listing, batch_rows: int = 1 << 20) -> Iterator[pa.Array]:
    """The listing's keys in batches: ``listing.batches()`` when it streams them, else slices of its
    ``uris`` array (a diffseg.inputs.Listing of loose files, or a pyarrow string array)."""
    batches = getattr(listing, "batches", None)
    if callable(batches):
        yield from batches()
        return
    uris = listing if isinstance(listing, (pa.Array, pa.ChunkedArray)) else listing.uris
    for start in range(0, len(uris), batch_rows):
        yield uris.slice(start, batch_rows)


class _DoneShards:
    """``exclude_shard`` for a done set that has none (diffseg.lake.done_index before its sharded index): the
    done keys and the error keys split by shard once."""

    def __init__(self, done, retry_errors: bool, shards: int):
        def by_shard(keys) -> list[pa.Array]:
            keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
            shard = key_shard(keys, shards) if len(keys) else np.zeros(0, np.int32)
            return [keys.filter(pa.array(shard == s)) for s in range(shards)]

        self.done = by_shard(done.done_keys(retry_errors))
        self.errors = by_shard(done.retryable(retry_errors).column("uri"))

    def exclude_shard(self, keys: pa.Array, shard: int) -> tuple[pa.Array, pa.Array]:
        todo = keys.filter(pc.invert(pc.is_in(keys, value_set=self.done[shard]))) if len(self.done[shard]) else keys
        held = todo.filter(pc.is_in(todo, value_set=self.errors[shard])) if len(self.errors[shard]) else todo.slice(0, 0)
        return todo, held


def _todo_by_shard(done, spill: KeySpill, retry_errors: bool) -> Iterator[tuple[int, int, pa.Array, pa.Array]]:
    """(shard, unique keys listed, todo, held) per shard in order, from the done index's exclude_shards (a few
    shards read at once) or exclude_shard, or the fallback for an index without shards."""
    listed = {}

    def keys():
        for shard in range(spill.shards):
            listed[shard] = len(k := pc.unique(spill.read(shard)))
            yield shard, k

    sharded = spill.shards == KEY_SHARDS  # the index's shards are key_shard's 256 (tests plan with fewer)
    if sharded and hasattr(done, "exclude_shards"):
        results = done.exclude_shards(keys(), retry_errors=retry_errors)
    else:
        one = (functools.partial(done.exclude_shard, retry_errors=retry_errors)
               if sharded and hasattr(done, "exclude_shard") else _DoneShards(done, retry_errors, spill.shards).exclude_shard)
        results = ((shard, *one(k, shard)) for shard, k in keys())
    for shard, todo, held in results:
        yield shard, listed.pop(shard), todo, held


@dataclass
class PlanCounts:
    listed: int = 0  # unique keys listed
    already_done: int = 0
    limited_out: int = 0
    to_process: int = 0


GROUP_KEYS = 1 << 19  # keys to do per group of shards planned together (~40 MB of keys)


def shard_groups(todo: np.ndarray, group_keys: int = GROUP_KEYS) -> list[range]:
    """Consecutive shards planned together, given each shard's number of keys to do (`todo`, (shards,)
    int): a group closes once it holds at least `group_keys` of them, so units are full whatever the size
    of the delta (a nightly 10^3 new images are one group: the units of their sorted URIs)."""
    groups, start, held = [], 0, 0
    for shard, n in enumerate(np.asarray(todo, dtype=np.int64)):
        held += int(n)
        if held >= group_keys:
            groups.append(range(start, shard + 1))
            start, held = shard + 1, 0
    if start < len(todo):
        groups.append(range(start, len(todo)))
    return groups


def plan_keys(listing, done, store, run_id: str, invocation: str, unit_size: int, limit: int | None = None,
              retry_errors: bool = False, shards: int = KEY_SHARDS,
              group_keys: int = GROUP_KEYS) -> tuple[StoredPlan, PlanCounts]:
    """Plans the listed keys the run has not done (see the module docstring) and writes the plan files under
    `store` (a diffseg.lake.store.OutputStore). `listing`: a diffseg.inputs.Listing of loose files (or a
    string array); `done`: the run's diffseg.lake.done_index.DoneSet. Returns the plan and its counts.

    Two passes over the spill: per shard, the keys to do replace the shard's spill (and are counted); then
    per group of consecutive shards (:func:`shard_groups`, by keys to do, so a small delta still gets full
    units) they are sorted and cut, the group's units stored in the order of their ids (a hash) in the
    group's file (``<first shard>.arrow``)."""
    if unit_size < 1:
        raise ValueError(f"unit size must be at least 1, got {unit_size}")
    folder = plan_folder(run_id, invocation)
    ids, rows, shard_of, spans, held = [], [], [], [], []
    counts = PlanCounts()
    with KeySpill(shards) as spill:
        for batch in batches_of(listing):
            spill.add(batch)
        todo_counts, errors = np.zeros(shards, np.int64), []
        for shard, listed, todo, errors_s in _todo_by_shard(done, spill, retry_errors):  # pass 1: what is to do
            counts.listed += listed
            counts.already_done += listed - len(todo)
            todo_counts[shard] = len(todo)
            spill.put(shard, todo)
            if len(errors_s):
                errors.append(errors_s)
        errors = pa.concat_arrays(errors) if errors else pa.array([], pa.string())
        for group in shard_groups(todo_counts, group_keys):  # pass 2: units, group by group
            todo = pa.concat_arrays([spill.read(shard) for shard in group])
            todo = todo.take(pc.sort_indices(todo))
            if limit is not None and counts.to_process + len(todo) > limit:
                take = max(0, limit - counts.to_process)
                counts.limited_out += len(todo) - take
                todo = todo.slice(0, take)
            if not len(todo):
                continue
            counts.to_process += len(todo)
            batches, unit_ids = cut_units(todo, unit_size)
            order = sorted(range(len(unit_ids)), key=unit_ids.__getitem__)  # spread within the group too
            batches, unit_ids = [batches[i] for i in order], [unit_ids[i] for i in order]
            data, ranges = ipc_batches(batches)
            store.put(plan_file(run_id, invocation, group.start), data)
            ids += unit_ids
            rows += [b.num_rows for b in batches]
            shard_of += [group.start] * len(batches)
            spans += ranges
            if len(errors):
                held.append(errors.filter(pc.is_in(errors, value_set=todo)))
    spans = np.array(spans, np.int64).reshape(-1, 2)  # (offset, length) of each unit's record batch
    plan = StoredPlan(store.output, folder, np.array([u.encode() for u in ids], dtype="S16"), np.array(rows, np.int32),
                      np.array(shard_of, np.int16), spans[:, 0].copy(), spans[:, 1].copy(),
                      pa.concat_arrays(held) if held else pa.array([], pa.string()))
    return plan, counts


def remove_plans(store, run_id: str, invocations: Iterable[str]) -> None:
    """Deletes the plan files of `invocations` of the run (their plans are over)."""
    for inv in invocations:
        store.remove(store.list(plan_folder(run_id, inv)))
        if store.local:  # a local disk keeps empty folders
            shutil.rmtree(store.path(plan_folder(run_id, inv)), ignore_errors=True)


def units_of_plan(store, plan: StoredPlan) -> Iterator[Unit]:
    """The plan's units as diffseg.lake.units.Unit objects (tests and tools: a Python string per key)."""
    for i in range(len(plan)):
        yield Unit(plan.unit_ids[i].decode(), tuple(read_unit(store, *plan.where(i)).column("uri").to_pylist()))
