"""Work units, the committed-read helpers, and a one-process unit writer for tools and tests.

Layout under OUTPUT (one run = one ``run_id``; several runs may share an OUTPUT)::

    masks/part-<run_id>-<invocation>-<unit_id>-<attempt>.parquet     one file per unit and table
    stats/part-...                                                   (names never written twice)
    errors/part-...                                                  (written even when empty)
    _log/<run_id>/<version>.json                                     the run's commit log (diffseg.lake.log)
    _index/<run_id>/...                                              its done index (diffseg.lake.done_index)
    _runs/<run_id>.json                                              what the run is (model, vocabulary hash, methods)

A unit is a sorted run of a few hundred URIs; its id is a hash of those URIs, so the same remaining
images always form the same units. A unit exists for readers only once a commit entry of its run's log
names it with its files; files no entry names are debris (diffseg.lake.sweep). Names starting with
``_`` or ``.`` are skipped by pyarrow/DuckDB dataset readers, so the bookkeeping never gets in the way of a
plain read.

The machinery is shared by every job that writes units: the functions that touch table files take the
job's ``schemas`` (table name -> Arrow schema; the segment job's :data:`diffseg.lake.schemas.SCHEMAS` by
default), and a unit's ``uris`` are its work-item keys (image URIs here, ``"class\\tseed"`` keys for
``jobs.synthesize``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diffseg.lake.schemas import SCHEMAS
from diffseg.lake.store import OutputStore

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Unit:
    """A deterministic batch of work: sorted URIs (work-item keys) and the id derived from them; or, for a
    container read as a whole (a WebDataset shard, a Parquet row group), its `source` (a JSON description,
    diffseg.inputs.Source) whose keys the workers discover (`uris` then holds only keys to redo, or is
    empty for every member)."""

    unit_id: str
    uris: tuple[str, ...]
    source: str = ""  # JSON of a diffseg.inputs.Source when the unit is a container; "" for loose files

    @property
    def discovered(self) -> bool:
        """True when the workers tell the unit's keys (a whole container)."""
        return bool(self.source) and not self.uris


class UnitList(list):
    """Units held as diffseg.lake.units.Unit objects (jobs.synthesize, container units: 10^4-10^5 of them):
    a list that answers what a diffseg.lake.plan.StoredPlan answers."""

    @property
    def total_items(self) -> int:
        return sum(len(u.uris) for u in self)

    def facts(self) -> tuple[np.ndarray, np.ndarray]:
        """(unit ids as bytes, rows: 0 for a container whose keys the workers discover)."""
        return (np.array([u.unit_id.encode() for u in self], dtype="S16") if self else np.zeros(0, "S16"),
                np.array([len(u.uris) for u in self], dtype=np.int32))

    def held_keys(self) -> pa.Array:
        """Every key the units name (release_errors keeps those with an error row)."""
        return pa.array([k for u in self for k in u.uris], pa.string())

    def without(self, unit_ids: Iterable[str]) -> UnitList:
        gone = set(unit_ids)
        return UnitList(u for u in self if u.unit_id not in gone)


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


def committed_state(output: str, run_id: str | None = None) -> dict:
    """{run_id: diffseg.lake.done_index.DoneSet} of one run, or of every run with a log under OUTPUT."""
    from diffseg.lake.done_index import load_state
    from diffseg.lake.log import logged_runs

    store = OutputStore(output)
    runs = [run_id] if run_id is not None else logged_runs(store)
    return {r: load_state(store, r) for r in runs}


def committed_files(output: str, table: str = "masks", run_id: str | None = None,
                    schemas: Mapping[str, pa.Schema] = SCHEMAS) -> list[str]:
    """URIs of the committed files of `table` ("masks", "stats" or "errors"), of one run or all runs.

    Reading exactly these files gives every committed row exactly once, even while a job is writing
    OUTPUT or after a job was killed (before the next run removes its debris). A commit record that cannot
    be read raises diffseg.lake.log.CommitRecordError (never fewer rows). Another job's tables: pass its
    `schemas` (``diffseg.lake.schemas.SYNTH_SCHEMAS`` for ``samples``).
    """
    if table not in schemas:
        raise ValueError(f"table {table!r} is not one of {', '.join(schemas)}")
    store = OutputStore(output)
    return [store.uri(rel) for done in committed_state(output, run_id).values() for rel in done.files(table)]


def read_committed(output: str, table: str = "masks", run_id: str | None = None,
                   columns: list[str] | None = None, schemas: Mapping[str, pa.Schema] = SCHEMAS) -> pa.Table:
    """The committed rows of `table` under OUTPUT as one pyarrow Table (see :func:`committed_files`).

    Example: ``read_committed("s3://lake/seg/", "stats", columns=["uri", "class_name", "fraction"])``.
    Use it when a job may be running; after a run finished a plain ``pyarrow.dataset``/DuckDB/pandas
    read of ``OUTPUT/masks/`` gives the same rows. Another job's tables: pass its `schemas`, e.g.
    ``read_committed(out, "samples", schemas=diffseg.lake.schemas.SYNTH_SCHEMAS)``.
    """
    if table not in schemas:
        raise ValueError(f"table {table!r} is not one of {', '.join(schemas)}")
    schema = schemas[table]
    store = OutputStore(output)
    parts = []
    for rel in (r for done in committed_state(output, run_id).values() for r in done.files(table)):
        parts.append(read_file(store, rel, schema, columns))
    if not parts:
        empty = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return empty.empty_table()
    return pa.concat_tables(parts)


def read_file(store: OutputStore, rel: str, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """One committed Parquet file of a table, with `schema` (columns a file written before them lacks read as
    null); a committed file that is gone raises diffseg.lake.log.CommitRecordError naming it."""
    from diffseg.lake.log import CommitRecordError

    try:
        with store.fs.open(store.path(rel), "rb") as f:
            return pq.read_table(f, columns=columns, schema=schema)
    except FileNotFoundError as exc:
        raise CommitRecordError(f"the committed file {store.uri(rel)} is missing: it was deleted by hand or by a "
                                f"tool that does not know the run's log; the run's rows are incomplete") from exc


def write_unit(store: OutputStore, run_id: str, unit: Unit, tables: dict[str, pa.Table],
               schemas: Mapping[str, pa.Schema] = SCHEMAS, commit_log=None) -> dict:
    """Writes a unit's files (masks, stats and errors; or the tables of `schemas`) and commits them in one
    log entry; returns the unit as committed. For tests and tools that hold a unit's tables in one process
    (the jobs' workers write their own files: diffseg.lake.commit). `commit_log`: an open
    diffseg.lake.log.CommitLog (a new invocation begins one when None)."""
    from diffseg.lake.commit import final_files, new_attempt, write_tables
    from diffseg.lake.log import CommitLog, new_invocation_id

    if commit_log is None:
        commit_log = CommitLog(store, run_id, new_invocation_id())
        commit_log.begin()
    data = {t: (tables[t] if tables[t].schema == schema else tables[t].cast(schema)) for t, schema in schemas.items()}
    paths = final_files(run_id, commit_log.invocation, unit.unit_id, new_attempt(), schemas)
    files = write_tables(store, paths, data, None)
    position = {key: i for i, key in enumerate(unit.uris)}
    errors = data["errors"]
    keys = (errors.column("uri") if "uri" in errors.column_names else
            [f"{c}\t{s}" for c, s in zip(errors.column("class_name").to_pylist(), errors.column("seed").to_pylist())])
    keys = [str(k) for k in (keys.to_pylist() if hasattr(keys, "to_pylist") else keys)]
    retryable = (errors.column("retryable").fill_null(False).to_pylist() if "retryable" in errors.column_names
                 else [False] * len(keys))
    committed = {"unit_id": unit.unit_id, "keys": list(unit.uris), "files": files,
                 "errors": sorted(position[k] for k, r in zip(keys, retryable) if not r),
                 "retry": sorted(position[k] for k, r in zip(keys, retryable) if r),
                 "rows": {t: f["rows"] for t, f in files.items()}}
    commit_log.append("commit", {"units": [committed]})
    return committed
