"""The driver-side unit writer: buffers result rows per unit and commits each unit once it is complete.

Rows reach the driver in Ray Data's streaming order, which is not the input order, so the writer keeps
the rows of every unit still in flight (small: encoded PNGs and statistics, never images) keyed by URI.
When a unit's last URI arrives, its three Parquet files are written and then its commit marker
(diffseg.lake.units.write_unit). Keying by URI also makes a row delivered twice (a retried task) harmless.

The writer serves any job that writes units: its ``tables`` (a diffseg.lake.schemas.TableSet; the segment job's
by default) say which result column keys a row, how rows become tables and what to count. (Issue 15 moves
the writes to the workers; the driver will then only commit.)
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import pyarrow as pa

from diffseg.lake.schemas import SEGMENT_TABLES, TableSet
from diffseg.lake.store import OutputStore
from diffseg.lake.units import Unit, write_unit

log = logging.getLogger("diffseg.lake.writer")


class UnitWriter:
    """Consumes result batches (``tables.result_schema`` rows); commits units as they complete; counts
    what it wrote: ``items`` (work items committed), ``done`` (those without an error row), ``errors``,
    ``errors_<stage>`` and the tables' row counters (``tables.row_counters``)."""

    def __init__(self, store: OutputStore, run_id: str, units: list[Unit], model: str, vocab_hash: str,
                 progress_every_s: float = 10.0, tables: TableSet = SEGMENT_TABLES):
        self.store, self.run_id, self.model, self.vocab_hash = store, run_id, model, vocab_hash
        self.tables = tables
        self.units = {u.unit_id: u for u in units}
        self.pending: dict[str, dict[str, pa.Table]] = {}  # unit_id -> uri -> its one-row result table
        self.committed: list[str] = []
        self.committed_ids: set[str] = set()
        self.counts = Counter()  # items, done, errors, <table>_rows, errors_<stage>
        self.total_items = sum(len(u.uris) for u in units)
        self.started = time.monotonic()
        self.progress_every_s = progress_every_s
        self._last_progress = 0.0

    def add(self, batch: pa.Table) -> None:
        """Takes one batch of result rows; writes every unit it completes."""
        units = batch.column("unit_id").to_pylist()
        uris = batch.column(self.tables.key_column).to_pylist()
        touched = set()
        for i, (unit_id, uri) in enumerate(zip(units, uris)):
            if unit_id not in self.units or unit_id in self.committed_ids:
                continue  # a late duplicate of a committed unit's row
            rows = self.pending.setdefault(unit_id, {})
            if uri in self.units[unit_id].uris and uri not in rows:
                rows[uri] = batch.slice(i, 1)
                touched.add(unit_id)
        for unit_id in sorted(touched):
            if len(self.pending[unit_id]) == len(self.units[unit_id].uris):
                self._commit(unit_id)

    def _commit(self, unit_id: str) -> None:
        unit = self.units[unit_id]
        rows = self.pending.pop(unit_id)
        results = pa.concat_tables([rows[u] for u in unit.uris], promote_options="default")
        tables = self.tables.split(results, self.run_id, self.model, self.vocab_hash)
        write_unit(self.store, self.run_id, unit, tables, self.tables.schemas)
        self.committed.append(unit_id)
        self.committed_ids.add(unit_id)
        errors = tables["errors"]
        self.counts["items"] += len(unit.uris)
        self.counts["errors"] += errors.num_rows
        self.counts["done"] += len(unit.uris) - errors.num_rows
        for table, counter in self.tables.row_counters.items():
            self.counts[counter] += tables[table].num_rows
        for stage in errors.column("stage").to_pylist():
            self.counts[f"errors_{stage}"] += 1
        self._progress(force=len(self.committed) in (1, len(self.units)))

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < self.progress_every_s:
            return
        self._last_progress = now
        elapsed = max(now - self.started, 1e-9)
        log.info(
            "committed %d/%d units: %d/%d %s (%d errors), %.2f %s/s",
            len(self.committed), len(self.units), self.counts["items"], self.total_items, self.tables.item_name,
            self.counts["errors"], self.counts["items"] / elapsed, self.tables.item_name,
        )

    @property
    def incomplete(self) -> list[str]:
        """Units not committed (after the dataset is exhausted this should be empty)."""
        return [u for u in self.units if u not in self.committed_ids]

    def errors_by_stage(self) -> dict[str, int]:
        return {k.removeprefix("errors_"): v for k, v in self.counts.items() if k.startswith("errors_")}
