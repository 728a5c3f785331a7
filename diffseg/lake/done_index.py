"""A run's done index: what planning reads instead of one commit marker per unit.

Commit markers (``_commits/<run_id>/<unit_id>.json``) stay the commit points and are never rewritten.
The index is a cache of them, compacted at the end of every invocation:

    _index/<run_id>/uris.parquet     uri (string), unit_id (string): every item of the committed units
    _index/<run_id>/units.parquet    unit_id, items, errors: one row per committed unit

Planning lists ``_commits/<run_id>/`` (names only), reads the index and only the markers written since
it was compacted (:func:`load_done`), so a nightly re-plan of a run with ten million items done reads
two Parquet files and a listing, not forty thousand JSON objects. Keys stay in Arrow (no Python set of
ten million strings): :meth:`DoneSet.exclude` filters a listing with ``pyarrow.compute.is_in``.

An unreadable index is ignored (rebuilt from the markers); a marker that cannot be parsed does not
count as committed (diffseg.lake.units.load_commits). Items held by two committed units (duplicates left
by versions before the lease and the per-unit commit check) are counted and reported by planning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diffseg.lake.store import OutputStore
from diffseg.lake.units import COMMITS

log = logging.getLogger("diffseg.lake.done_index")

INDEX = "_index"
URIS_SCHEMA = pa.schema([("uri", pa.string()), ("unit_id", pa.string())])
UNITS_SCHEMA = pa.schema([("unit_id", pa.string()), ("items", pa.int64()), ("errors", pa.int64())])
# URIS_SCHEMA as planning holds it: a unit's id stored once per unit, not once per item
HELD_URIS_SCHEMA = pa.schema([("uri", pa.string()), ("unit_id", pa.dictionary(pa.int32(), pa.string()))])


@dataclass
class DoneSet:
    """The committed items of one run: keys (Arrow strings) and per-unit counts."""

    uris: pa.Table  # URIS_SCHEMA rows (HELD_URIS_SCHEMA as load_done reads them)
    units: pa.Table  # UNITS_SCHEMA rows
    markers_read: int = 0  # markers read individually (written since the index was compacted)
    stale_units: int = 0  # markers the index did not hold yet (what a merge adds)
    _set: set[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.uris.num_rows

    def __contains__(self, key: str) -> bool:
        if self._set is None:
            self._set = set(self.uris.column("uri").to_pylist())
        return key in self._set

    @property
    def unit_ids(self) -> set[str]:
        return set(self.units.column("unit_id").to_pylist())

    def exclude(self, keys: list[str] | pa.Array) -> list[str] | pa.Array:
        """`keys` (in order) minus the committed ones: a list for a list, an Arrow array for an Arrow array
        (planning at lake scale keeps its listing in Arrow: no Python string per URI)."""
        array = keys if isinstance(keys, pa.Array) else pa.array(keys, pa.string())
        if len(self):
            seen = pc.is_in(array, value_set=self.uris.column("uri"))  # chunked as read: no combined copy
            array = array.filter(pc.invert(seen))
        return array if isinstance(keys, pa.Array) else array.to_pylist()

    def duplicates(self) -> int:
        """Items held by more than one committed unit (rows a plain read would see twice)."""
        return len(self) - pc.count_distinct(self.uris.column("uri")).as_py()

    def error_fraction(self) -> tuple[int, int]:
        """(items, errors) of the run's committed units."""
        return pc.sum(self.units.column("items")).as_py() or 0, pc.sum(self.units.column("errors")).as_py() or 0


def _read(store: OutputStore, rel: str, schema: pa.Schema) -> pa.Table | None:
    """The Parquet file `rel` with `schema`; ``unit_id`` of the URIs file dictionary-encoded (a unit's id
    once per unit, not once per item: 40 MB instead of 200 MB at ten million items)."""
    try:
        data = store.get(rel)
    except FileNotFoundError:
        return None
    held = HELD_URIS_SCHEMA if schema is URIS_SCHEMA else schema
    table = pq.read_table(pa.BufferReader(data), columns=schema.names,
                          read_dictionary=["unit_id"] if held is not schema else None)
    del data
    return table.cast(held)


def read_index(store: OutputStore, run_id: str) -> tuple[pa.Table, pa.Table]:
    """The run's compacted index (empty tables when there is none or it cannot be read)."""
    try:
        units = _read(store, f"{INDEX}/{run_id}/units.parquet", UNITS_SCHEMA)
        uris = _read(store, f"{INDEX}/{run_id}/uris.parquet", URIS_SCHEMA) if units is not None else None
        if units is not None and uris is not None:  # URIs of units the units file does not hold: a cut merge
            held = pc.is_in(uris.column("unit_id"), value_set=units.column("unit_id").combine_chunks())
            return (uris if pc.all(held).as_py() is not False else uris.filter(held)), units
    except Exception as exc:
        log.warning("ignoring the unreadable done index of run %r (%s): reading its markers instead", run_id, exc)
    return HELD_URIS_SCHEMA.empty_table(), UNITS_SCHEMA.empty_table()


def markers_to_tables(markers: list[dict]) -> tuple[pa.Table, pa.Table]:
    """Index rows of commit markers: (uris, units)."""
    uris = [u for m in markers for u in m["uris"]]
    unit_of = [m["unit_id"] for m in markers for _ in m["uris"]]
    units = {"unit_id": [m["unit_id"] for m in markers], "items": [len(m["uris"]) for m in markers],
             "errors": [int(m.get("rows", {}).get("errors", 0)) for m in markers]}
    return (pa.table({"uri": uris, "unit_id": unit_of}, schema=URIS_SCHEMA),
            pa.table(units, schema=UNITS_SCHEMA))


def listed_units(store: OutputStore, run_id: str) -> set[str]:
    """Unit ids of the run's commit markers, from one listing (names only)."""
    names = (r.rsplit("/", 1)[-1] for r in store.list(f"{COMMITS}/{run_id}"))
    return {n[:-5] for n in names if n.endswith(".json") and not n.startswith(".")}


def load_done(store: OutputStore, run_id: str) -> DoneSet:
    """The run's done set: the index plus the markers written since it was compacted."""
    from diffseg.lake.units import load_markers

    uris, units = read_index(store, run_id)
    listed = listed_units(store, run_id)
    indexed = set(units.column("unit_id").to_pylist())
    if indexed - listed:  # the index names units whose marker is gone: not trusted
        log.warning("the done index of run %r names %d unit(s) without a marker: rebuilding it from the markers",
                    run_id, len(indexed - listed))
        uris, units, indexed = HELD_URIS_SCHEMA.empty_table(), UNITS_SCHEMA.empty_table(), set()
    new = load_markers(store, run_id, sorted(listed - indexed))
    more_uris, more_units = markers_to_tables(new)
    if new:
        uris = pa.concat_tables([uris, more_uris.cast(HELD_URIS_SCHEMA)])
        units = pa.concat_tables([units, more_units])
    return DoneSet(uris, units, len(new), len(new))


def merge_index(store: OutputStore, run_id: str, done: DoneSet, committed: list[dict]) -> None:
    """Writes the run's compacted index: `done` (as planning read it) plus the markers this invocation
    `committed`. Units file last, so a reader never pairs new units with old URIs."""
    if not committed and not done.stale_units and store.exists(f"{INDEX}/{run_id}/units.parquet"):
        return
    more_uris, more_units = markers_to_tables(committed)
    uris = pa.concat_tables([done.uris.cast(URIS_SCHEMA), more_uris])
    units = pa.concat_tables([done.units, more_units])
    for rel, table in ((f"{INDEX}/{run_id}/uris.parquet", uris), (f"{INDEX}/{run_id}/units.parquet", units)):
        store.put_parquet(rel, table)


def describe_done(done: DoneSet) -> dict:
    """Planning counts of a done set (for the manifest)."""
    return {"index_markers_read": done.markers_read, "duplicate_items": done.duplicates()}

