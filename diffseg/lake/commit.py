"""Workers write, the driver commits: the worker side of the commit protocol and the compaction of a unit.

A worker (the model actor, right after its model) splits its batch's result rows by unit and writes them
itself (:func:`write_results`); it returns only one small metadata row per (batch, unit)
(:data:`META_SCHEMA`: the unit, the positions of its items in the unit, whether the part is the unit's
final files, counts; the files' names follow from these: :func:`part_files`).

- When the batch holds a whole unit, the rows go straight to the unit's final files
  (``<table>/part-<run_id>-<unit_id>.parquet``, diffseg.lake.units.unit_files), in the unit's order.
  Whoever writes these names writes each item of the unit exactly once, so a retried task or a
  restarted actor that rewrites them never makes a row visible twice.
- Otherwise the rows go to staging files under ``_staging/<run_id>/<unit_id>/`` (a hidden folder that
  dataset readers skip), named by a hash of the positions they hold, so a retry with the same items
  rewrites the same names. When the driver has accepted positions covering the unit, one compaction
  (:func:`compact_unit`, a Ray task in the jobs) merges the accepted parts into the final files, keeping
  for each item the rows of the part the driver accepted first.

Every file carries the run in its Parquet key-value metadata (key :data:`METADATA_KEY`, JSON: the
vocabulary as a list whose position is the label id, 0 = ``"background"``; ``run_id``, ``model``,
``vocab_hash``), so a copied table keeps its class list; compaction keeps it.

The driver then writes the unit's commit marker (the only commit point) and removes its staging files
(diffseg.lake.writer.UnitCommitter). No Ray here: the jobs wrap these functions in tasks and actors.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diffseg.lake.schemas import TableSet
from diffseg.lake.store import OutputStore
from diffseg.lake.units import STAGING, unit_files

METADATA_KEY = b"diffseg"  # Parquet key-value metadata: {"vocabulary": [names by id], "run_id", "model", "vocab_hash"}

META_SCHEMA = pa.schema([
    ("unit_id", pa.string()),
    ("positions", pa.list_(pa.int32())),  # the batch's items of the unit, as positions in the unit (its uris)
    ("counts", pa.string()),  # JSON {"items", "errors", "errors_<stage>", row counters}
    ("final", pa.bool_()),  # the files are the unit's final files (the batch held the whole unit)
])


@dataclass(frozen=True)
class WriteTarget:
    """Where and as what a worker writes its rows: OUTPUT, the run and the run columns of the rows."""

    output: str  # OUTPUT (any fsspec URL)
    run_id: str
    model: str  # the rows' model column (redacted URI)
    run_hash: str  # the rows' vocab_hash column
    vocabulary: tuple[str, ...] = ()  # class names of ids 1..K (the files' metadata); () when unknown

    def file_metadata(self) -> dict[bytes, bytes]:
        """The Parquet key-value metadata of every file written for this target (see :data:`METADATA_KEY`)."""
        run = {"run_id": self.run_id, "model": self.model, "vocab_hash": self.run_hash}
        if self.vocabulary:
            run = {"vocabulary": ["background", *self.vocabulary], **run}
        return {METADATA_KEY: json.dumps(run, ensure_ascii=False).encode()}


@dataclass(frozen=True)
class Part:
    """Files of one (batch, unit) the driver accepted, and the positions it accepted from them."""

    files: dict[str, str]
    positions: tuple[int, ...]


@dataclass(frozen=True)
class Compaction:
    """A unit whose accepted parts must be merged into its final files (what :func:`compact_unit` does)."""

    output: str
    run_id: str
    unit_id: str
    keys: tuple[str, ...]  # the unit's work-item keys (its uris), in unit order
    parts: tuple[Part, ...]  # in the order the driver accepted them


def staging_files(run_id: str, unit_id: str, positions: np.ndarray, schemas) -> dict[str, str]:
    """Staging paths of a part holding `positions` (int32) of a unit: the same items give the same names."""
    tag = hashlib.sha256(np.ascontiguousarray(positions, dtype="<i4").tobytes()).hexdigest()[:16]
    return {t: f"{STAGING}/{run_id}/{unit_id}/{t}-{tag}.parquet" for t in schemas}


def part_files(run_id: str, unit_id: str, positions: np.ndarray, final: bool, schemas) -> dict[str, str]:
    """The files a worker writes for a part: the unit's final files, or its staging files."""
    return unit_files(run_id, unit_id, schemas) if final else staging_files(run_id, unit_id, positions, schemas)


def table_counts(tables: TableSet, split: dict[str, pa.Table], items: int) -> dict:
    """The counts of a unit's (or part's) tables: items, done, errors, errors per stage, row counters."""
    errors = split["errors"]
    counts = Counter({"items": items, "errors": errors.num_rows, "done": items - errors.num_rows})
    counts.update({f"errors_{s}": n for s, n in Counter(errors.column("stage").to_pylist()).items()})
    counts.update({counter: split[t].num_rows for t, counter in tables.row_counters.items()})
    return dict(counts)


def write_results(store: OutputStore, target: WriteTarget, tables: TableSet, results: pa.Table,
                  positions: np.ndarray, unit_rows: np.ndarray) -> pa.Table:
    """Writes a batch's result rows (``tables.result_schema``) to OUTPUT; returns :data:`META_SCHEMA` rows.

    `positions` (N,) int: each row's position in its unit; `unit_rows` (N,) int: its unit's size. Rows
    are written per unit, in position order; to the final files when the batch holds the whole unit.
    """
    positions = np.asarray(positions, dtype=np.int32)
    unit_ids = results.column("unit_id")
    meta = []
    for unit_id in pc.unique(unit_ids).to_pylist():
        rows = np.flatnonzero(pc.equal(unit_ids, unit_id).to_numpy(zero_copy_only=False))
        rows = rows[np.argsort(positions[rows], kind="stable")]
        pos = positions[rows]
        final = len(np.unique(pos)) == len(pos) == int(unit_rows[rows[0]])
        split = tables.split(results.take(rows), target.run_id, target.model, target.run_hash)
        files = part_files(target.run_id, unit_id, pos, final, tables.schemas)
        for table, data in split.items():
            store.put_parquet(files[table], data, target.file_metadata())
        meta.append({"unit_id": unit_id, "positions": pos.tolist(),
                     "counts": json.dumps(table_counts(tables, split, len(pos))), "final": final})
    return pa.Table.from_pylist(meta, schema=META_SCHEMA)


def row_keys(tables: TableSet, table: str, data: pa.Table) -> pa.Array:
    """The work-item key of every row of `data` (a table of `tables`): its ``uri``, or for tables keyed
    by class and seed (``jobs.synthesize``) ``"class\\tseed"``."""
    if tables.key_column in data.column_names:
        return data.column(tables.key_column).combine_chunks()
    seeds = pc.cast(data.column("seed"), pa.string())
    return pc.binary_join_element_wise(data.column("class_name"), seeds, "\t").combine_chunks()


def compact_unit(spec: Compaction, tables: TableSet) -> dict:
    """Merges a unit's accepted parts into its final files; returns the unit's counts.

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
            with store.fs.open(store.path(part.files[table]), "rb") as f:
                data = pq.read_table(f, schema=schema)
                if table not in metadata:
                    f.seek(0)
                    metadata[table] = file_metadata(f)
            pieces.append(data.filter(pc.is_in(row_keys(tables, table, data), value_set=keep)))
        data = pa.concat_tables(pieces) if pieces else schema.empty_table()
        order = pc.index_in(row_keys(tables, table, data), value_set=keys)
        merged[table] = data.take(pc.sort_indices(order)) if data.num_rows else data
    files = unit_files(spec.run_id, spec.unit_id, tables.schemas)
    for table, data in merged.items():
        store.put_parquet(files[table], data, metadata.get(table))
    return table_counts(tables, merged, len(spec.keys))


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
