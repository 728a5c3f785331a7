"""``python -m jobs.bench.plan``: the driver's memory and time while planning loose files as a stream.

A fake listing of N hash-like names (``s3://bucket/images/<32 hex digits>.jpg``, as real lakes name objects), streamed
in batches of 2^20 keys as diffseg.inputs' listing hands them over, is planned by diffseg.lake.plan.plan_keys
against an empty run into a local OUTPUT (the plan files), as jobs.segment plans. Printed per N: seconds,
units, the peak RSS growth of the process (resource.getrusage maxrss: the listing batches are made on the
fly, so it is planning's own), pyarrow's peak of allocated bytes, and the driver's bytes per unit of the
plan it keeps (numpy arrays). Each N runs in a fresh process (maxrss only grows). Numbers, not asserts.

    python -m jobs.bench.plan 1000000            # 10^6 listed keys
    python -m jobs.bench.plan 100000 1000000     # several sizes

``--ray 1000 5000``: the driver's memory per unit when Ray Data runs a plan's units, as jobs.segment feeds
them (one read task per unit: jobs.segment.dataset.plan_source), beside today's alternative of one
``from_arrow`` block per unit (jobs.segment.dataset.input_blocks, still used for container units): units of
2 keys, read and counted by the driver on a local Ray runtime of 2 CPUs; RSS (/proc/self/statm, plasma pages
the driver wrote included) before, once the first batch arrived (every input created) and at its peak. The
per-unit cost is the slope between two sizes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def fake_batches(n: int, batch: int = 1 << 20):
    """`n` hash-like URIs ``s3://bucket/images/<32 hex digits>.jpg`` in Arrow batches, made with numpy (no
    Python string per key, so the process's peak is planning's, not the fake listing's)."""
    import numpy as np
    import pyarrow as pa

    hexdigits = np.frombuffer(b"0123456789abcdef", np.uint8)
    prefix, suffix = np.frombuffer(b"s3://bucket/images/", np.uint8), np.frombuffer(b".jpg", np.uint8)
    width = len(prefix) + 32 + len(suffix)

    def mix(x):  # MurmurHash3's fmix64: consecutive integers -> hash-like bits
        x = x ^ (x >> np.uint64(33))
        x = x * np.uint64(0xFF51AFD7ED558CCD)
        x = x ^ (x >> np.uint64(33))
        x = x * np.uint64(0xC4CEB9FE1A85EC53)
        return x ^ (x >> np.uint64(33))

    with np.errstate(over="ignore"):
        for start in range(0, n, batch):
            i = np.arange(start, min(n, start + batch), dtype=np.uint64)
            m = len(i)
            raw = np.stack([mix(i), mix(i ^ np.uint64(0x9E3779B97F4A7C15))], 1).view(np.uint8).reshape(m, 16)
            text = np.empty((m, width), np.uint8)
            text[:, :len(prefix)] = prefix
            text[:, len(prefix):len(prefix) + 32:2] = hexdigits[raw >> 4]
            text[:, len(prefix) + 1:len(prefix) + 32:2] = hexdigits[raw & 15]
            text[:, len(prefix) + 32:] = suffix
            offsets = np.arange(0, (m + 1) * width, width, dtype=np.int32)
            yield pa.StringArray.from_buffers(m, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))


class FakeListing:
    form = "files"

    def __init__(self, n: int):
        self.n = n

    def batches(self):
        return fake_batches(self.n)


def measure(n: int, output: str, unit_size: int = 256) -> dict:
    import resource

    import pyarrow as pa

    from diffseg.lake.done_index import empty_done
    from diffseg.lake.plan import plan_keys
    from diffseg.lake.store import OutputStore

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pool = pa.default_memory_pool()
    t0 = time.perf_counter()
    plan, counts = plan_keys(FakeListing(n), empty_done(), OutputStore(output), "r", "0123456789ab", unit_size)
    seconds = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kept = sum(a.nbytes for a in (plan.unit_ids, plan.rows, plan.shards, plan.offsets, plan.lengths))
    assert counts.to_process == n and plan.total_items == n, (counts, plan.total_items)
    return {"listed": n, "units": len(plan), "plan_s": round(seconds, 2), "peak_rss_growth_mb": round(rss1 - rss0, 1),
            "peak_rss_mb": round(rss1, 1), "arrow_peak_mb": round(pool.max_memory() / 2**20, 1),
            "arrow_now_mb": round(pa.total_allocated_bytes() / 2**20, 1), "plan_bytes_per_unit": round(kept / len(plan), 1)}


def measure_ray(mode: str, n_units: int, output: str) -> dict:
    """Driver RSS while Ray Data runs `n_units` units of 2 keys: ``plan`` (read tasks) or ``from_arrow``."""
    import gc

    import pyarrow as pa
    import ray

    from diffseg.lake.done_index import empty_done
    from diffseg.lake.plan import plan_keys, units_of_plan
    from diffseg.lake.store import OutputStore
    from jobs.segment.dataset import input_blocks, plan_source

    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    store = OutputStore(output)
    plan, _ = plan_keys(pa.concat_arrays(list(fake_batches(2 * n_units))), empty_done(), store, "r", "0" * 12, 2)
    units = list(units_of_plan(store, plan)) if mode == "from_arrow" else None
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    gc.collect()
    r0 = rss()
    t0 = time.perf_counter()
    if mode == "plan":
        ds = ray.data.read_datasource(plan_source(plan), override_num_blocks=len(plan), num_cpus=0.5)
    else:
        ds = ray.data.from_arrow(input_blocks(units))
        units = None
    rows, first, peak = 0, None, r0
    for i, batch in enumerate(ds.iter_batches(batch_format="pyarrow", batch_size=None)):
        rows += batch.num_rows
        first = rss() if first is None else first
        peak = max(peak, rss()) if i % 100 == 0 else peak
    peak = max(peak, rss())
    ray.shutdown()
    assert rows == 2 * len(plan), rows
    return {"mode": mode, "units": len(plan), "s": round(time.perf_counter() - t0, 1), "rss0_mb": round(r0, 1),
            "first_batch_growth_mb": round(first - r0, 1), "peak_growth_mb": round(peak - r0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sizes", type=int, nargs="*", default=[1_000_000], help="listed keys (default 10^6)")
    p.add_argument("--unit-size", type=int, default=256)
    p.add_argument("--ray", action="store_true", help="the sizes are units run through Ray Data (see above)")
    p.add_argument("--mode", default="plan", help=argparse.SUPPRESS)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        result = (measure_ray(args.mode, args.one, args.output) if args.ray else
                  measure(args.one, args.output, args.unit_size))
        print(json.dumps(result))
        return 0
    rows = []
    for mode in ("plan", "from_arrow") if args.ray else ("plan",):
        for n in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "jobs.bench.plan", "--one", str(n), "--output", tmp, "--unit-size",
                       str(args.unit_size), "--mode", mode] + ["--ray"] * args.ray
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
        if args.ray and len(args.sizes) > 1:
            a, b = (r for r in rows if r["mode"] == mode and r["units"] in (min(args.sizes), max(args.sizes)))
            for key in ("first_batch_growth_mb", "peak_growth_mb"):
                slope = (b[key] - a[key]) * 2**20 / (b["units"] - a["units"])
                print(f"{mode}: {key.removesuffix('_mb')} per unit = {slope:,.0f} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
