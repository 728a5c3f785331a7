"""The state of work-item keys from the rows of a done index: pure functions on Arrow tables of one shard.

A row is (uri, unit_id, status): the key ``uri`` as committed in unit ``unit_id`` with its outcome. Rows come
in log order (older segments first, the in-memory delta last). A (uri, unit_id) pair's state is its newest
row ("latest wins"): a ``retry`` entry writes a :data:`RELEASED` row (a tombstone) for the error rows it hands
back, and a unit committed again under the same id writes new rows. A key is *done* when one of its live
pairs is :data:`OK` (or :data:`FINAL`, unless errors are retried); two live pairs of one key in two units
are a duplicate (a plain read sees the key twice).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

OK, FINAL, RETRY, RELEASED = 0, 1, 2, 3
NO_ROW = 127  # "the key has no live row" in a per-key status array
ROWS_SCHEMA = pa.schema([("uri", pa.string()), ("unit_id", pa.string()), ("status", pa.int8())])


def plain_rows(table: pa.Table) -> pa.Table:
    """`table` (uri, unit_id, status; unit_id dictionary-encoded or not, any chunking) as ROWS_SCHEMA, one chunk."""
    if table.schema != ROWS_SCHEMA:
        table = table.select(["uri", "unit_id", "status"]).cast(ROWS_SCHEMA)
    return table.combine_chunks()


def stack(parts: list[pa.Table]) -> pa.Table:
    """Row tables (oldest first) as one ROWS_SCHEMA table in log order."""
    parts = [plain_rows(p) for p in parts if p.num_rows]
    if not parts:
        return ROWS_SCHEMA.empty_table()
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts).combine_chunks()


def _codes(array: pa.Array) -> np.ndarray:
    """int64 codes of `array`'s values (equal values, equal codes)."""
    encoded = pc.dictionary_encode(array)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def newest_per_pair(key_codes: np.ndarray, unit_codes: np.ndarray) -> np.ndarray:
    """Ascending row indices of the newest row of each (key, unit) pair; rows are in log order.
    `key_codes`, `unit_codes`: int64 arrays of one length, non-negative."""
    n = len(key_codes)
    if n == 0:
        return np.zeros(0, np.int64)
    pair = key_codes * (int(unit_codes.max()) + 1) + unit_codes
    _, first_from_end = np.unique(pair[::-1], return_index=True)
    if len(first_from_end) == n:
        return np.arange(n, dtype=np.int64)  # no pair repeats: every row is the newest of its pair
    return np.sort(n - 1 - first_from_end)


def resolve(rows: pa.Table, keep_released: bool = False) -> pa.Table:
    """The newest row of each (uri, unit_id) pair of `rows` (ROWS_SCHEMA, log order), without RELEASED rows
    unless `keep_released` (a segment that older segments sit under keeps its tombstones)."""
    if rows.num_rows == 0:
        return rows
    keep = newest_per_pair(_codes(rows.column("uri").combine_chunks()), _codes(rows.column("unit_id").combine_chunks()))
    out = rows if len(keep) == rows.num_rows else rows.take(pa.array(keep))
    if not keep_released:
        out = out.filter(pc.not_equal(out.column("status"), RELEASED))
    return out


def duplicates_of(live: pa.Table) -> int:
    """Keys held by more than one live pair of `live` (resolved rows, no RELEASED): rows - distinct keys."""
    live = live.filter(pc.not_equal(live.column("status"), RELEASED))
    if live.num_rows == 0:
        return 0
    return live.num_rows - pc.count_distinct(live.column("uri")).as_py()


def key_status(keys: pa.Array, rows: pa.Table) -> tuple[np.ndarray, pa.Table]:
    """Per key of `keys` (a StringArray) the best status of its live pairs in `rows` (ROWS_SCHEMA, log order):
    int8 array, OK < FINAL < RETRY, NO_ROW when none; and the live rows of those keys (uri, unit_id, status).
    Hashes the smaller side: `keys` when it is the smaller, else the keys that have rows at all."""
    best = np.full(len(keys), NO_ROW, np.int8)
    if rows.num_rows == 0 or len(keys) == 0:
        return best, ROWS_SCHEMA.empty_table()
    uris = rows.column("uri").combine_chunks()
    if len(keys) > rows.num_rows:  # few rows: hash them, keep the keys that have any
        has = pc.is_in(keys, value_set=uris).to_numpy(zero_copy_only=False)
        where = np.flatnonzero(has)
        candidates = keys.take(pa.array(where))
    else:
        where, candidates = None, keys
    position = pc.index_in(uris, value_set=candidates)
    hit = position.is_valid()
    matched = rows.filter(hit)
    if matched.num_rows == 0:
        return best, ROWS_SCHEMA.empty_table()
    pos = position.filter(hit).to_numpy(zero_copy_only=False).astype(np.int64)
    if where is not None:
        pos = where[pos]
    keep = newest_per_pair(pos, _codes(matched.column("unit_id").combine_chunks()))
    pos = pos[keep]
    live = matched.take(pa.array(keep)) if len(keep) != matched.num_rows else matched
    status = live.column("status").to_numpy(zero_copy_only=False)
    alive = status != RELEASED
    for value in (RETRY, FINAL, OK):  # descending: the smallest status of a key is written last
        best[pos[alive & (status == value)]] = value
    return best, live.filter(pa.array(alive))


def done_mask(best: np.ndarray, retry_errors: bool) -> np.ndarray:
    """Which keys are done, from :func:`key_status`'s statuses: OK, or FINAL unless `retry_errors`."""
    return (best == OK) if retry_errors else ((best == OK) | (best == FINAL))
