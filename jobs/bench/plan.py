"""``python -m jobs.bench.plan``: the driver's memory and time while planning loose files as a stream.

A fake listing of N hash-like names (``s3://bucket/images/<32 hex digits>.jpg``, as real lakes name objects), streamed
in batches of 2^20 keys as diffseg.inputs' listing hands them over, is planned by diffseg.lake.plan.plan_keys
against an empty run into a local OUTPUT (the plan files), as jobs.segment plans. Printed per N: seconds,
units, the peak RSS growth of the process (resource.getrusage maxrss: the listing batches are made on the
fly, so it is planning's own), pyarrow's peak of allocated bytes, and the driver's bytes per unit of the
plan it keeps (numpy arrays). Each N runs in a fresh process (maxrss only grows). Numbers, not asserts.

    python -m jobs.bench.plan 1000000            # 10^6 listed keys
    python -m jobs.bench.plan 100000 1000000     # several sizes
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sizes", type=int, nargs="*", default=[1_000_000], help="listed keys (default 10^6)")
    p.add_argument("--unit-size", type=int, default=256)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.output, args.unit_size)))
        return 0
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, "-m", "jobs.bench.plan", "--one", str(n), "--output", tmp,
                                  "--unit-size", str(args.unit_size)], capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
