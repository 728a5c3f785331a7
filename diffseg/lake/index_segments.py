"""Segments of a run's done index: Parquet files of key rows grouped by key shard, and of unit records.

A segment is two files written by one index write (diffseg.lake.done_index.write_index) and named by its
fenced ``index`` log entry:

    _index/<run_id>/<invocation>-<version>-keys.parquet    uri, unit_id, status; one row group per non-empty
                                                           shard (diffseg.lake.key_shards), shards ascending,
                                                           rows sorted by uri; footer metadata
                                                           ``diffseg.shard_rows`` / ``diffseg.shard_errors``
                                                           (rows and error rows per shard, JSON lists)
    _index/<run_id>/<invocation>-<version>-units.parquet   unit_id, items, errors, retry, files (JSON)

Each file is plain Parquet (any reader reads it whole). Probing shard s of a segment is one ranged GET of
that shard's row groups, decoded with the footer read once when the run's state is loaded. An index of
diffseg 0.3 (one snapshot, not grouped by shard) is a *flat* segment: read whole at its first probe and held
until the next index write rewrites it sharded.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diffseg.lake.key_shards import KEY_SHARDS, shard_order
from diffseg.lake.key_state import FINAL, RETRY, ROWS_SCHEMA, plain_rows
from diffseg.lake.store import TMP_PREFIX, OutputStore

LAYOUT = f"fnv1a64-fmix64/{KEY_SHARDS}"  # diffseg.lake.key_shards.key_shard: part of the stored format
MAX_SEGMENTS = 8  # more live segments than this: the newest are merged (bounds GETs per shard probe)
TAIL_BYTES = 256 * 1024  # first guess at a keys file's footer (256 row groups x 3 columns: ~60 KB)
READ_THREADS = 8  # shards read and decoded at once (object stores: hides the latency of each GET)
_SHARD_ROWS, _SHARD_ERRORS = b"diffseg.shard_rows", b"diffseg.shard_errors"
_FLAT_LOCK = threading.Lock()  # a flat segment is read whole once, not by every thread probing it


@dataclass(eq=False)
class Segment:
    """One live segment as an index entry lists it, plus what loading its keys footer gave."""

    keys: str  # relative paths under OUTPUT
    units: str
    keys_bytes: int
    keys_rows: int
    units_rows: int
    duplicates: int = 0  # keys held by two live pairs inside this segment (counted when written)
    covers: int = -1  # the log version the segment's rows reach
    flat: bool = False  # a diffseg 0.3 snapshot: rows not grouped by shard
    meta: object = field(default=None, repr=False)  # pyarrow FileMetaData of the keys file
    shard_rows: np.ndarray | None = field(default=None, repr=False)  # rows per shard (int64)
    shard_errors: np.ndarray | None = field(default=None, repr=False)  # FINAL/RETRY rows per shard
    ranges: np.ndarray | None = field(default=None, repr=False)  # (shards, 2) byte range of each shard
    groups: list | None = field(default=None, repr=False)  # row groups of each shard
    _split: dict | None = field(default=None, repr=False)  # flat: shard -> rows, after the first probe

    @property
    def size(self) -> int:
        """Rows, for the merge policy."""
        return self.keys_rows + self.units_rows

    def entry(self) -> dict:
        return {"keys": self.keys, "units": self.units, "keys_bytes": self.keys_bytes, "keys_rows": self.keys_rows,
                "units_rows": self.units_rows, "duplicates": self.duplicates, "covers": self.covers}

    @classmethod
    def of_entry(cls, d: dict) -> Segment:
        return cls(d["keys"], d["units"], int(d["keys_bytes"]), int(d["keys_rows"]), int(d["units_rows"]),
                   int(d.get("duplicates", 0)), int(d.get("covers", -1)))


def merge_count(sizes: list[int], max_segments: int = MAX_SEGMENTS) -> int:
    """How many of the newest segments (the last of `sizes`, oldest first; the last is the new delta) to
    write as one: grow the merged suffix while it is at least half the segment before it, or while more
    than `max_segments` would stay. A key is rewritten only when its segment grows by half, so O(log n)
    times; a small delta never rewrites a big base."""
    k = 1
    while k < len(sizes) and (2 * sum(sizes[-k:]) >= sizes[-k - 1] or len(sizes) - k + 1 > max_segments):
        k += 1
    return k


class _Window(io.RawIOBase):
    """A read-only file of `size` bytes of which only `ranges` [(start, bytes)] were fetched."""

    def __init__(self, size: int, ranges: list[tuple[int, bytes]]):
        self._size, self._ranges, self._pos = size, ranges, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self._size + offset
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._pos)
        for start, data in self._ranges:
            if start <= self._pos and self._pos + n <= start + len(data):
                buffer[:n] = data[self._pos - start: self._pos - start + n]
                self._pos += n
                return n
        raise OSError(f"index segment read outside the fetched ranges ({self._pos}+{n}): a bug")


def _file(size: int, ranges: list[tuple[int, bytes]]) -> pa.PythonFile:
    return pa.PythonFile(_Window(size, ranges), mode="r")


def _attach_footer(seg: Segment, tail: bytes) -> None:
    meta = pq.read_metadata(_file(seg.keys_bytes, [(seg.keys_bytes - len(tail), tail)]))
    kv = meta.metadata or {}
    seg.meta = meta
    seg.shard_rows = np.asarray(json.loads(kv[_SHARD_ROWS]), np.int64)
    seg.shard_errors = np.asarray(json.loads(kv[_SHARD_ERRORS]), np.int64)
    ranges, groups, g = np.zeros((KEY_SHARDS, 2), np.int64), [], 0
    for shard in range(KEY_SHARDS):
        mine, rows = [], 0
        while rows < seg.shard_rows[shard]:
            rows += meta.row_group(g).num_rows
            mine.append(g)
            g += 1
        groups.append(mine)
        if mine:
            starts, ends = [], []
            for i in mine:
                rg = meta.row_group(i)
                for c in range(rg.num_columns):
                    col = rg.column(c)
                    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
                    starts.append(start)
                    ends.append(start + col.total_compressed_size)
            ranges[shard] = (min(starts), max(ends))
    seg.ranges, seg.groups = ranges, groups


def open_segments(store: OutputStore, segments: list[Segment]) -> None:
    """Reads the footer of each sharded keys file (one ranged GET each, concurrently). FileNotFoundError when
    one is gone (a newer index entry replaced it)."""
    todo = [s for s in segments if not s.flat and s.meta is None and s.keys_rows]
    if not todo:
        for s in segments:
            if not s.flat and not s.keys_rows:
                s.shard_rows = s.shard_errors = np.zeros(KEY_SHARDS, np.int64)
        return
    for s in segments:
        if not s.flat and not s.keys_rows:
            s.shard_rows = s.shard_errors = np.zeros(KEY_SHARDS, np.int64)
    starts = [max(0, s.keys_bytes - TAIL_BYTES) for s in todo]
    tails = _cat_ranges(store, [s.keys for s in todo], starts, [s.keys_bytes for s in todo])
    for seg, tail in zip(todo, tails):
        footer = int.from_bytes(tail[-8:-4], "little") + 8
        if footer > len(tail):
            tail = _cat_ranges(store, [seg.keys], [seg.keys_bytes - footer], [seg.keys_bytes])[0]
        _attach_footer(seg, tail)


def _cat_ranges(store: OutputStore, rels: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
    got = store.fs.cat_ranges([store.path(r) for r in rels], starts, ends, on_error="return")
    for rel, data in zip(rels, got):
        if isinstance(data, Exception):
            raise data
        if not isinstance(data, bytes | bytearray | memoryview):
            raise OSError(f"reading {store.uri(rel)} gave {type(data).__name__}")
    return [bytes(d) for d in got]


def shard_parts(store: OutputStore, segments: list[Segment], shard: int) -> list[pa.Table]:
    """The rows of `shard` in each of `segments` (ROWS_SCHEMA, oldest first): one ranged GET per segment that
    has rows there (concurrent), a flat segment read whole once."""
    wanted = [s for s in segments if not s.flat and s.shard_rows is not None and s.shard_rows[shard]]
    data = _cat_ranges(store, [s.keys for s in wanted], [int(s.ranges[shard, 0]) for s in wanted],
                       [int(s.ranges[shard, 1]) for s in wanted]) if wanted else []
    fetched = dict(zip(map(id, wanted), data))
    parts = []
    for seg in segments:
        if seg.flat:
            parts.append(_flat_shard(store, seg, shard))
        elif id(seg) in fetched:
            source = _file(seg.keys_bytes, [(int(seg.ranges[shard, 0]), fetched[id(seg)])])
            parts.append(plain_rows(pq.ParquetFile(source, metadata=seg.meta).read_row_groups(seg.groups[shard])))
    return parts


def _flat_shard(store: OutputStore, seg: Segment, shard: int) -> pa.Table:
    with _FLAT_LOCK:
        if seg._split is None:
            _split_flat(store, seg)
    return seg._split[shard]


def _split_flat(store: OutputStore, seg: Segment) -> None:
    table = plain_rows(pq.read_table(pa.BufferReader(store.get(seg.keys))))
    order, bounds = shard_order(table.column("uri"))
    table = table.take(pa.array(order))
    seg._split = {s: table.slice(bounds[s], bounds[s + 1] - bounds[s]) for s in range(KEY_SHARDS)}


def flat_segment(keys: str, units: str, keys_rows: int, units_rows: int, covers: int) -> Segment:
    """A diffseg 0.3 index snapshot (files {"keys", "units"} of its entry) as a segment."""
    return Segment(keys, units, 0, keys_rows, units_rows, 0, covers, flat=True)


def map_ordered(fn: Callable, items: Iterable, threads: int = READ_THREADS) -> Iterator:
    """fn(item) for each item, in order, at most `threads` at once (bounded memory, unlike Executor.map)."""
    items = iter(items)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        window = [pool.submit(fn, it) for _, it in zip(range(threads), items)]
        while window:
            result = window.pop(0).result()
            nxt = next(items, None)
            if nxt is not None:
                window.append(pool.submit(fn, nxt))
            yield result


def write_keys(store: OutputStore, rel: str, shard_tables: Iterable[tuple[int, pa.Table]]) -> tuple[int, int]:
    """Writes a keys file from (shard, rows) in ascending shard order (rows: ROWS_SCHEMA); sorts each shard's
    rows by uri. Streams through a local temporary file (a merge may be large). Returns (bytes, rows)."""
    shard_rows, shard_errors = [0] * KEY_SHARDS, [0] * KEY_SHARDS
    local = store.local
    folder = os.path.dirname(store.path(rel)) if local else tempfile.gettempdir()
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(rel)}")
    try:
        writer = pq.ParquetWriter(tmp, ROWS_SCHEMA, compression="zstd", write_statistics=False,
                                  use_dictionary=["status"])
        try:
            for shard, rows in shard_tables:
                if not rows.num_rows:
                    continue
                rows = plain_rows(rows)
                rows = rows.take(pc.sort_indices(rows.column("uri")))
                status = rows.column("status")
                shard_rows[shard] += rows.num_rows
                shard_errors[shard] += pc.sum(pc.or_(pc.equal(status, FINAL), pc.equal(status, RETRY))).as_py() or 0
                writer.write_table(rows, row_group_size=rows.num_rows)
            writer.add_key_value_metadata({_SHARD_ROWS: json.dumps(shard_rows), _SHARD_ERRORS: json.dumps(shard_errors),
                                           b"diffseg.layout": LAYOUT})
        finally:
            writer.close()
        size = os.path.getsize(tmp)
        if local:
            os.replace(tmp, store.path(rel))
        else:
            store.fs.put_file(tmp, store.path(rel))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return size, sum(shard_rows)


def read_units(store: OutputStore, segments: list[Segment]) -> list[pa.Table]:
    """The units files of `segments` (oldest first), fetched concurrently."""
    from diffseg.lake.unit_records import UNITS_SCHEMA

    got = store.get_many([s.units for s in segments])
    out = []
    for seg in segments:
        data = got[seg.units]
        if isinstance(data, Exception):
            raise data
        out.append(pq.read_table(pa.BufferReader(data), schema=UNITS_SCHEMA))
    return out
