"""One invocation of a job as the runner carries it (jobs.common.runner): what it checked, planned and
committed, and how its counts, timings and manifest are built from that."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from diffseg.lake.manifest import RunInfo, build_manifest, write_manifest
from jobs.common.config import Resources

if TYPE_CHECKING:  # the runner imports this module
    from jobs.common.runner import Checked, Job, Planned


@dataclass
class Invocation:
    """One run of a job: what the manifest and the summary are built from."""

    job: Job
    config: object
    checked: Checked
    planned: Planned
    done_set: object  # diffseg.lake.done_index.DoneSet: the run's committed items before this invocation
    started_at: str
    t0: float
    t_planned: float
    t_ray: float = 0.0
    t_run: float = 0.0
    resources: Resources | None = None
    writer: object = None  # diffseg.lake.writer.UnitCommitter once the pipeline runs
    before_commit: object = None  # called before every log entry (lease check, identity record)
    commit_log: object = None  # diffseg.lake.log.CommitLog of this invocation (begun)
    stop: object = None  # jobs.common.interrupt.StopSignals
    actors_may_write: bool = False  # an interrupted pipeline on a cluster: its actors may still write
    pipeline_restarts: int = 0  # pipelines started again after losing a worker (jobs.common.restarts)
    nodes_at_start: int = 0  # alive nodes when the pipeline was sized

    @property
    def done(self) -> int:
        """Items the run had before this invocation."""
        return len(self.done_set)

    def counts(self) -> dict:
        words, w = self.job.words, self.writer
        counts = dict(self.planned.counts)
        if w is not None:
            counts.update({"processed": w.counts["items"], words.done: w.counts["done"], "errors": w.counts["errors"],
                           "errors_by_stage": w.errors_by_stage(),
                           **{key: w.counts[key] for key in self.job.tables.row_counters.values()},
                           "units_committed": len(w.committed_units), "units_incomplete": len(w.incomplete),
                           "errors_retryable": w.counts["errors_retryable"], "commit_entries": w.entries,
                           "pipeline_restarts": self.pipeline_restarts,
                           "driver_bytes_received": w.bytes_received})
        counts[words.run_done] = self.done + (w.counts["items"] if w else 0)
        return counts

    def timings(self) -> dict:
        now = time.monotonic()
        if not self.t_ray:
            return {"total_s": round(now - self.t0, 3)}
        items = self.writer.counts["items"] if self.writer else 0
        process = now - self.t_run
        return {self.job.words.planning: round(self.t_planned - self.t0, 3), "ray_start_s": round(self.t_run - self.t_ray, 3),
                "process_s": round(process, 3), "total_s": round(now - self.t0, 3),
                f"{self.job.words.items}_per_s": round(items / process, 3) if process > 0 else 0.0}

    def write_manifest(self, status: str, error: str | None = None) -> dict:
        """Writes the manifest (after a fenced log entry: a ``finish`` entry unless the run is only starting,
        so an invocation that lost the run writes none)."""
        c, config = self.checked, self.config
        committed = len(self.done_set.units) + (len(self.writer.committed_units) if self.writer else 0)
        res = None if self.resources is None else {k: getattr(self.resources, k) for k in self.resources.__dataclass_fields__
                                                   if k != "counter"}
        timings = {} if status == "running" else self.timings()
        counts = self.counts()
        if status != "running":
            from diffseg.lake.log import LogFencedError

            try:
                self.commit_log.append("finish", {"status": status, "counts": _scalar_counts(counts), "error": error})
            except LogFencedError as exc:  # another invocation holds the run now: its manifest is the truth
                self.job.log.error("%s; this invocation's manifest is not written", exc)
                return timings
        info = RunInfo(run_id=config.run_id, output=config.output, config=config.to_dict(), model=config.model,
                       vocab=c.vocab, vocab_spec=c.vocab_spec, vocab_hash=c.run_hash, started_at=self.started_at)
        manifest = build_manifest(info, status, counts, timings, committed, res, error)
        manifest["invocation"] = self.commit_log.invocation
        manifest = self.job.manifest_extra(manifest, config, c)
        write_manifest(c.store, manifest)
        return timings


def _scalar_counts(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if isinstance(v, (int, float, str))}
