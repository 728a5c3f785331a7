"""The whole segment job at a set model rate: ``python -m jobs.bench.pipeline``.

The real job (jobs.common.runner with jobs.segment: listing, units, lease and log, Ray Data, decode tasks,
the device actor stage, the encode/write CPU stage, the driver's commits) over a lake of photo-like JPEGs
of 0.3-2.8 MP (jobs.bench.photos; 100-600 KB), with a model stand-in (:class:`StandInUDF`) that holds its
"device" for ``--ms-per-image`` per image (``time.sleep``, which releases the GIL as a CUDA call does)
and returns realistically shaped results: argmax-size label maps (at most 1024 px on the long side, the
photo's aspect) taken by the Segmenter's own ``scores_to_labels`` from smooth score blobs of 5-10 of 20
classes, and (1 + 20, 64, 64) float32 scores.

Each stage records the CPU time it used (process CPU time of its worker around the call; a Ray task
worker runs one task at a time) and the driver samples its own CPU time (jobs.bench.null_model.Sampler).
It prints, for the steady state (from 10 % to 80 % of the units through the stand-in):

- images/s through the stand-in over its rate: the **pipeline efficiency**, the fraction of the time
  its device is busy (1.0: the device never waits), and images/s end to end over the whole run (start-up
  and the tail of encoding and commits included);
- CPU ms per image by stage: decode (read + decode + resize), model (the stand-in call's overhead: items,
  compact outcomes; a GPU actor's CPU besides the forward), encode (PNG, RLE, statistics), write (Parquet
  files), driver (metadata, commits, Ray Data's executor);
- compactions (units that arrived in parts; 0 when units arrive whole);
- the CPUs per GPU the job needs at 200 and at 400 images/s: the per-image CPU of the cluster stages
  times the rate, over a target utilisation of :data:`TARGET_UTILISATION`, plus the actor's own CPU.

Run where the CPUs can feed the stand-in (2 cores: 25 images/s); docs/benchmarks.md ("Pipeline")
records the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from jobs.bench.null_model import Sampler, cpu_s, steady_window
from jobs.segment.actor import SegmentUDF, decode_batch

STAGES_ENV = "DIFFSEG_BENCH_STAGES"  # a folder where every stage call leaves one JSON record
MS_ENV = "DIFFSEG_BENCH_MS_PER_IMAGE"  # the stand-in's device time per image
PHOTO_SIZES = ((480, 640), (768, 1024), (1080, 1620), (1382, 2048))  # 0.3, 0.8, 1.75, 2.8 MP (H, W)
DISTINCT = 8  # distinct photos in the lake (the files repeat them under other names)
CLASSES = 20
SCORE_SIDE = 64  # the methods' score maps at 512 px input
TARGET_UTILISATION = 0.75  # of the CPUs a sizing plans for (Ray scheduling, Python, uneven photo sizes)
RATES = (200, 400)  # images/s per GPU the sizing is printed for


def _record(stage: str, cpu: float, images: int) -> None:
    folder = os.environ.get(STAGES_ENV)
    if folder:
        name = os.path.join(folder, f"{stage}-{images}-{os.getpid()}-{time.perf_counter_ns()}.json")
        with open(name, "w") as f:
            json.dump({"stage": stage, "cpu_s": cpu, "images": images}, f)


def timed_decode(batch, **kwargs):
    """jobs.segment.actor.decode_batch, its CPU time recorded as ``decode``."""
    c0 = time.process_time()
    out = decode_batch(batch, **kwargs)
    _record("decode", time.process_time() - c0, len(out["uri"]))
    return out


def timed_encode_and_write(batch, encoder, target):
    """jobs.common.actor.encode_and_write, its CPU time recorded as ``encode`` and ``write``."""
    from diffseg.lake.commit import write_results
    from diffseg.lake.store import OutputStore
    from jobs.common.actor import encode_rows, send_keys_option, unpack_compact

    c0 = time.process_time()
    items, outcomes, positions, unit_rows = unpack_compact(batch)
    results = encode_rows(encoder, items, outcomes)
    c1 = time.process_time()
    meta = write_results(OutputStore(target.output), target, encoder.tables, results, positions, unit_rows,
                         **send_keys_option(batch))
    _record("encode", c1 - c0, len(items))
    _record("write", time.process_time() - c1, len(items))
    return meta


def blob_scores(size: tuple[int, int], seed: int) -> np.ndarray:
    """(1 + CLASSES, SCORE_SIDE, SCORE_SIDE) float32 scores: a background level and 5-10 smooth class blobs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SCORE_SIDE, 0:SCORE_SIDE].astype(np.float32) / SCORE_SIDE
    scores = np.full((1 + CLASSES, SCORE_SIDE, SCORE_SIDE), -1.0, np.float32)
    scores[0] = 0.3 + 0.05 * rng.standard_normal((SCORE_SIDE, SCORE_SIDE)).astype(np.float32)
    for k in rng.choice(np.arange(1, CLASSES + 1), int(rng.integers(5, 11)), replace=False):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.3)
        wobble = 0.02 * np.sin(2 * np.pi * (rng.uniform(2, 6) * x + rng.uniform(2, 6) * y))
        scores[k] = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r)) + wobble
    return scores


class StandInUDF(SegmentUDF):
    """SegmentUDF whose "model" holds the device for $DIFFSEG_BENCH_MS_PER_IMAGE ms per image (sleep) and
    returns per photo size a fixed realistic result (module docstring; made once per size, as a GPU would
    make it on the device), then goes through the real compact/encode/write path."""

    def __init__(self, model_uri: str, vocab, config):
        from diffseg import Vocabulary
        from diffseg.lake.store import OutputStore

        self.config = config
        self.vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary.from_spec(vocab)
        self.store = None if config.target is None else OutputStore(config.target.output)
        self.seconds = float(os.environ.get(MS_ENV, "0")) / 1000
        self.cache: dict = {}

    def result(self, size: tuple[int, int], method: str):
        import torch

        from diffseg.segmentation import Segmentation, scores_to_labels

        key = (size, method)
        if key not in self.cache:
            scores = blob_scores(size, seed=size[0] * 7 + size[1] + len(method))
            labels, counts = scores_to_labels(torch.from_numpy(scores), size, 1024)
            ids = [int(i) for i in np.flatnonzero(counts[1:]) + 1]
            self.cache[key] = Segmentation(labels, scores, [self.vocab.names[i - 1] for i in ids], method, ids, size)
        return self.cache[key]

    def compute(self, items: list[dict]) -> list[dict]:
        time.sleep(self.seconds * len(items))  # the device is busy; the GIL is free
        return [{m: self.result(it["size"], m) for m in self.config.methods} for it in items]

    def __call__(self, batch):
        c0 = time.process_time()
        out = super().__call__(batch)
        _record("model", time.process_time() - c0, len(batch["uri"]))
        return out


def make_lake(folder: str, n: int, sizes=PHOTO_SIZES, quality: int = 92) -> dict:
    """`n` JPEG photos under `folder` (:data:`DISTINCT` distinct ones of `sizes` (H, W), repeated);
    returns their count, megapixels and kilobytes (min, mean, max)."""
    from PIL import Image

    from jobs.bench.photos import synth_photo

    distinct = []
    for i in range(DISTINCT):
        h, w = sizes[i % len(sizes)]
        buf = io.BytesIO()
        Image.fromarray(synth_photo(h, w, seed=i)).save(buf, format="JPEG", quality=quality)
        distinct.append((buf.getvalue(), h * w / 1e6))
    for i in range(n):
        sub = os.path.join(folder, f"{i // 1000:04d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"{i:07d}.jpg"), "wb") as f:
            f.write(distinct[i % DISTINCT][0])
    kb = [len(d) / 1024 for d, _ in distinct]
    mp = [m for _, m in distinct]
    return {"images": n, "mp": [round(min(mp), 2), round(float(np.mean(mp)), 2), round(max(mp), 2)],
            "kb": [round(min(kb)), round(float(np.mean(kb))), round(max(kb))]}


def run_bench(n: int, ms_per_image: float, unit_size: int, batch_size: int, num_cpus: int, methods: tuple[str, ...],
              folder: str, in_actor: bool = False, sizes=PHOTO_SIZES) -> dict:
    """One run of the job over a fresh lake of `n` photos under `folder`; returns the report's figures.
    `in_actor`: the actor encodes and writes itself (the layout before the CPU stage, for comparison; its
    ``model`` CPU then includes encoding and writing)."""
    import ray

    import jobs.common.actor as actor_module
    import jobs.segment.dataset as dataset_module
    from jobs.common.config import JobConfig
    from jobs.common.runner import run
    from jobs.segment.dataset import build_dataset
    from jobs.segment.run import SegmentJob

    lake, out, stages = (os.path.join(folder, name) for name in ("lake", "out", "stages"))
    photos = make_lake(lake, n, sizes)
    os.makedirs(stages)
    os.environ[STAGES_ENV], os.environ[MS_ENV] = stages, str(ms_per_image)  # before ray.init: workers inherit
    # the stand-in actor takes 1 logical CPU (it sleeps, as a GPU actor waits); the tasks get num_cpus
    ray.init(address="local", num_cpus=num_cpus + 1, num_gpus=1, include_dashboard=False, log_to_driver=False)
    vocab = ", ".join(f"class{k}" for k in range(1, CLASSES + 1))
    config = JobConfig(input=lake, output=out, vocab=vocab, model="tiny", batch_size=batch_size, unit_size=unit_size,
                       methods=methods, gpus_per_actor=1.0, cpus_per_actor=1.0, device="cpu", max_error_fraction=0.0)
    compactions = []

    class StandInJob(SegmentJob):
        def dataset(self, config, checked, units, resources, target):
            return build_dataset(units, config, resources, checked.vocab, target, actor_class=StandInUDF,
                                 encode_stage=not in_actor)

    def counted_commit_stream(*args):
        compactions.append(real_commit_stream(*args))
        return compactions[-1]

    import jobs.common.ray_env as ray_env

    real_commit_stream = ray_env.commit_stream
    patches = [(dataset_module, "decode_batch", timed_decode), (actor_module, "encode_and_write", timed_encode_and_write),
               (ray_env, "commit_stream", counted_commit_stream)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    units = math.ceil(n / unit_size)

    def units_done() -> int:  # units through the stand-in so far: its device time is what efficiency measures
        return sum(int(f.split("-")[1]) for f in os.listdir(stages) if f.startswith("model-")) // unit_size

    try:
        for module, name, value in patches:
            setattr(module, name, value)
        t0, c0 = time.perf_counter(), cpu_s()
        with Sampler(units_done) as sampler, contextlib.redirect_stdout(io.StringIO()) as printed:
            code = run(StandInJob(), config)
        wall, driver_cpu = time.perf_counter() - t0, cpu_s() - c0
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        ray.shutdown()
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    if code != 0:
        raise RuntimeError(f"the job exited {code}: {printed.getvalue()[-2000:]} {manifest.get('error')}")
    records = [json.load(open(os.path.join(stages, f))) for f in os.listdir(stages)]
    cpu = {}
    for stage in ("decode", "model", "encode", "write"):
        mine = [r for r in records if r["stage"] == stage]
        images = sum(r["images"] for r in mine)
        cpu[stage] = round(1000 * sum(r["cpu_s"] for r in mine) / images, 2) if images else None
    window = steady_window(sampler.samples, units, 0.1, 0.8)
    rate = 1000 / ms_per_image if ms_per_image > 0 else None
    steady = None
    if window:
        seconds, cpu_window, done = window
        images = min(n, done * unit_size)
        steady = {"images_per_s": round(images / seconds, 1), "window_s": round(seconds, 2)}
        cpu["driver"] = round(1000 * cpu_window / images, 2)
    else:
        cpu["driver"] = round(1000 * driver_cpu / n, 2)
    achieved = steady["images_per_s"] if steady else n / wall
    cluster_ms = sum(cpu[s] or 0.0 for s in ("decode", "model", "encode", "write"))
    sizing = {str(r): cpus_per_gpu(cluster_ms, r) for r in RATES}
    return {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "layout": "in-actor" if in_actor else "stage",
            "load_average": round(os.getloadavg()[0], 1), "photos": photos, "methods": list(methods),
            "unit_size": unit_size, "batch_size": batch_size, "ms_per_image": ms_per_image, "stand_in_images_per_s": rate,
            "images_per_s": round(achieved, 1), "whole_run_images_per_s": round(n / wall, 1), "steady": steady,
            "pipeline_efficiency": round(achieved / rate, 3) if rate else None, "cpu_ms_per_image": cpu,
            "cluster_cpu_ms_per_image": round(cluster_ms, 2), "compactions": compactions[0] if compactions else None,
            "commit_entries": manifest["counts"]["commit_entries"], "units": units, "cpus_per_gpu": sizing}


def cpus_per_gpu(cluster_ms: float, rate: float) -> int:
    """CPUs one GPU needs at `rate` images/s: the cluster stages' CPU (`cluster_ms` per image) at that rate
    over :data:`TARGET_UTILISATION`, plus one for the actor itself (it launches the GPU work)."""
    return math.ceil(cluster_ms * rate / 1000 / TARGET_UTILISATION) + 1


def report(r: dict) -> str:
    c = r["cpu_ms_per_image"]
    lines = [
        f"pipeline: {r['photos']['images']} photos ({r['photos']['mp'][0]}-{r['photos']['mp'][2]} MP, mean "
        f"{r['photos']['mp'][1]}; {r['photos']['kb'][0]}-{r['photos']['kb'][2]} KB), methods {', '.join(r['methods'])}, "
        f"unit {r['unit_size']}, {r['cores']} cores (load average {r['load_average']}), {r['date']}; encoding: {r['layout']}",
        f"stand-in: {r['ms_per_image']} ms per image = {r['stand_in_images_per_s']} images/s; achieved "
        f"{r['images_per_s']} images/s through it (steady state; whole run end to end {r['whole_run_images_per_s']})",
        f"pipeline efficiency: {r['pipeline_efficiency']}",
        "CPU ms per image: " + ", ".join(f"{s} {c[s]}" for s in ("decode", "model", "encode", "write", "driver")),
        f"cluster CPU per image (decode + model + encode + write): {r['cluster_cpu_ms_per_image']} ms",
        f"compactions: {r['compactions']} of {r['units']} units; commit entries: {r['commit_entries']}",
        "CPUs per GPU: " + ", ".join(f"{v} for {k} images/s" for k, v in r["cpus_per_gpu"].items())
        + f" (at {TARGET_UTILISATION:.0%} use, + 1 for the actor)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1024, help="photos in the lake (default 1024)")
    p.add_argument("--ms-per-image", type=float, default=40.0, help="the stand-in's device time per image (default 40)")
    p.add_argument("--unit-size", type=int, default=128, help="images per unit (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="images per stand-in call (default 16)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray runtime for the tasks (default 2)")
    p.add_argument("--method", action="append", dest="methods", help="methods (repeat; default diffsegmenter)")
    p.add_argument("--photo-size", action="append", metavar="HxW", help="photo sizes of the lake (repeat; default "
                   "480x640, 768x1024, 1080x1620, 1382x2048)")
    p.add_argument("--in-actor", action="store_true", help="the actor encodes and writes (the layout before the CPU "
                   "stage), for comparison")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = p.parse_args(argv)
    sizes = tuple(tuple(int(v) for v in s.lower().split("x")) for s in args.photo_size) if args.photo_size else PHOTO_SIZES
    folder = tempfile.mkdtemp(prefix="bench-pipeline-")
    try:
        result = run_bench(args.images, args.ms_per_image, args.unit_size, args.batch_size, args.num_cpus,
                           tuple(args.methods or ("diffsegmenter",)), folder, in_actor=args.in_actor, sizes=sizes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(report(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
