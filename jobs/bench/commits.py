"""How fast the driver commits at a given store latency: ``python -m jobs.bench.commits``.

The real driver side of a run (a lease, a begun diffseg.lake.log.CommitLog, diffseg.lake.writer.UnitCommitter
with its group-commit thread, fed by jobs.common.ray_env.commit_stream) receives the metadata rows that
encode tasks send (one diffseg.lake.commit.META_SCHEMA row per unit, arriving whole) as fast as it takes
them. The store is :class:`SlowStore`: a local OutputStore that sleeps ``--latency-ms`` (default 50 ms)
before every request (each write, conditional write, read, listing, existence check and batched delete):
the stand-in for an object store's latency. Prints units and images committed per second, log entries
written and units per entry.

``--stale`` also gives every unit a second, late attempt (a retried batch whose files no commit names):
the committer then deletes files with every entry (one batched delete per entry, as on S3).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import pyarrow as pa

from diffseg.lake.store import OutputStore


class SlowStore(OutputStore):
    """An OutputStore whose every request waits `latency_s` first (the object-store stand-in); counts them."""

    def __init__(self, output: str, latency_s: float):
        super().__init__(output)
        self.latency_s, self.requests = latency_s, 0

    def _wait(self) -> None:
        self.requests += 1
        time.sleep(self.latency_s)

    def _put(self, rel, data):
        self._wait()
        return super()._put(rel, data)

    def put_if(self, rel, data, expected):
        self._wait()
        return super().put_if(rel, data, expected)

    def get(self, rel):
        self._wait()
        return super().get(rel)

    def exists(self, rel):
        self._wait()
        return super().exists(rel)

    def list(self, rel_dir):
        self._wait()
        return super().list(rel_dir)

    def list_prefix(self, rel_prefix):
        self._wait()
        return super().list_prefix(rel_prefix)

    def remove(self, rels):
        if rels:
            for _ in range(0, len(rels), 1000):  # S3 deletes up to 1000 keys per request
                self._wait()
        return super().remove(rels)


class MetaStream:
    """Stands in for the Ray dataset commit_stream reads: yields the given META tables."""

    def __init__(self, batches: list[pa.Table]):
        self.batches = batches

    def iter_batches(self, **_):
        yield from self.batches


def meta_rows(units, run_id: str, invocation: str, stale: bool) -> list[pa.Table]:
    """One META batch per unit, as an encode task returns it (whole units; with `stale` a late second
    attempt of each unit follows, which the committer discards and deletes)."""
    from diffseg.lake.commit import META_SCHEMA, final_files, new_attempt
    from diffseg.lake.schemas import SEGMENT_TABLES

    out = []
    for unit in units:
        n = len(unit.uris)
        attempts = 2 if stale else 1
        for _ in range(attempts):
            paths = final_files(run_id, invocation, unit.unit_id, new_attempt(), SEGMENT_TABLES.schemas)
            files = {t: {"path": p, "bytes": 1 << 20, "md5": "0" * 32, "rows": n} for t, p in paths.items()}
            out.append(pa.Table.from_pylist([{
                "unit_id": unit.unit_id, "positions": list(range(n)), "errors": [], "retry": [],
                "counts": json.dumps({"items": n, "done": n, "errors": 0, "masks_rows": n, "stats_rows": 6 * n}),
                "files": json.dumps(files), "final": True, "unit_rows": n, "keys": list(unit.uris)}],
                schema=META_SCHEMA))
    return out


def run_commits(units: int, unit_size: int, latency_ms: float, stale: bool = False) -> dict:
    """Commits `units` units of `unit_size` items through the real driver path at `latency_ms` per request."""
    from diffseg.lake.lease import acquire
    from diffseg.lake.log import CommitLog, new_invocation_id
    from diffseg.lake.schemas import SEGMENT_TABLES
    from diffseg.lake.units import make_units
    from diffseg.lake.writer import UnitCommitter
    from jobs.common.ray_env import commit_stream

    uris = [f"s3://lake/images/{i // 1000:05d}/{i:09d}.jpg" for i in range(units * unit_size)]
    plan = make_units(uris, unit_size)
    with tempfile.TemporaryDirectory() as tmp:
        store = SlowStore(tmp, latency_ms / 1000)
        lease = acquire(store, "bench")
        try:
            commit_log = CommitLog(store, "bench", new_invocation_id())
            commit_log.begin({})
            batches = meta_rows(plan, "bench", commit_log.invocation, stale)
            committer = UnitCommitter(store, commit_log, plan, SEGMENT_TABLES, before_commit=lease.check)
            before = store.requests
            t0 = time.perf_counter()
            compactions = commit_stream(committer, MetaStream(batches), SEGMENT_TABLES)
            seconds = time.perf_counter() - t0
            committer.finish()
            requests = store.requests - before
        finally:
            lease.release()
    assert len(committer.committed) == len(plan) and not committer.incomplete
    items = sum(len(u.uris) for u in plan)
    return {"units": len(plan), "unit_size": unit_size, "latency_ms": latency_ms, "stale": stale,
            "seconds": round(seconds, 3), "units_per_s": round(len(plan) / seconds, 1),
            "images_per_s": round(items / seconds), "entries": committer.entries,
            "units_per_entry": round(len(plan) / max(1, committer.entries), 1), "store_requests": requests,
            "compactions": compactions}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.commits", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", type=int, default=2000, help="units to commit (default 2000)")
    p.add_argument("--unit-size", type=int, default=256, help="images per unit (default 256)")
    p.add_argument("--latency-ms", type=float, default=50.0, help="added to every store request (default 50)")
    p.add_argument("--stale", action="store_true", help="every unit also has a late attempt to delete")
    args = p.parse_args(argv)
    r = run_commits(args.units, args.unit_size, args.latency_ms, args.stale)
    print(json.dumps(r))
    print(f"commits: {r['images_per_s']:,} images/s ({r['units_per_s']} units/s of {r['unit_size']}) at "
          f"{r['latency_ms']:g} ms per store request; {r['entries']} log entries ({r['units_per_entry']} units each), "
          f"{r['store_requests']} store requests, {r['compactions']} compactions"
          + ("; every unit also had a late attempt to delete" if r["stale"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
