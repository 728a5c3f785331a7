"""A run's committed units as planning, sweeps and readers hold them: one small record per unit.

``DoneSet.units`` maps unit_id -> :class:`UnitRecord`, a read-only mapping with the keys ``items``,
``errors``, ``retry`` and ``files`` ({table: {"path", "bytes", "md5", "rows"}}). The files are kept as their
compact JSON text and parsed when asked for, so a record costs about the JSON's length plus ~200 bytes
(measured by ``python -m jobs.bench.index``), not the ~2.5 KB of the parsed dicts. Records are replaced,
never changed (diffseg.lake.done_index.replay), so copies of the dict share them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UNITS_SCHEMA = pa.schema([("unit_id", pa.string()), ("items", pa.int64()), ("errors", pa.int64()),
                          ("retry", pa.int64()), ("files", pa.string())])
_FIELDS = ("items", "errors", "retry", "files")


class UnitRecord(Mapping):
    """One committed unit: ``items`` (keys it holds), ``errors`` (of them error rows), ``retry`` (of those
    retryable), ``files`` (parsed from JSON at each access)."""

    __slots__ = ("n_items", "n_errors", "n_retry", "files_json")  # not "items": Mapping.items() stays a method

    def __init__(self, items: int, errors: int, retry: int, files_json: str):
        self.n_items, self.n_errors, self.n_retry, self.files_json = int(items), int(errors), int(retry), files_json

    @classmethod
    def of(cls, items: int, errors: int, retry: int, files: dict) -> UnitRecord:
        return cls(items, errors, retry, json.dumps(files, separators=(",", ":")))

    def __getitem__(self, name: str):
        if name == "files":
            return json.loads(self.files_json)
        if name in ("items", "errors", "retry"):
            return getattr(self, "n_" + name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS)

    def __repr__(self) -> str:
        return f"UnitRecord(items={self.n_items}, errors={self.n_errors}, retry={self.n_retry}, files={self.files_json})"


def records_table(records: list[tuple[str, UnitRecord]]) -> pa.Table:
    """(unit_id, record) pairs as a UNITS_SCHEMA table (the index's units file)."""
    return pa.table({"unit_id": [u for u, _ in records], "items": [r.n_items for _, r in records],
                     "errors": [r.n_errors for _, r in records], "retry": [r.n_retry for _, r in records],
                     "files": [r.files_json for _, r in records]}, schema=UNITS_SCHEMA)


def add_records(units: dict[str, UnitRecord], table: pa.Table) -> None:
    """Puts the rows of a UNITS_SCHEMA `table` into `units` (a later row of a unit replaces the earlier)."""
    columns = [table.column(c).to_pylist() for c in ("unit_id", "items", "errors", "retry", "files")]
    for unit_id, items, errors, retry, files in zip(*columns):
        units[unit_id] = UnitRecord(items, errors, retry, files)


def newest_records(tables: list[pa.Table]) -> pa.Table:
    """UNITS_SCHEMA tables (oldest first) as one table holding the newest row of each unit, by unit_id."""
    table = pa.concat_tables([t.cast(UNITS_SCHEMA) for t in tables]).combine_chunks() if tables else UNITS_SCHEMA.empty_table()
    if table.num_rows == 0:
        return table
    codes = pc.dictionary_encode(table.column("unit_id")).combine_chunks().indices.to_numpy(zero_copy_only=False)
    _, first_from_end = np.unique(codes[::-1], return_index=True)
    keep = np.sort(table.num_rows - 1 - first_from_end)
    table = table if len(keep) == table.num_rows else table.take(pa.array(keep))
    return table.take(pc.sort_indices(table, [("unit_id", "ascending")]))
