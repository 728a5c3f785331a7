"""Work units, commit markers, the done set, debris removal and the committed-read helper.

Layout under OUTPUT (one run = one ``run_id``; several runs may share an OUTPUT)::

    masks/part-<run_id>-<unit_id>.parquet     one file per unit and table
    stats/part-<run_id>-<unit_id>.parquet
    errors/part-<run_id>-<unit_id>.parquet    (written even when empty, so every table is readable)
    _commits/<run_id>/<unit_id>.json          the unit's commit marker, written LAST
    _runs/<run_id>.json                       what the run is (model, vocabulary hash, methods)
    manifest.json                             the latest invocation (see jobs.manifest)

A unit is a sorted run of a few hundred URIs; its id is a hash of those URIs, so the same remaining
images always form the same units. A unit exists for readers only once its marker exists; the marker
lists its URIs and files. The done set of a run is the union of its markers' URIs; files that no marker
lists are debris of a killed run and are removed when the next run starts. Names starting with ``_`` or
``.`` are skipped by pyarrow/DuckDB dataset readers, so markers never get in the way of a plain read.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.store import TMP_PREFIX, OutputStore
from jobs.tables import SCHEMAS, TABLES

log = logging.getLogger("jobs.units")

COMMITS = "_commits"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PART = re.compile(r"^part-.*\.parquet$")


@dataclass(frozen=True)
class Unit:
    """A deterministic batch of work: sorted URIs and the id derived from them."""

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


def unit_files(run_id: str, unit_id: str) -> dict[str, str]:
    """Relative paths of a unit's three Parquet files."""
    return {t: f"{t}/part-{run_id}-{unit_id}.parquet" for t in TABLES}


def marker_path(run_id: str, unit_id: str) -> str:
    return f"{COMMITS}/{run_id}/{unit_id}.json"


def load_commits(store: OutputStore, run_id: str | None = None) -> list[dict]:
    """Every valid commit marker under OUTPUT (of one run, or of all runs when `run_id` is None).

    A marker that cannot be parsed (a local write cut short) counts as not committed.
    """
    rels = [r for r in store.list(COMMITS if run_id is None else f"{COMMITS}/{run_id}")
            if r.endswith(".json") and not r.rsplit("/", 1)[-1].startswith(".")]
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


def find_debris(store: OutputStore, markers: list[dict]) -> list[str]:
    """Files a killed run left behind: part files no valid marker lists, temporaries, broken markers."""
    keep = {rel for m in markers for rel in m["files"].values()}
    keep |= {marker_path(m["run_id"], m["unit_id"]) for m in markers}
    debris = []
    for table in TABLES:
        for rel in store.list(table):
            name = rel.rsplit("/", 1)[-1]
            if rel not in keep and (_PART.match(name) or name.startswith(TMP_PREFIX)):
                debris.append(rel)
    for rel in store.list(COMMITS):
        if rel not in keep:
            debris.append(rel)
    return debris


def remove_debris(store: OutputStore, markers: list[dict]) -> list[str]:
    """Removes (and returns) the debris of killed runs. Run it only when no other job writes OUTPUT."""
    debris = find_debris(store, markers)
    if debris:
        log.info("removing %d file(s) a killed run left half-written: %s%s", len(debris),
                 ", ".join(debris[:5]), " ..." if len(debris) > 5 else "")
        store.remove(debris)
    return debris


def write_unit(store: OutputStore, run_id: str, unit: Unit, tables: dict[str, pa.Table]) -> dict:
    """Writes a unit's masks, stats and errors files, then its commit marker (last). Returns the marker."""
    files = unit_files(run_id, unit.unit_id)
    rows = {}
    for table in TABLES:
        data = tables[table]
        if data.schema != SCHEMAS[table]:
            data = data.cast(SCHEMAS[table])
        buf = io.BytesIO()
        pq.write_table(data, buf, compression="zstd")
        store.put(files[table], buf.getvalue())
        rows[table] = data.num_rows
    marker = {
        "format": 1,
        "run_id": run_id,
        "unit_id": unit.unit_id,
        "files": files,
        "rows": rows,
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "uris": list(unit.uris),
    }
    store.put_json(marker_path(run_id, unit.unit_id), marker)
    return marker


def committed_files(output: str, table: str = "masks", run_id: str | None = None) -> list[str]:
    """URIs of the committed files of `table` ("masks", "stats" or "errors"), of one run or all runs.

    Reading exactly these files gives every committed row exactly once, even while a job is writing
    OUTPUT or after a job was killed (before the next run removes its debris).
    """
    if table not in TABLES:
        raise ValueError(f"table {table!r} is not one of {', '.join(TABLES)}")
    store = OutputStore(output)
    return [store.uri(m["files"][table]) for m in load_commits(store, run_id)]


def read_committed(output: str, table: str = "masks", run_id: str | None = None,
                   columns: list[str] | None = None) -> pa.Table:
    """The committed rows of `table` under OUTPUT as one pyarrow Table (see :func:`committed_files`).

    Example: ``read_committed("s3://lake/seg/", "stats", columns=["uri", "class_name", "fraction"])``.
    Use it when a job may be running; after a run finished a plain ``pyarrow.dataset``/DuckDB/pandas
    read of ``OUTPUT/masks/`` gives the same rows.
    """
    store = OutputStore(output)
    markers = load_commits(store, run_id)
    schema = SCHEMAS[table] if table in SCHEMAS else None
    if schema is None:
        raise ValueError(f"table {table!r} is not one of {', '.join(TABLES)}")
    parts = []
    for marker in markers:
        with store.fs.open(store.path(marker["files"][table]), "rb") as f:
            parts.append(pq.read_table(f, columns=columns, schema=schema))
    if not parts:
        empty = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return empty.empty_table()
    return pa.concat_tables(parts)
