"""The driver's side of "workers write, the driver commits": :class:`UnitCommitter`.

The workers write every row themselves (diffseg.lake.commit.write_results) and send the driver one small
metadata row per (batch, unit): the positions of the unit's items the batch holds, the files written,
counts. The committer keeps, per unit in flight, which positions are covered (one boolean array) and
which parts it accepted, first come first served: a part that repeats positions already accepted (a
retried batch) only contributes its new ones. When a unit is covered:

- by one part holding the whole unit (the common case: input blocks are cut along units), its files are
  already the unit's final files: the committer writes the marker at once;
- by several parts, it returns a :class:`diffseg.lake.commit.Compaction` that the job runs in the cluster
  (diffseg.lake.commit.compact_unit); :meth:`UnitCommitter.compacted` then writes the marker.

After a marker is written the unit's staging files are deleted (late parts of committed units too, at
:meth:`UnitCommitter.finish`). The driver's work is per unit and per batch, never per row of a table.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from diffseg.lake.commit import Compaction, Part, part_files
from diffseg.lake.schemas import SEGMENT_TABLES, TableSet
from diffseg.lake.store import OutputStore
from diffseg.lake.units import Unit, unit_files, write_marker

log = logging.getLogger("diffseg.lake.writer")


class UnitCommitter:
    """Consumes worker metadata (diffseg.lake.commit.META_SCHEMA batches) and commits complete units;
    counts what it committed: ``items``, ``done`` (items without an error row), ``errors``,
    ``errors_<stage>`` and the tables' row counters (``tables.row_counters``).

    `before_commit`: called before each marker is written (the job checks it still holds the run's lease).
    """

    def __init__(self, store: OutputStore, run_id: str, units: list[Unit], tables: TableSet = SEGMENT_TABLES,
                 progress_every_s: float = 10.0, before_commit: Callable[[], None] | None = None):
        self.store, self.run_id, self.tables = store, run_id, tables
        self.units = {u.unit_id: u for u in units}
        self.covered: dict[str, np.ndarray] = {}  # unit_id -> bool per position, for units in flight
        self.parts: dict[str, list[Part]] = {}
        self.committed_markers: dict[str, dict] = {}  # unit_id -> the marker written, in commit order
        self.compacting: set[str] = set()  # units whose Compaction was handed out
        self.stale: list[str] = []  # staging files no commit needs (repeats, parts of units committed whole)
        self.counts = Counter()
        self.bytes_received = 0
        self.total_items = sum(len(u.uris) for u in units)
        self.started = time.monotonic()
        self.progress_every_s = progress_every_s
        self.before_commit = before_commit
        self._last_progress = 0.0

    def add(self, meta: pa.Table) -> list[Compaction]:
        """Takes one batch of metadata rows; commits the units they complete with one final part and
        returns the compactions of units completed by several parts."""
        self.bytes_received += meta.nbytes
        todo = []
        columns = (meta.column(c).to_pylist() for c in ("unit_id", "positions", "counts", "final"))
        for unit_id, positions, counts, final in zip(*columns):
            files = part_files(self.run_id, unit_id, np.asarray(positions, np.int32), final, self.tables.schemas)
            unit = self.units.get(unit_id)
            if unit is None or unit_id in self.committed_markers or unit_id in self.compacting:
                self._discard(files, final)
                continue
            if final:
                self.stale += [f for p in self.parts.pop(unit_id, []) for f in p.files.values()]
                self.covered.pop(unit_id, None)
                self._commit(unit, files, json.loads(counts))
                continue
            covered = self.covered.setdefault(unit_id, np.zeros(len(unit.uris), dtype=bool))
            pos = np.unique(np.asarray(positions, dtype=np.int64))
            new = pos[~covered[pos]]
            if not len(new):
                self._discard(files, final)
                continue
            covered[new] = True
            self.parts.setdefault(unit_id, []).append(Part(files, tuple(int(p) for p in new)))
            if covered.all():
                del self.covered[unit_id]
                self.compacting.add(unit_id)
                todo.append(Compaction(self.store.output, self.run_id, unit_id, unit.uris, tuple(self.parts[unit_id])))
        return todo

    def compacted(self, spec: Compaction, counts: dict) -> None:
        """Commits a unit whose parts :func:`diffseg.lake.commit.compact_unit` merged (`counts`: its result)."""
        parts = self.parts.pop(spec.unit_id, [])
        self.compacting.discard(spec.unit_id)
        self._commit(self.units[spec.unit_id], unit_files(self.run_id, spec.unit_id, self.tables.schemas), counts)
        self.store.remove([f for p in parts for f in p.files.values()])

    def finish(self) -> list[str]:
        """Removes staging files no commit needs (late repeats of committed units); returns them."""
        stale, self.stale = self.stale, []
        self.store.remove(stale)
        return stale

    def _discard(self, files: dict, final: bool) -> None:
        if not final:
            self.stale += list(files.values())  # staging files (final files are the unit's own)

    def _commit(self, unit: Unit, files: dict[str, str], counts: dict) -> None:
        if self.before_commit is not None:
            self.before_commit()
        rows = {t: int(counts.get(c, 0)) for t, c in self.tables.row_counters.items()} | {"errors": int(counts["errors"])}
        self.committed_markers[unit.unit_id] = write_marker(self.store, self.run_id, unit, files, rows)
        self.counts.update({k: int(v) for k, v in counts.items()})
        self._progress(force=len(self.committed_markers) in (1, len(self.units)))

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < self.progress_every_s:
            return
        self._last_progress = now
        elapsed = max(now - self.started, 1e-9)
        log.debug(  # the runner's jobs.common.progress lines are what users read
            "committed %d/%d units: %d/%d %s (%d errors), %.2f %s/s",
            len(self.committed_markers), len(self.units), self.counts["items"], self.total_items, self.tables.item_name,
            self.counts["errors"], self.counts["items"] / elapsed, self.tables.item_name,
        )

    @property
    def committed(self) -> list[str]:
        """The units committed, in commit order."""
        return list(self.committed_markers)

    @property
    def markers(self) -> list[dict]:
        """The markers written, in commit order (what the done index merges at the end)."""
        return list(self.committed_markers.values())

    @property
    def incomplete(self) -> list[str]:
        """Units not committed (after the dataset is exhausted this should be empty)."""
        return [u for u in self.units if u not in self.committed_markers]

    def errors_by_stage(self) -> dict[str, int]:
        return {k.removeprefix("errors_"): v for k, v in self.counts.items() if k.startswith("errors_")}
