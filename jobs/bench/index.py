"""`python -m jobs.bench.index`: the sharded done index (diffseg.lake.done_index) at N done keys.

Builds run "r" in a local folder through `--appends` index writes of hash-like keys
(``s3://bucket/images/<32 hex>.jpg``, units of 256, unit records with realistic file JSON), then measures,
each in a fresh process (peak RSS is per process):

- build: seconds, bytes written and rows merged per index write (the merge policy at work);
- load: load_state's seconds and memory (segment list, footers, unit records; no key);
- delta: exclude of `--delta` new keys against the N done (what a nightly re-plan does);
- full: exclude of the N done keys listed again (a full re-plan: everything is done);
- nightly: write_index of a `--delta`-key delta on the N index (must not rewrite the base);
- units: bytes per unit record held (tracemalloc) at 10^5 units, lean records vs parsed dicts.

Prints one JSON line per measurement; never asserts timings. ``--n 1000000,10000000`` runs several sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

UNIT = 256


def hash_keys(n: int, seed: int) -> pa.Array:
    """`n` keys ``s3://bucket/images/<32 random hex>.jpg`` (a StringArray built from one buffer)."""
    prefix, suffix = b"s3://bucket/images/", b".jpg"
    width = len(prefix) + 32 + len(suffix)
    rows = np.empty((n, width), np.uint8)
    rows[:, : len(prefix)] = np.frombuffer(prefix, np.uint8)
    rows[:, len(prefix) + 32:] = np.frombuffer(suffix, np.uint8)
    rng, hexdigits = np.random.default_rng(seed), np.frombuffer(b"0123456789abcdef", np.uint8)
    for start in range(0, n, 1 << 20):  # in slices: no n x 32 temporary
        digits = rng.integers(0, 16, (min(n, start + (1 << 20)) - start, 32), dtype=np.uint8)
        rows[start: start + len(digits), len(prefix): len(prefix) + 32] = hexdigits[digits]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(rows.reshape(-1)))


def files_json(unit_id: str) -> dict:
    part = f"part-r-0123456789ab-{unit_id}-9f8e7d6c"
    return {t: {"path": f"{t}/{part}.parquet", "bytes": 812345, "md5": "0123456789abcdef0123456789abcdef", "rows": 256}
            for t in ("masks", "stats", "errors")}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux /proc; the peak so far elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


class Peak:
    """Peaks during a `with` block, sampled every 5 ms: ``arrow_mb`` (pyarrow.total_allocated_bytes()) and
    ``rss_mb`` (resident memory above what it was at the start)."""

    def __enter__(self):
        import threading

        self.rss0_mb = rss_mb()
        self._arrow, self._rss, self._stop = pa.total_allocated_bytes(), self.rss0_mb, threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self._arrow, self._rss = max(self._arrow, pa.total_allocated_bytes()), max(self._rss, rss_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.arrow_mb = round(max(self._arrow, pa.total_allocated_bytes()) / 2**20)
        self.rss_mb = round(max(self._rss, rss_mb()) - self.rss0_mb)


def _imports() -> None:
    """Everything a measured step imports, imported before its baseline is taken."""
    import pyarrow.compute  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import diffseg.lake.done_index  # noqa: F401


def _state(folder: str):
    from diffseg.lake.done_index import load_state
    from diffseg.lake.store import OutputStore

    return load_state(OutputStore(folder), "r")


def build(folder: str, n: int, appends: int, keys: pa.Array | None = None) -> dict:
    """Run "r" with `n` keys (`keys`, else :func:`hash_keys`) in `appends` index writes (each a delta of
    n / appends keys)."""
    from diffseg.lake.done_index import HELD_KEYS_SCHEMA, write_index
    from diffseg.lake.log import CommitLog
    from diffseg.lake.store import OutputStore
    from diffseg.lake.unit_records import UnitRecord

    store = OutputStore(folder)
    commit_log = CommitLog(store, "r", "0123456789ab")
    commit_log.begin()
    keys = hash_keys(n, seed=0) if keys is None else keys
    writes, t0 = [], time.perf_counter()
    step = -(-n // appends)
    for i, start in enumerate(range(0, n, step)):
        part = keys.slice(start, min(step, n - start))
        done = _state(folder)
        first_unit = start // UNIT
        unit_ids = [f"{u:016x}" for u in range(first_unit, first_unit + -(-len(part) // UNIT))]
        unit_index = (np.arange(len(part)) // UNIT).astype(np.int32)
        done.delta = [pa.table({"uri": part, "unit_id": pa.DictionaryArray.from_arrays(unit_index, unit_ids),
                                "status": pa.array(np.zeros(len(part), np.int8))}, schema=HELD_KEYS_SCHEMA)]
        for u in unit_ids:
            done.units[u] = UnitRecord.of(UNIT, 0, 0, files_json(u))
        done.dirty, done.changes, done.version = set(unit_ids), 1, commit_log.next_version - 1
        before = {s.keys for s in done.segments}
        t1 = time.perf_counter()
        write_index(store, commit_log, done)
        new = [s for s in done.segments if s.keys not in before]
        writes.append({"append": i, "rows": len(part), "seconds": round(time.perf_counter() - t1, 2),
                       "rows_written": sum(s.keys_rows for s in new), "bytes_written": sum(s.keys_bytes for s in new),
                       "segments": [s.keys_rows for s in done.segments]})
    done = _state(folder)
    return {"step": "build", "n": n, "seconds": round(time.perf_counter() - t0, 1), "writes": writes,
            "index_bytes": sum(s.keys_bytes for s in done.segments),
            "bytes_per_key": round(sum(s.keys_bytes for s in done.segments) / n, 1),
            "rows_written_per_key": round(sum(w["rows_written"] for w in writes) / n, 2)}


def load(folder: str, n: int) -> dict:
    _imports()
    t0 = time.perf_counter()
    with Peak() as peak:
        done = _state(folder)
    return {"step": "load", "n": n, "seconds": round(time.perf_counter() - t0, 2), "rss_peak_mb_added": peak.rss_mb,
            "rss_held_mb_added": round(rss_mb() - peak.rss0_mb), "units": len(done.units), "segments": len(done.segments),
            "arrow_held_mb": round(pa.total_allocated_bytes() / 2**20, 1), "arrow_peak_mb": peak.arrow_mb}


def probe(folder: str, n: int, delta: int, full: bool) -> dict:
    _imports()
    listing = hash_keys(n, seed=0) if full else hash_keys(delta, seed=1)
    t0 = time.perf_counter()
    with Peak() as peak:
        done = _state(folder)
        t1 = time.perf_counter()
        todo = done.exclude(listing)
    seconds = time.perf_counter() - t0
    expected = 0 if full else delta
    if len(todo) != expected:
        raise SystemExit(f"probe gave {len(todo)} keys to do, expected {expected}")
    return {"step": "full" if full else "delta", "n": n, "listed": len(listing), "seconds": round(seconds, 1),
            "exclude_seconds": round(time.perf_counter() - t1, 1), "rss_peak_mb_added": peak.rss_mb,
            "arrow_peak_mb": peak.arrow_mb, "listing_mb": round(listing.nbytes / 2**20)}


def nightly(folder: str, n: int, delta: int) -> dict:
    """A `delta`-key append on the N index (in a copy of the folder: the probes stay comparable)."""
    from diffseg.lake.done_index import HELD_KEYS_SCHEMA, write_index
    from diffseg.lake.log import CommitLog
    from diffseg.lake.store import OutputStore

    store = OutputStore(folder)
    commit_log = CommitLog(store, "r", "fedcba987654")
    commit_log.begin()
    done = _state(folder)
    keys = hash_keys(delta, seed=1)
    unit_ids = [f"f{u:015x}" for u in range(-(-delta // UNIT))]
    done.delta = [pa.table({"uri": keys, "unit_id": pa.DictionaryArray.from_arrays(
        (np.arange(delta) // UNIT).astype(np.int32), unit_ids), "status": pa.array(np.zeros(delta, np.int8))},
        schema=HELD_KEYS_SCHEMA)]
    from diffseg.lake.unit_records import UnitRecord

    for u in unit_ids:
        done.units[u] = UnitRecord.of(UNIT, 0, 0, files_json(u))
    done.dirty, done.changes, done.version = set(unit_ids), 1, commit_log.next_version - 1
    before = {s.keys for s in done.segments}
    t0 = time.perf_counter()
    with Peak() as peak:
        write_index(store, commit_log, done)
    new = [s for s in done.segments if s.keys not in before]
    return {"step": "nightly", "n": n, "delta": delta, "seconds": round(time.perf_counter() - t0, 1),
            "rss_peak_mb_added": peak.rss_mb, "arrow_peak_mb": peak.arrow_mb, "rows_written": sum(s.keys_rows for s in new),
            "bytes_written": sum(s.keys_bytes for s in new), "segments": [s.keys_rows for s in done.segments]}


def units_memory(count: int = 100_000) -> dict:
    """Bytes per unit record held: lean UnitRecords vs the parsed dicts of diffseg 0.3."""
    import tracemalloc

    from diffseg.lake.unit_records import UnitRecord, add_records, records_table

    ids = [f"{u:016x}" for u in range(count)]
    table = records_table([(u, UnitRecord.of(UNIT, 0, 0, files_json(u))) for u in ids])  # as a units file reads
    out = {"step": "units", "units": count, "files_json_bytes": round(sum(map(len, table["files"].to_pylist())) / count)}
    for name in ("lean", "parsed"):
        tracemalloc.start()
        held: dict = {}
        add_records(held, table)
        if name == "parsed":  # diffseg 0.3 held every record as dicts with the files parsed
            held = {u: {"items": r["items"], "errors": r["errors"], "retry": r["retry"], "files": r["files"]}
                    for u, r in held.items()}
        out[f"{name}_bytes_per_unit"] = round(tracemalloc.get_traced_memory()[0] / count)
        tracemalloc.stop()
        del held
    return out


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "jobs.bench.index", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{args}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench.index", description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000000", help="done keys, comma-separated sizes (default 1000000)")
    parser.add_argument("--appends", type=int, default=10, help="index writes building the index (default 10)")
    parser.add_argument("--delta", type=int, default=1_000_000, help="new keys of the delta probe (default 10^6)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        n = int(args.n)
        result = {"build": lambda: build(args.folder, n, args.appends), "load": lambda: load(args.folder, n),
                  "delta": lambda: probe(args.folder, n, args.delta, full=False),
                  "full": lambda: probe(args.folder, n, args.delta, full=True),
                  "nightly": lambda: nightly(args.folder, n, args.delta), "units": units_memory}[args.step]()
        print(json.dumps(result))
        return 0
    print(json.dumps(_child(["--step", "units"])), flush=True)
    for n in (int(x) for x in args.n.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-index-") as folder:
            common = ["--n", str(n), "--folder", folder, "--appends", str(args.appends), "--delta", str(args.delta)]
            for step in ("build", "load", "delta", "full", "nightly"):
                print(json.dumps(_child(["--step", step, *common])), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
