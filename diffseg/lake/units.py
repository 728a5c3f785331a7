"""Work units, commit markers, the done set, debris removal and the committed-read helper.

Layout under OUTPUT (one run = one ``run_id``; several runs may share an OUTPUT)::

    masks/part-<run_id>-<unit_id>.parquet     one file per unit and table
    stats/part-<run_id>-<unit_id>.parquet
    errors/part-<run_id>-<unit_id>.parquet    (written even when empty, so every table is readable)
    _commits/<run_id>/<unit_id>.json          the unit's commit marker, written LAST
    _runs/<run_id>.json                       what the run is (model, vocabulary hash, methods)
    manifest.json                             the latest invocation (see diffseg.lake.manifest)

A unit is a sorted run of a few hundred URIs; its id is a hash of those URIs, so the same remaining
images always form the same units. A unit exists for readers only once its marker exists; the marker
lists its URIs and files. The done set of a run is the union of its markers' URIs; files that no marker
lists are debris of a killed run and are removed when the next run starts. Names starting with ``_`` or
``.`` are skipped by pyarrow/DuckDB dataset readers, so markers never get in the way of a plain read.

The machinery is shared by every job that writes units: the functions that touch table files take the
job's ``schemas`` (table name -> Arrow schema; the segment job's :data:`diffseg.lake.schemas.SCHEMAS` by default),
and a unit's ``uris`` are its work-item keys (image URIs here, ``"class\tseed"`` keys for
``jobs.synthesize``; the markers keep the field name ``uris`` for both).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from diffseg.lake.manifest import utc_stamp
from diffseg.lake.schemas import SCHEMAS
from diffseg.lake.store import TMP_PREFIX, OutputStore

log = logging.getLogger("diffseg.lake.units")

COMMITS = "_commits"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
STAGING = "_staging"  # _staging/<run_id>/<unit_id>/<table>-<tag>.parquet: parts of units (diffseg.lake.commit)
_PART = re.compile(r"^part-(?P<run>[A-Za-z0-9][A-Za-z0-9._-]{0,63})-(?P<unit>[0-9a-f]{16})\.parquet$")


@dataclass(frozen=True)
class Unit:
    """A deterministic batch of work: sorted URIs (work-item keys) and the id derived from them."""

    unit_id: str
    uris: tuple[str, ...]


def check_run_id(run_id: str) -> str:
    """Returns `run_id` or raises ValueError: it becomes part of file names."""
    if not RUN_ID_PATTERN.match(run_id or ""):
        raise ValueError(
            f"run id {run_id!r} must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return run_id


def unit_id_of(uris: tuple[str, ...] | list[str]) -> str:
    """16 hex digits of sha256 over the newline-joined URIs (order matters: pass them sorted)."""
    return hashlib.sha256("\n".join(uris).encode()).hexdigest()[:16]


def make_units(uris: list[str], unit_size: int) -> list[Unit]:
    """Splits sorted unique `uris` into consecutive units of at most `unit_size` URIs."""
    if unit_size < 1:
        raise ValueError(f"unit size must be at least 1, got {unit_size}")
    ordered = sorted(set(uris))
    units = []
    for start in range(0, len(ordered), unit_size):
        chunk = tuple(ordered[start : start + unit_size])
        units.append(Unit(unit_id_of(chunk), chunk))
    return units


def units_of_sorted(uris, unit_size: int) -> list:
    """make_units of sorted unique URIs held in Arrow (a pyarrow StringArray), one
    unit-sized slice at a time: the same units, with Python strings only for the URIs to process."""
    if unit_size < 1:
        return make_units([], unit_size)  # its error names the bad size
    return [u for start in range(0, len(uris), unit_size)
            for u in make_units(uris.slice(start, unit_size).to_pylist(), unit_size)]


def unit_files(run_id: str, unit_id: str, schemas: Mapping[str, pa.Schema] = SCHEMAS) -> dict[str, str]:
    """Relative paths of a unit's Parquet files, one per table of `schemas`."""
    return {t: f"{t}/part-{run_id}-{unit_id}.parquet" for t in schemas}


def marker_path(run_id: str, unit_id: str) -> str:
    return f"{COMMITS}/{run_id}/{unit_id}.json"


def load_commits(store: OutputStore, run_id: str | None = None) -> list[dict]:
    """Every valid commit marker under OUTPUT (of one run, or of all runs when `run_id` is None).

    A marker that cannot be parsed (a local write cut short) counts as not committed.
    """
    rels = [r for r in store.list(COMMITS if run_id is None else f"{COMMITS}/{run_id}")
            if r.endswith(".json") and not r.rsplit("/", 1)[-1].startswith(".")]
    return _parse_markers(store, rels)


def load_markers(store: OutputStore, run_id: str, unit_ids: list[str]) -> list[dict]:
    """The valid commit markers of these units of a run (see :func:`load_commits`)."""
    return _parse_markers(store, [marker_path(run_id, u) for u in unit_ids])


def _parse_markers(store: OutputStore, rels: list[str]) -> list[dict]:
    markers = []
    for rel, data in store.get_many(rels).items():
        try:
            if isinstance(data, Exception):
                raise data
            marker = json.loads(data)
            if marker["unit_id"] + ".json" != rel.rsplit("/", 1)[-1] or not isinstance(marker["uris"], list):
                raise ValueError("marker does not describe the unit its name says")
            markers.append(marker)
        except Exception as exc:
            log.warning("ignoring unreadable commit marker %s (%s): its unit is not committed", rel, exc)
    markers.sort(key=lambda m: (m["run_id"], m["unit_id"]))
    return markers


def done_set(markers: list[dict]) -> set[str]:
    """URIs already covered (segmented or final error) by the given commit markers."""
    return {u for m in markers for u in m["uris"]}


def known_runs(store: OutputStore, markers: list[dict]) -> set[str]:
    """Run ids this OUTPUT knows: recorded under ``_runs/`` or named by a commit marker."""
    recorded = {r.rsplit("/", 1)[-1].removesuffix(".json") for r in store.list("_runs") if r.endswith(".json")}
    return recorded | {m["run_id"] for m in markers}


def listed_commits(store: OutputStore, schemas: Mapping[str, pa.Schema] = SCHEMAS) -> list[dict]:
    """Light markers ``{run_id, unit_id, files}`` of every commit marker under OUTPUT, from one listing
    (names only, nothing read: a unit's files follow from its run and id, :func:`unit_files`)."""
    light = []
    for rel in store.list(COMMITS):
        parts = rel.split("/")
        if len(parts) == 3 and parts[2].endswith(".json") and not parts[2].startswith("."):
            run_id, unit_id = parts[1], parts[2][:-5]
            light.append({"run_id": run_id, "unit_id": unit_id, "files": unit_files(run_id, unit_id, schemas)})
    return light


def find_debris(store: OutputStore, markers: list[dict], schemas: Mapping[str, pa.Schema] = SCHEMAS,
                runs: set[str] | None = None, busy: set[str] = frozenset()) -> list[str]:
    """Files a killed run left behind: part files no valid marker lists, staging parts, temporaries,
    broken markers.

    Only what this job's naming scheme and run ids could have produced counts (``part-<run>-<16 hex>``
    with a run id of `runs`, default :func:`known_runs`, in the table folders of `schemas`); any other
    file is left alone and logged as foreign (another job's tables are not searched at all). Files of
    the `busy` runs (another invocation holds their lease) are not touched."""
    runs = known_runs(store, markers) if runs is None else runs
    keep = {rel for m in markers for rel in m["files"].values()}
    keep |= {marker_path(m["run_id"], m["unit_id"]) for m in markers}
    debris, foreign = [], []
    for table in schemas:
        for rel in store.list(table):
            name = rel.rsplit("/", 1)[-1]
            part = _PART.match(name)
            if rel in keep or (part and part["run"] in busy):
                continue
            if name.startswith(TMP_PREFIX) or (part and part["run"] in runs and rel.count("/") == 1):
                debris.append(rel)
            else:
                foreign.append(rel)
    debris += [rel for rel in store.list(STAGING) + store.list(COMMITS)
               if rel not in keep and rel.split("/")[1] not in busy]
    if foreign:
        log.warning("leaving %d file(s) under the tables' folders that this job did not write (not part-<run>-<unit> "
                    "names of a run of this OUTPUT): %s%s. A plain read of the folder includes them", len(foreign),
                    ", ".join(foreign[:5]), " ..." if len(foreign) > 5 else "")
    return debris


def remove_debris(store: OutputStore, markers: list[dict], schemas: Mapping[str, pa.Schema] = SCHEMAS,
                  runs: set[str] | None = None, busy: set[str] = frozenset()) -> list[str]:
    """Removes (and returns) the debris of killed runs (see :func:`find_debris`)."""
    debris = find_debris(store, markers, schemas, runs, busy)
    if debris:
        log.info("removing %d file(s) a killed run left half-written: %s%s", len(debris),
                 ", ".join(debris[:5]), " ..." if len(debris) > 5 else "")
        store.remove(debris)
    return debris


def write_unit(store: OutputStore, run_id: str, unit: Unit, tables: dict[str, pa.Table],
               schemas: Mapping[str, pa.Schema] = SCHEMAS) -> dict:
    """Writes a unit's files (masks, stats and errors; or the tables of `schemas`), then its commit
    marker (last). Returns the marker. (The jobs' workers write the files themselves:
    diffseg.lake.commit; this serves tests and tools that hold a unit's tables in one process.)"""
    files = unit_files(run_id, unit.unit_id, schemas)
    rows = {}
    for table, schema in schemas.items():
        data = tables[table]
        if data.schema != schema:
            data = data.cast(schema)
        store.put_parquet(files[table], data)
        rows[table] = data.num_rows
    return write_marker(store, run_id, unit, files, rows)


def write_marker(store: OutputStore, run_id: str, unit: Unit, files: dict[str, str], rows: dict[str, int]) -> dict:
    """Writes (and returns) the commit marker of `unit` whose `files` exist: the unit's commit point."""
    marker = {
        "format": 1,
        "run_id": run_id,
        "unit_id": unit.unit_id,
        "files": files,
        "rows": rows,
        "committed_at": utc_stamp(),
        "uris": list(unit.uris),
    }
    store.put_json(marker_path(run_id, unit.unit_id), marker)
    return marker


def committed_files(output: str, table: str = "masks", run_id: str | None = None,
                    schemas: Mapping[str, pa.Schema] = SCHEMAS) -> list[str]:
    """URIs of the committed files of `table` ("masks", "stats" or "errors"), of one run or all runs.

    Reading exactly these files gives every committed row exactly once, even while a job is writing
    OUTPUT or after a job was killed (before the next run removes its debris). Another job's tables:
    pass its `schemas` (``diffseg.lake.schemas.SYNTH_SCHEMAS`` for ``samples``).
    """
    if table not in schemas:
        raise ValueError(f"table {table!r} is not one of {', '.join(schemas)}")
    store = OutputStore(output)
    return [store.uri(m["files"][table]) for m in load_commits(store, run_id) if table in m["files"]]


def read_committed(output: str, table: str = "masks", run_id: str | None = None,
                   columns: list[str] | None = None, schemas: Mapping[str, pa.Schema] = SCHEMAS) -> pa.Table:
    """The committed rows of `table` under OUTPUT as one pyarrow Table (see :func:`committed_files`).

    Example: ``read_committed("s3://lake/seg/", "stats", columns=["uri", "class_name", "fraction"])``.
    Use it when a job may be running; after a run finished a plain ``pyarrow.dataset``/DuckDB/pandas
    read of ``OUTPUT/masks/`` gives the same rows. Another job's tables: pass its `schemas`, e.g.
    ``read_committed(out, "samples", schemas=diffseg.lake.schemas.SYNTH_SCHEMAS)``.
    """
    store = OutputStore(output)
    markers = load_commits(store, run_id)
    schema = schemas[table] if table in schemas else None
    if schema is None:
        raise ValueError(f"table {table!r} is not one of {', '.join(schemas)}")
    parts = []
    for marker in (m for m in markers if table in m["files"]):
        with store.fs.open(store.path(marker["files"][table]), "rb") as f:
            parts.append(pq.read_table(f, columns=columns, schema=schema))
    if not parts:
        empty = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return empty.empty_table()
    return pa.concat_tables(parts)
