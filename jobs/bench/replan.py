"""Re-planning a run against a big done index, the job's own path end to end: ``python -m jobs.bench.replan``
(docs/benchmarks.md, section "Re-plan").

Each case builds run "r"'s sharded done index (diffseg.lake.done_index, 10 appends) of D hash-like keys in
a local OUTPUT folder, serves a listing from the ListObjectsV2 stand-in of jobs.bench.listing on
127.0.0.1 (``--latency`` per request, default 50 ms), and in a fresh process runs what a rerun of
``jobs.segment`` runs before Ray starts: ``diffseg.inputs.list_input(INPUT, "files")`` (the listing as a
stream, diffseg.inputs.listing.list_keys) then ``diffseg.lake.plan.plan_keys`` (spill by key shard, probe
the index shard by shard, cut and store the units), with ``load_state`` first. Printed: wall seconds,
the process's CPU seconds, its peak RSS (VmHWM) above its RSS after the imports, keys listed, keys to do, units.

- ``delta``: a nightly delta of M new keys under their own prefix (``s3://lake/new/``) against D done
  (every shard of the index is read once);
- ``full``: the whole lake listed again (``s3://lake/images/``, the D done keys): nothing to do;
- ``fresh``: the first run of a lake of D keys (``s3://lake/images/``, an empty run: no index is built):
  everything to do, D / 256 units stored under ``_plans/`` (the driver's planning peak at lake size).

Keys are those of :class:`jobs.bench.listing.VirtualKeys` (``images/<32 hex>.jpg``: hash-like, spread over
the key space), the same strings in the index and in the listing. The index is read from a local folder
(no store latency: on S3 each of the 256 shard probes is one ranged GET per segment, a few at once).
Figures at 10^8 are extrapolated linearly from the two largest D measured (time and memory = a + b D),
printed as such: this 2-core machine does not hold a 10^8 index build in the time of a test session.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

from jobs.bench.listing import BUCKET, PREFIX, VirtualKeys, _free_port, serve_standin

NEW_PREFIX = "new/"


def virtual_keys(n: int, prefix: str = PREFIX) -> pa.Array:
    """The URIs ``s3://lake/<prefix><32 hex>.jpg`` of VirtualKeys(n, prefix), built with numpy (the same
    strings as VirtualKeys.key, checked on a sample)."""
    keys = VirtualKeys(n, prefix)
    head, tail = f"s3://{BUCKET}/{prefix}".encode(), b".jpg"
    width = len(head) + 32 + len(tail)
    rows = np.empty((n, width), np.uint8)
    rows[:, : len(head)] = np.frombuffer(head, np.uint8)
    rows[:, len(head) + 32:] = np.frombuffer(tail, np.uint8)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    index = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        halves = (index * np.uint64(keys.step), index * np.uint64(0x9E3779B97F4A7C15))
    for h, value in enumerate(halves):
        for j in range(16):
            nibble = (value >> np.uint64(4 * (15 - j))) & np.uint64(15)
            rows[:, len(head) + 16 * h + j] = digits[nibble.astype(np.int64)]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    array = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(rows.reshape(-1)))
    for i in (0, n // 2, n - 1):
        assert array[i].as_py() == f"s3://{BUCKET}/{keys.key(i)}", (array[i], keys.key(i))
    return array


def build_index(folder: str, done: int) -> dict:
    """Run "r" of OUTPUT `folder` with the `done` VirtualKeys committed, in 10 index appends."""
    from jobs.bench.index import build

    return build(folder, done, 10, keys=virtual_keys(done))


def _status_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc (VmHWM is this program's own: ru_maxrss
    would carry over the RSS of the process that forked it, here the one that built a 10^7-key index)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def replan(folder: str, endpoint: str, prefix: str) -> dict:
    """In this (fresh) process: list s3://lake/`prefix` through `endpoint` and plan it against run "r"."""
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
        os.environ.setdefault(name, value)
    import s3fs  # noqa: F401  (imports before the RSS baseline)

    from diffseg.inputs import list_input
    from diffseg.lake.done_index import load_state
    from diffseg.lake.plan import plan_keys
    from diffseg.lake.store import OutputStore

    store = OutputStore(folder)
    before, t0, cpu0 = _status_bytes("VmRSS"), time.perf_counter(), time.process_time()
    done = load_state(store, "r")
    t_load = time.perf_counter() - t0
    listing = list_input(f"s3://{BUCKET}/{prefix}", "files")
    plan, counts = plan_keys(listing, done, store, "r", "0" * 12, 256)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _status_bytes("VmHWM")
    return {"listed": counts.listed, "todo": counts.to_process, "units": len(plan), "seconds": round(seconds, 1),
            "load_s": round(t_load, 2), "cpu_s": round(cpu, 1), "peak_rss_mb": round((peak - before) / 2**20)}


def run_case(case: str, done: int, delta: int, latency_s: float, folder: str) -> dict:
    """Serve the case's listing and re-plan it in a child process."""
    listed, prefix = (delta, NEW_PREFIX) if case == "delta" else (done, PREFIX)
    if case == "fresh":
        folder = tempfile.mkdtemp(prefix="diffseg-fresh-", dir=os.path.dirname(folder))
    ctx = multiprocessing.get_context("spawn")
    port, ready = _free_port(), ctx.Event()
    server = ctx.Process(target=serve_standin, args=(port, listed, latency_s, ready, prefix), daemon=True)
    server.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("the listing stand-in did not start")
        time.sleep(0.5)
        code = (f"import json; from jobs.bench.replan import replan; "
                f"print(json.dumps(replan({folder!r}, 'http://127.0.0.1:{port}', {prefix!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"the re-plan failed: {out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.join(10)
        if case == "fresh":
            shutil.rmtree(folder, ignore_errors=True)
    expected = {"delta": delta, "fresh": done}.get(case, 0)
    if row["listed"] != listed or row["todo"] != expected:
        raise RuntimeError(f"{case}: listed {row['listed']} (expected {listed}), to do {row['todo']} (expected {expected})")
    return {"case": case, "done": done, **row}


def extrapolate(rows: list[dict], target: int) -> list[dict]:
    """Per case, seconds and peak RSS at `target` done keys from the two largest D measured (a + b D)."""
    out = []
    for case in ("delta", "full", "fresh"):
        pts = sorted((r for r in rows if r["case"] == case), key=lambda r: r["done"])[-2:]
        if len(pts) < 2 or pts[0]["done"] == pts[1]["done"]:
            continue
        (d0, d1) = (pts[0]["done"], pts[1]["done"])

        def at(key: str, p=pts, d0=d0, d1=d1) -> float:
            b = (p[1][key] - p[0][key]) / (d1 - d0)
            return p[1][key] + b * (target - d1)

        out.append({"case": case, "done": target, "seconds": round(at("seconds")), "peak_rss_mb": round(at("peak_rss_mb")),
                    "extrapolated_from": [d0, d1]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.replan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--done", type=int, nargs="+", default=[1_000_000, 10_000_000], metavar="D",
                   help="done keys of the index (several: one case each; default 10^6 10^7)")
    p.add_argument("--delta", type=int, default=1_000_000, metavar="M", help="new keys of the delta case (default 10^6)")
    p.add_argument("--latency", type=float, default=0.05, help="seconds the stand-in sleeps per request (default 0.05)")
    p.add_argument("--cases", default="delta,full", help="some of delta, full, fresh (default delta,full)")
    args = p.parse_args(argv)
    rows = []
    for done in args.done:
        folder = tempfile.mkdtemp(prefix="diffseg-replan-")
        try:
            cases = [c.strip() for c in args.cases.split(",")]
            if set(cases) - {"fresh"}:
                t0 = time.perf_counter()
                built = build_index(folder, done)
                print(json.dumps({"index": done, "build_s": round(time.perf_counter() - t0, 1),
                                  "index_mb": round(built["index_bytes"] / 2**20, 1)}), flush=True)
            for case in cases:
                rows.append(run_case(case, done, args.delta, args.latency, folder))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    for row in extrapolate(rows, 100_000_000):
        print(json.dumps({**row, "note": "extrapolated, not measured"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
