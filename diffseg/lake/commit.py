"""Workers write, the driver commits: the worker side of the commit protocol and the compaction of a unit.

A worker (the model actor, right after its model) splits its batch's result rows by unit and writes them
itself (:func:`write_results`) under names no other attempt can have: ``<table>/part-<run_id>-<invocation>-
<unit_id>-<attempt>.parquet`` (``attempt``: 8 random hex digits per write). It returns only one small
metadata row per (batch, unit) (:data:`META_SCHEMA`): the unit, the positions of its items in the unit, which
of them are error rows (final or retryable), counts, and each file it wrote with its size and md5 (what the
commit records; on S3 the md5 is the object's ETag).

- When the batch holds a whole unit, the rows go straight to the table folders, in the unit's order.
- Otherwise they go to staging files under ``_staging/<run_id>/<invocation>/<unit_id>/`` (a hidden folder
  that dataset readers skip). When the driver has accepted parts covering the unit, one compaction
  (:func:`compact_unit`, a Ray task in the jobs) merges the accepted parts into new attempt-unique files,
  keeping for each item the rows of the part the driver accepted first.

Nothing a worker writes is visible to the run until the driver names it in a commit entry of the run's log
(diffseg.lake.log), and no name is ever written twice, so a late or repeated attempt (a zombie worker of
an earlier invocation, a task Ray re-runs, a compaction racing a whole-unit attempt) can never change a
committed file: at worst it leaves an uncommitted file that the sweep removes (diffseg.lake.sweep).

Every file carries the run in its Parquet key-value metadata (key :data:`METADATA_KEY`, JSON: the
vocabulary as a list whose position is the label id, 0 = ``"background"``; ``run_id``, ``model``,
``vocab_hash``), so a copied table keeps its class list; compaction keeps it. No Ray here: the jobs wrap
these functions in tasks and actors.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diffseg.lake.schemas import WRITE_NAMES, TableSet
from diffseg.lake.store import OutputStore

METADATA_KEY = b"diffseg"  # Parquet key-value metadata: {"vocabulary": [names by id], "run_id", "model", "vocab_hash"}
STAGING = "_staging"  # _staging/<run_id>/<invocation>/<unit_id>/<table>-<attempt>.parquet: parts of units

# <table>/part-<run_id>-<invocation>-<unit_id>-<attempt>.parquet (run ids may hold '-': parsed from the right)
PART_NAME = re.compile(r"^part-(?P<run>[A-Za-z0-9][A-Za-z0-9._-]{0,63})-(?P<inv>[0-9a-f]{12})-(?P<unit>[0-9a-f]{16})"
                       r"-(?P<attempt>[0-9a-f]{8})\.parquet$")

META_SCHEMA = pa.schema([
    ("unit_id", pa.string()),
    ("positions", pa.list_(pa.int32())),  # the batch's items of the unit, as positions in the unit (its keys)
    ("errors", pa.list_(pa.int32())),  # positions of final error rows
    ("retry", pa.list_(pa.int32())),  # positions of retryable error rows
    ("counts", pa.string()),  # JSON {"items", "errors", "errors_<stage>", row counters}
    ("files", pa.string()),  # JSON {table: {"path", "bytes", "md5", "rows"}}
    ("final", pa.bool_()),  # the files are in the table folders (the batch held the whole unit)
    ("unit_rows", pa.int32()),  # the unit's size
    ("keys", pa.list_(pa.string())),  # the keys of `positions`: the driver learns a unit's keys from them
])


@dataclass(frozen=True)
class WriteTarget:
    """Where and as what a worker writes its rows: OUTPUT, the run, the invocation and the rows' run columns."""

    output: str  # OUTPUT (any fsspec URL)
    run_id: str
    model: str  # the rows' model column (redacted URI)
    run_hash: str  # the rows' vocab_hash column
    vocabulary: tuple[str, ...] = ()  # class names of ids 1..K (the files' metadata); () when unknown
    invocation: str = "000000000000"  # the invocation writing (12 hex digits; diffseg.lake.log.new_invocation_id)

    def file_metadata(self) -> dict[bytes, bytes]:
        """The Parquet key-value metadata of every file written for this target (see :data:`METADATA_KEY`)."""
        run = {"run_id": self.run_id, "model": self.model, "vocab_hash": self.run_hash}
        if self.vocabulary:
            run = {"vocabulary": ["background", *self.vocabulary], **run}
        return {METADATA_KEY: json.dumps(run, ensure_ascii=False).encode()}


@dataclass(frozen=True)
class Part:
    """Files of one (batch, unit) the driver accepted, and the positions it accepted from them."""

    files: dict[str, dict]  # table -> {"path", "bytes", "md5", "rows"}
    positions: tuple[int, ...]


@dataclass(frozen=True)
class Compaction:
    """A unit whose accepted parts must be merged into its final files (what :func:`compact_unit` does)."""

    output: str
    run_id: str
    invocation: str
    unit_id: str
    keys: tuple[str, ...]  # the unit's work-item keys (its uris), in unit order
    parts: tuple[Part, ...]  # in the order the driver accepted them


def new_attempt() -> str:
    return uuid.uuid4().hex[:8]


def final_files(run_id: str, invocation: str, unit_id: str, attempt: str, schemas) -> dict[str, str]:
    """The table-folder paths of one attempt at a unit: a name no other attempt can have."""
    return {t: f"{t}/part-{run_id}-{invocation}-{unit_id}-{attempt}.parquet" for t in schemas}


def staging_files(run_id: str, invocation: str, unit_id: str, attempt: str, schemas) -> dict[str, str]:
    """The staging paths of one attempt at a part of a unit."""
    return {t: f"{STAGING}/{run_id}/{invocation}/{unit_id}/{t}-{attempt}.parquet" for t in schemas}


def stamp_rows(data: pa.Table, invocation: str, written_at: float) -> pa.Table:
    """`data` with its write columns (diffseg.lake.schemas.WRITE_COLUMNS) filled: `invocation`, `written_at`."""
    n = data.num_rows
    values = {"invocation": pa.array([invocation] * n, pa.string()),
              "written_at": pa.array([int(written_at * 1000)] * n, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))}
    for name in WRITE_NAMES:
        if name in data.column_names:
            i = data.schema.get_field_index(name)
            data = data.set_column(i, data.schema.field(i), values[name].cast(data.schema.field(i).type))
    return data


def table_counts(tables: TableSet, split: dict[str, pa.Table], items: int) -> dict:
    """The counts of a unit's (or part's) tables: items, done, errors, errors per stage, row counters."""
    errors = split["errors"]
    counts = Counter({"items": items, "errors": errors.num_rows, "done": items - errors.num_rows})
    counts.update({f"errors_{s}": n for s, n in Counter(errors.column("stage").to_pylist()).items()})
    if "retryable" in errors.column_names:
        counts["errors_retryable"] = int(pc.sum(pc.cast(errors.column("retryable").fill_null(False), pa.int64())).as_py() or 0)
    counts.update({counter: split[t].num_rows for t, counter in tables.row_counters.items()})
    return dict(counts)


def error_positions(results: pa.Table, positions: np.ndarray) -> tuple[list[int], list[int]]:
    """(final, retryable) positions of the error rows among `results` (result rows, `positions` aligned)."""
    failed = results.column("stage").is_valid().to_numpy(zero_copy_only=False)
    retry = results.column("retryable").fill_null(False).to_numpy(zero_copy_only=False) & failed
    return positions[failed & ~retry].tolist(), positions[retry].tolist()


def write_tables(store: OutputStore, paths: dict[str, str], split: dict[str, pa.Table],
                 metadata: dict[bytes, bytes] | None) -> dict[str, dict]:
    """Writes each table of `split` to its path; returns the files as a commit records them."""
    return {t: {**store.put_parquet(paths[t], data, metadata), "rows": data.num_rows} for t, data in split.items()}


def write_results(store: OutputStore, target: WriteTarget, tables: TableSet, results: pa.Table,
                  positions: np.ndarray, unit_rows: np.ndarray, send_keys: bool = True) -> pa.Table:
    """Writes a batch's result rows (``tables.result_schema``) to OUTPUT; returns :data:`META_SCHEMA` rows.

    `positions` (N,) int: each row's position in its unit; `unit_rows` (N,) int: its unit's size. Rows
    are written per unit, in position order; to the table folders when the batch holds the whole unit.
    The metadata carries the rows' keys (``keys``): the driver keeps no keys of the plan and learns a unit's
    keys from them (diffseg.lake.writer). `send_keys` is ignored (every unit sends its keys; callers written
    when only container units did still pass it).
    """
    positions = np.asarray(positions, dtype=np.int32)
    unit_ids = results.column("unit_id")
    written_at = time.time()
    meta = []
    for unit_id in pc.unique(unit_ids).to_pylist():
        rows = np.flatnonzero(pc.equal(unit_ids, unit_id).to_numpy(zero_copy_only=False))
        rows = rows[np.argsort(positions[rows], kind="stable")]
        pos = positions[rows]
        final = len(np.unique(pos)) == len(pos) == int(unit_rows[rows[0]])
        unit_results = results.take(rows)
        split = {t: stamp_rows(data, target.invocation, written_at)
                 for t, data in tables.split(unit_results, target.run_id, target.model, target.run_hash).items()}
        naming = final_files if final else staging_files
        paths = naming(target.run_id, target.invocation, unit_id, new_attempt(), tables.schemas)
        files = write_tables(store, paths, split, target.file_metadata())
        errors, retry = error_positions(unit_results, pos)
        meta.append({"unit_id": unit_id, "positions": pos.tolist(), "errors": errors, "retry": retry,
                     "counts": json.dumps(table_counts(tables, split, len(pos))), "files": json.dumps(files),
                     "final": final, "unit_rows": int(unit_rows[rows[0]]),
                     "keys": unit_results.column(tables.key_column).to_pylist()})
    return pa.Table.from_pylist(meta, schema=META_SCHEMA)


def row_keys(tables: TableSet, table: str, data: pa.Table) -> pa.Array:
    """The work-item key of every row of `data` (a table of `tables`): its ``uri``, or for tables keyed
    by class and seed (``jobs.synthesize``) ``"class\\tseed"``."""
    if tables.key_column in data.column_names:
        return data.column(tables.key_column).combine_chunks()
    seeds = pc.cast(data.column("seed"), pa.string())
    return pc.binary_join_element_wise(data.column("class_name"), seeds, "\t").combine_chunks()


def compact_unit(spec: Compaction, tables: TableSet) -> dict:
    """Merges a unit's accepted parts into new attempt-unique files in the table folders; returns
    ``{"counts", "files", "errors", "retry"}`` as a commit records them.

    Of each part only the rows of the items accepted from it are kept, so an item that a retried batch
    wrote into two parts appears once; rows are ordered as the unit's keys (as a one-batch unit's are).
    """
    store = OutputStore(spec.output)
    keys = pa.array(spec.keys, pa.string())
    accepted = [pc.take(keys, pa.array(part.positions, pa.int32())) for part in spec.parts]  # keys per part
    merged, metadata = {}, {}  # metadata: each table's from its first part (one footer read per table)
    for table, schema in tables.schemas.items():
        pieces = []
        for part, keep in zip(spec.parts, accepted):
            with store.fs.open(store.path(part.files[table]["path"]), "rb") as f:
                data = pq.read_table(f, schema=schema)
                if table not in metadata:
                    f.seek(0)
                    metadata[table] = file_metadata(f)
            pieces.append(data.filter(pc.is_in(row_keys(tables, table, data), value_set=keep)))
        data = pa.concat_tables(pieces) if pieces else schema.empty_table()
        order = pc.index_in(row_keys(tables, table, data), value_set=keys)
        merged[table] = data.take(pc.sort_indices(order)) if data.num_rows else data
    paths = final_files(spec.run_id, spec.invocation, spec.unit_id, new_attempt(), tables.schemas)
    files = {t: {**store.put_parquet(paths[t], data, metadata.get(t)), "rows": data.num_rows} for t, data in merged.items()}
    errors = merged["errors"]
    where = pc.index_in(row_keys(tables, "errors", errors), value_set=keys).to_numpy(zero_copy_only=False)
    retry = errors.column("retryable").fill_null(False).to_numpy(zero_copy_only=False) if errors.num_rows else np.zeros(0, bool)
    return {"counts": table_counts(tables, merged, len(spec.keys)), "files": files,
            "errors": sorted(int(p) for p in where[~retry]), "retry": sorted(int(p) for p in where[retry])}


def file_metadata(source) -> dict[bytes, bytes]:
    """The :data:`METADATA_KEY` entry of a Parquet file's key-value metadata (`source`: a path or an open
    binary file); {} when the file has none (files written before it existed)."""
    value = (pq.read_schema(source).metadata or {}).get(METADATA_KEY)
    return {METADATA_KEY: value} if value is not None else {}


def read_run_metadata(source) -> dict:
    """The run a Parquet file of these tables was written by: {"vocabulary": [...], "run_id", "model",
    "vocab_hash"} (decoded :data:`METADATA_KEY` JSON; {} for files without it). `source`: path or file."""
    value = file_metadata(source).get(METADATA_KEY)
    return json.loads(value) if value else {}
