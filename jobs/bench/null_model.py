"""The job's driver at scale, without a model: ``python -m jobs.bench.null_model``.

Two measurements (docs/benchmarks.md records them):

- ``--scaling N`` (default): the whole segment job (listing, units, Ray, decode tasks, actors, the
  CPU tasks that encode and write, commits) with a **null model** (:class:`NullUDF`: fixed masks, realistic PNGs and
  statistics, no U-Net), at N and 10 x N images, side by side with Ray Data's own ``map_batches ->
  write_parquet`` of the same masks rows at the same block size (one block per unit). Each run is a
  fresh process with its own local Ray runtime, so its peak RSS is its own. Prints images/s, driver
  bytes received per image (the job's metadata; Ray Data's native write returns only write
  statistics), the driver's peak RSS, and the driver's CPU time:

  * **steady state**: a sampler thread in the driver records (time, process CPU time, units done)
    five times a second; the window from 10 % to 90 % of the units leaves out start-up (imports,
    Ray, actors) and the tail. ``cpu ms/img`` is the driver's CPU over that window per image done in it;
  * **what it is made of**: Ray Data's executor polls (its scheduling loop wakes at least every
    0.1 s while tasks run, its output queue every 0.01 s), so part of the driver's CPU is paid per
    second, whatever the throughput, and part per image. A third run per path, on
    :data:`SLOW_UNITS` units with a model slowed to :data:`SLOW_S_PER_IMAGE` s per image, gives a
    second point of the line ``cpu/s = a + b * images/s``: ``a`` (ms of CPU per second) and ``b``
    (ms per image). One driver core is saturated at ``(1000 - a) / b`` images/s: the ceiling.
- ``--replan N``: planning of a run that has N items done (a done index of N URIs synthesised
  directly, no images) against a listing of N + 1000 URIs in Arrow (as jobs.segment holds it): time
  and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from statistics import median

import numpy as np

from jobs.bench.floor import peak_rss_mb
from jobs.segment.actor import SegmentUDF

SIDE = 64  # input images and model resolution of the null-model runs
SLOW_UNITS = 10  # units of the slowed run (the per-second share of the driver's CPU)
SLOW_S_PER_IMAGE = 0.008  # the slowed model: 2 s per unit of 256 images
SAMPLE_S = 0.2  # the driver's sampler period
PROGRESS_ENV = "DIFFSEG_BENCH_PROGRESS"  # a folder where each actor call leaves one empty file when done


def _call_done() -> None:
    folder = os.environ.get(PROGRESS_ENV)
    if folder:
        open(os.path.join(folder, f"{os.getpid()}-{time.perf_counter_ns()}"), "w").close()


class NullUDF(SegmentUDF):
    """SegmentUDF with a model that returns fixed masks: four quadrants of classes 1..4 at the image's size
    and fixed scores (the encoding and writing of the rows are the real ones)."""

    def __init__(self, model_uri: str, vocab, config):
        from diffseg import Vocabulary
        from diffseg.lake.store import OutputStore

        self.config = config
        self.vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary.from_spec(vocab)
        self.store = None if config.target is None else OutputStore(config.target.output)
        rng = np.random.default_rng(0)
        self.scores = rng.random((1 + len(self.vocab), 8, 8), dtype=np.float32)

    def compute(self, items: list[dict]) -> list[dict]:
        from diffseg.segmenter import Segmentation

        out = []
        for item in items:
            h, w = item["size"]
            labels = np.zeros((h, w), np.uint8)
            k = min(4, len(self.vocab))
            labels[: h // 2, : w // 2], labels[: h // 2, w // 2 :] = 1, min(2, k)
            labels[h // 2 :, : w // 2], labels[h // 2 :, w // 2 :] = min(3, k), k
            names = sorted({self.vocab.names[i - 1] for i in np.unique(labels) if i})
            out.append({m: Segmentation(labels, self.scores, names, m) for m in self.config.methods})
        return out

    def __call__(self, batch):
        result = super().__call__(batch)
        _call_done()
        return result


class Slowed:
    """Mixin: a model that takes :data:`SLOW_S_PER_IMAGE` seconds per image (the slowed runs)."""

    def compute(self, items: list[dict]) -> list[dict]:
        time.sleep(SLOW_S_PER_IMAGE * len(items))
        return super().compute(items)


class SlowNullUDF(Slowed, NullUDF):
    pass


class NativeNullUDF(NullUDF):
    """The same rows for Ray Data's own writer: the masks table of each batch (no unit, no commit)."""

    def __call__(self, batch):
        from diffseg.lake.schemas import split_results

        masks = split_results(self.results(batch), "bench", "null", "h")["masks"]
        _call_done()
        return masks


class SlowNativeNullUDF(Slowed, NativeNullUDF):
    pass


def make_lake(folder: str, n: int) -> None:
    """`n` small PNG photos (noise, so they do not compress to nothing) under `folder`."""
    from PIL import Image

    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, SIDE, 3), dtype=np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    for i in range(n):
        sub = os.path.join(folder, f"{i // 1000:04d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"{i:07d}.png"), "wb") as f:
            f.write(data)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Sampler:
    """A driver thread that records (seconds, process CPU seconds, units done) every `period` s;
    `units_done()` counts what the run has finished so far (the actor calls that have returned)."""

    def __init__(self, units_done, period: float = SAMPLE_S):
        import threading

        self.units_done, self.period, self.samples = units_done, period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), cpu_s(), self.units_done()))
            if self._stop.wait(self.period):
                break

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def steady_window(samples: list[tuple[float, float, int]], units: int, lo: float = 0.1,
                  hi: float = 0.9) -> tuple[float, float, int] | None:
    """(seconds, CPU seconds, units done) between the first sample with at least `lo` of `units` done
    and the first with at least `hi` (None when the samples never spread over two points of it)."""
    start = next((x for x in samples if x[2] >= lo * units), None)
    end = next((x for x in samples if x[2] >= hi * units), None)
    if start is None or end is None or end[2] <= start[2] or end[0] <= start[0]:
        return None
    return end[0] - start[0], end[1] - start[1], end[2] - start[2]


def cpu_line(fast: tuple[float, float], slow: tuple[float, float]) -> tuple[float, float]:
    """The line ``cpu ms/s = a + b * images/s`` through two steady states given as (images/s, CPU ms/s):
    (a: the driver's CPU per second of run, b: its CPU per image, in ms)."""
    (x1, y1), (x2, y2) = fast, slow
    b = (y1 - y2) / (x1 - x2)
    return y1 - b * x1, b


def run_one(mode: str, lake: str, out: str, unit_size: int, num_cpus: int, slow: bool = False) -> dict:
    """One measured run in this process (a fresh one per run: see --one); `slow`: the slowed model."""
    import contextlib

    import ray

    from jobs.common.config import JobConfig, Node, resolve_resources
    from jobs.common.runner import run
    from jobs.segment.dataset import build_dataset
    from jobs.segment.run import SegmentJob

    progress = tempfile.mkdtemp(prefix="progress-", dir=os.path.dirname(os.path.abspath(out)))
    os.environ[PROGRESS_ENV] = progress  # before ray.init: its workers inherit the driver's environment
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    config = JobConfig(input=lake, output=out, vocab="cat, dog, person, car", model="tiny", resolution=SIDE,
                       batch_size=16, unit_size=unit_size, methods=("diffsegmenter", "seediff"), max_error_fraction=1.0)
    if mode == "job":
        actor_class = SlowNullUDF if slow else NullUDF
    else:
        actor_class = SlowNativeNullUDF if slow else NativeNullUDF

    def done() -> int:
        return len(os.listdir(progress))

    t0, c0 = time.perf_counter(), cpu_s()
    with Sampler(done) as sampler:
        if mode == "job":
            class NullJob(SegmentJob):
                def dataset(self, config, checked, units, resources, target):
                    return build_dataset(units, config, resources, checked.vocab, target, actor_class=actor_class)

            with contextlib.redirect_stdout(io.StringIO()):
                code = run(NullJob(), config)
            manifest = json.load(open(os.path.join(out, "manifest.json")))
            images, received = manifest["counts"]["processed"], manifest["counts"]["driver_bytes_received"]
            assert code == 0, manifest
        else:
            from diffseg.inputs import list_inputs
            from diffseg.lake.units import make_units
            from jobs.common.ray_env import alive_nodes

            units = make_units(list_inputs(lake), unit_size)
            res = resolve_resources(config, alive_nodes() or [Node("n", num_cpus)])
            ds = build_dataset(units, config, res, "cat, dog, person, car", None, actor_class=actor_class)
            ds.write_parquet(os.path.join(out, "masks"))
            images, received = sum(len(u.uris) for u in units), None
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    ray.shutdown()
    shutil.rmtree(progress, ignore_errors=True)
    window = steady_window(sampler.samples, -(-images // unit_size))
    steady = None
    if window:
        seconds, cpu_window, units_done = window
        n = min(images, units_done * unit_size)
        steady = {"images_per_s": round(n / seconds, 1), "cpu_ms_per_s": round(1000 * cpu_window / seconds, 2),
                  "cpu_ms_per_image": round(1000 * cpu_window / n, 4), "window_s": round(seconds, 2)}
    return {"mode": mode, "slow": slow, "images": images, "wall_s": round(wall, 2),
            "images_per_s": round(images / wall, 1), "driver_cpu_ms_per_image": round(1000 * cpu / images, 4),
            "driver_bytes_per_image": None if received is None else round(received / images, 1),
            "driver_peak_rss_mb": round(peak_rss_mb(), 1),
            "steady": steady}


def _uri(i: int) -> str:
    """A hash-like key, as real lakes name objects (sequential names compress far better and hide costs)."""
    import hashlib

    h = hashlib.sha1(str(i).encode()).hexdigest()
    return f"s3://lake/images/{h[:2]}/{h[2:22]}.jpg"


def write_index(folder: str, n: int) -> None:
    """A run "r" under `folder` with `n` keys done, as a finished invocation leaves it: a log whose newest
    entry is a done-index snapshot of all of them (planning reads the snapshot, no commit entries)."""
    import pyarrow as pa

    from diffseg.lake.done_index import HELD_KEYS_SCHEMA, DoneSet
    from diffseg.lake.done_index import write_index as write_snapshot
    from diffseg.lake.log import CommitLog
    from diffseg.lake.store import OutputStore

    store = OutputStore(folder)
    commit_log = CommitLog(store, "r", "0" * 12)
    commit_log.begin()
    unit_ids = [f"{i // 256:016x}" for i in range(n)]
    keys = pa.table({"uri": pa.array((_uri(i) for i in range(n)), pa.string(), size=n), "unit_id": unit_ids,
                     "status": pa.array([0] * n, pa.int8())})
    files = {t: {"path": f"{t}/part-r-{'0' * 12}-{{u}}-00000000.parquet", "bytes": 1, "md5": "0", "rows": 256}
             for t in ("masks", "stats", "errors")}
    units = {u: {"items": 256, "errors": 0, "retry": 0,
                 "files": {t: {**f, "path": f["path"].format(u=u)} for t, f in files.items()}}
             for u in sorted(set(unit_ids))}
    done = DoneSet(keys.cast(HELD_KEYS_SCHEMA), units, version=commit_log.next_version - 1, changes=1)
    write_snapshot(store, commit_log, done)


def replan(folder: str, n: int) -> dict:
    """Planning of run "r" under `folder` (see write_index) against a listing of n + 1000 URIs held as a
    pyarrow StringArray, as jobs.segment plans (diffseg.lake.plan.plan_keys: spill by key shard, exclude the
    done keys shard by shard, cut and store the units of what is left), then the duplicate count. The peak
    RSS includes the listing."""
    import pyarrow as pa

    from diffseg.lake.done_index import describe_done, load_state
    from diffseg.lake.plan import plan_keys
    from diffseg.lake.store import OutputStore

    listing = pa.array((_uri(i) for i in range(n)), pa.string(), size=n)
    listing = pa.concat_arrays([listing, pa.array([f"s3://lake/images/new/{i:06d}.jpg" for i in range(1000)])])
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    store = OutputStore(folder)
    done = load_state(store, "r")
    plan, c = plan_keys(listing, done, store, "r", "1" * 12, 256)
    counts = describe_done(done)
    seconds = time.perf_counter() - t0
    assert c.to_process == 1000 and len(plan) == 4 and counts["duplicate_items"] == 0, (c, len(plan), counts)
    return {"done": n, "replan_s": round(seconds, 2), "listing": n + 1000, "todo": c.to_process,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_with_listing_mb": round(rss0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.null_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scaling", type=int, default=None, metavar="N", help="images of the small run (10 N the large)")
    p.add_argument("--replan", type=int, nargs="+", metavar="N", help="re-plan with N items done (several allowed)")
    p.add_argument("--unit-size", type=int, default=256, help="images per unit = per block (default 256)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="runs of each kind (the split uses their medians; default 1)")
    p.add_argument("--one", nargs=3, metavar=("MODE", "LAKE", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--slow", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one, args.unit_size, args.num_cpus, slow=args.slow)))
        return 0
    if args.replan:
        for n in args.replan:
            with tempfile.TemporaryDirectory() as tmp:  # the index is written by one process, planned by another
                for step in (f"write_index({tmp!r}, {n})", f"print(json.dumps(replan({tmp!r}, {n})))"):
                    out = subprocess.run([sys.executable, "-c", "import json; from jobs.bench.null_model import "
                                          f"write_index, replan; {step}"], capture_output=True, text=True, check=True)
                print(out.stdout.strip().splitlines()[-1], flush=True)
        return 0
    n = args.scaling or 1000
    rows = []
    for size, slow in ((n, False), (10 * n, False), (SLOW_UNITS * args.unit_size, True)):
        with tempfile.TemporaryDirectory() as tmp:
            lake = os.path.join(tmp, "lake")
            make_lake(lake, size)
            for rep in range(args.repeat):
                for mode in ("job", "native"):  # side by side, alternating
                    cmd = [sys.executable, "-m", "jobs.bench.null_model", "--unit-size", str(args.unit_size),
                           "--num-cpus", str(args.num_cpus), "--one", mode, lake, os.path.join(tmp, f"{mode}-{rep}")]
                    out = subprocess.run(cmd + ["--slow"] * slow, capture_output=True, text=True)
                    if out.returncode:
                        print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                        return 1
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(json.dumps(rows[-1]), flush=True)
    print(report(rows))
    return 0


def report(rows: list[dict]) -> str:
    """The table of runs and, per path, the driver's CPU split into per second and per image."""
    lines = [f"{'run':<8}{'model':>6}{'images':>8}{'img/s':>8}{'steady img/s':>14}{'drv CPU ms/img':>16}"
             f"{'drv CPU ms/s':>14}{'drv B/img':>11}{'drv RSS MB':>12}"]
    for r in rows:
        st = r["steady"] or {}
        lines.append(f"{r['mode']:<8}{'slow' if r['slow'] else 'null':>6}{r['images']:>8}{r['images_per_s']:>8}"
                     f"{str(st.get('images_per_s')):>14}{str(st.get('cpu_ms_per_image')):>16}"
                     f"{str(st.get('cpu_ms_per_s')):>14}{str(r['driver_bytes_per_image']):>11}{r['driver_peak_rss_mb']:>12}")
    lines.append("(img/s: whole run; steady img/s, drv CPU ms/img and ms/s: from 10 % to 90 % of the units)")
    for mode in ("job", "native"):
        runs = [r for r in rows if r["mode"] == mode]
        sizes = sorted({r["images"] for r in runs if not r["slow"]})
        small, large = ([r for r in runs if r["images"] == n and not r["slow"]] for n in (sizes[0], sizes[-1]))
        slow = [r for r in runs if r["slow"]]
        rss = median([r["driver_peak_rss_mb"] for r in large]) / median([r["driver_peak_rss_mb"] for r in small])
        line = f"{mode}: RSS at 10 N / N = {rss:.2f}"
        points = [[r["steady"] for r in group if r["steady"]] for group in (large, slow)]
        if all(points):  # the medians of the repeats
            a, b = cpu_line(*((median([p["images_per_s"] for p in group]), median([p["cpu_ms_per_s"] for p in group]))
                              for group in points))
            line += (f"; driver CPU = {a:.1f} ms per second + {b:.4f} ms per image: one driver core holds "
                     f"{(1000 - a) / b:,.0f} images/s" if b > 0 else f"; driver CPU per image not resolved (b = {b:.4f})")
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
