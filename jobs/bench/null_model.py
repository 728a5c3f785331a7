"""The job's driver at scale, without a model: ``python -m jobs.bench.null_model``.

Two measurements (docs/benchmarks.md records them):

- ``--scaling N`` (default): the whole segment job (listing, units, Ray, decode tasks, actors that
  encode and write, commits) with a **null model** (:class:`NullUDF`: fixed masks, realistic PNGs and
  statistics, no U-Net), at N and 10 x N images, side by side with Ray Data's own ``map_batches ->
  write_parquet`` of the same masks rows at the same block size (one block per unit). Each run is a
  fresh process with its own local Ray runtime, so its peak RSS is its own. Prints images/s, the
  driver's CPU seconds per image (its process CPU time over the run), driver bytes received per image
  (the job's metadata; Ray Data's native write returns only write statistics) and the driver's peak RSS.
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
import subprocess
import sys
import tempfile
import time

import numpy as np

from jobs.segment.actor import SegmentUDF

SIDE = 64  # input images and model resolution of the null-model runs


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


class NativeNullUDF(NullUDF):
    """The same rows for Ray Data's own writer: the masks table of each batch (no unit, no commit)."""

    def __call__(self, batch):
        from diffseg.lake.schemas import split_results

        return split_results(self.results(batch), "bench", "null", "h")["masks"]


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


def run_one(mode: str, lake: str, out: str, unit_size: int, num_cpus: int) -> dict:
    """One measured run in this process (a fresh one per run: see --one)."""
    import ray

    from jobs.common.config import JobConfig, Node, resolve_resources
    from jobs.common.runner import run
    from jobs.segment.dataset import build_dataset
    from jobs.segment.run import SegmentJob

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    config = JobConfig(input=lake, output=out, vocab="cat, dog, person, car", model="tiny", resolution=SIDE,
                       batch_size=16, unit_size=unit_size, methods=("diffsegmenter", "seediff"), max_error_fraction=1.0)
    t0, c0 = time.perf_counter(), cpu_s()
    if mode == "job":
        class NullJob(SegmentJob):
            def dataset(self, config, checked, units, resources, target):
                return build_dataset(units, config, resources, checked.vocab, target, actor_class=NullUDF)

        import contextlib

        with contextlib.redirect_stdout(io.StringIO()):
            code = run(NullJob(), config)
        manifest = json.load(open(os.path.join(out, "manifest.json")))
        images, received = manifest["counts"]["processed"], manifest["counts"]["driver_bytes_received"]
        assert code == 0, manifest
    else:
        from diffseg.lake.inputs import list_inputs
        from diffseg.lake.units import make_units
        from jobs.common.ray_env import alive_nodes

        units = make_units(list_inputs(lake), unit_size)
        res = resolve_resources(config, alive_nodes() or [Node("n", num_cpus)])
        ds = build_dataset(units, config, res, "cat, dog, person, car", None, actor_class=NativeNullUDF)
        ds.write_parquet(os.path.join(out, "masks"))
        images, received = sum(len(u.uris) for u in units), None
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    ray.shutdown()
    return {"mode": mode, "images": images, "wall_s": round(wall, 2), "images_per_s": round(images / wall, 1),
            "driver_cpu_ms_per_image": round(1000 * cpu / images, 4),
            "driver_bytes_per_image": None if received is None else round(received / images, 1),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _uri(i: int) -> str:
    return f"s3://lake/images/{i // 1000:05d}/{i:09d}.jpg"


def write_index(folder: str, n: int) -> None:
    """A run "r" under `folder` with `n` URIs done: its done index and its markers' names (empty files:
    planning only lists them, as they are all in the index)."""
    import pyarrow as pa

    from diffseg.lake.done_index import UNITS_SCHEMA, URIS_SCHEMA, DoneSet, merge_index
    from diffseg.lake.store import OutputStore

    unit_ids = [f"{i // 256:016x}" for i in range(n)]
    units = sorted(set(unit_ids))
    os.makedirs(os.path.join(folder, "_commits", "r"), exist_ok=True)
    for u in units:
        open(os.path.join(folder, "_commits", "r", f"{u}.json"), "w").close()
    done = DoneSet(pa.table({"uri": [_uri(i) for i in range(n)], "unit_id": unit_ids}, schema=URIS_SCHEMA),
                   pa.table({"unit_id": units, "items": [256] * len(units), "errors": [0] * len(units)},
                            schema=UNITS_SCHEMA), 0, 1)
    merge_index(OutputStore(folder), "r", done, [])


def replan(folder: str, n: int) -> dict:
    """Planning of run "r" under `folder` (see write_index) against a listing of n + 1000 URIs held as
    diffseg.lake.inputs.list_inputs_array returns it (a pyarrow StringArray), as jobs.segment plans:
    load the done set, filter the listing, cut units, count duplicates. The peak RSS includes the listing."""
    import pyarrow as pa

    from diffseg.lake.done_index import describe_done, load_done
    from diffseg.lake.store import OutputStore
    from diffseg.lake.units import units_of_sorted

    listing = pa.array((_uri(i) for i in range(n)), pa.string(), size=n)
    listing = pa.concat_arrays([listing, pa.array([f"s3://lake/images/new/{i:06d}.jpg" for i in range(1000)])])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    done = load_done(OutputStore(folder), "r")
    todo = done.exclude(listing)
    units = units_of_sorted(todo, 256)
    counts = describe_done(done)
    seconds = time.perf_counter() - t0
    assert len(todo) == 1000 and len(units) == 4 and counts["duplicate_items"] == 0, (len(todo), counts)
    return {"done": n, "replan_s": round(seconds, 2), "listing": n + 1000, "todo": len(todo),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_with_listing_mb": round(rss0 / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.null_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scaling", type=int, default=None, metavar="N", help="images of the small run (10 N the large)")
    p.add_argument("--replan", type=int, nargs="+", metavar="N", help="re-plan with N items done (several allowed)")
    p.add_argument("--unit-size", type=int, default=256, help="images per unit = per block (default 256)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--one", nargs=3, metavar=("MODE", "LAKE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.one[2], args.unit_size, args.num_cpus)))
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
    for size in (n, 10 * n):
        with tempfile.TemporaryDirectory() as tmp:
            lake = os.path.join(tmp, "lake")
            make_lake(lake, size)
            for mode in ("job", "native"):
                cmd = [sys.executable, "-m", "jobs.bench.null_model", "--unit-size", str(args.unit_size),
                       "--num-cpus", str(args.num_cpus), "--one", mode, lake, os.path.join(tmp, mode)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                    return 1
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    print(f"{'run':<8}{'images':>8}{'img/s':>9}{'drv CPU ms/img':>16}{'drv B/img':>11}{'drv RSS MB':>12}")
    for r in rows:
        print(f"{r['mode']:<8}{r['images']:>8}{r['images_per_s']:>9}{r['driver_cpu_ms_per_image']:>16}"
              f"{str(r['driver_bytes_per_image']):>11}{r['driver_peak_rss_mb']:>12}")
    for mode in ("job", "native"):  # what each further image costs the driver (the fixed start-up cost removed)
        small, large = (r for r in rows if r["mode"] == mode)
        extra = large["images"] - small["images"]
        cpu = (large["driver_cpu_ms_per_image"] * large["images"] - small["driver_cpu_ms_per_image"] * small["images"])
        print(f"{mode}: driver CPU per further image {cpu / extra:.4f} ms (between {small['images']} and "
              f"{large['images']} images); RSS at 10 N / N = {large['driver_peak_rss_mb'] / small['driver_peak_rss_mb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
