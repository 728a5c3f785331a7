"""Scaling mode of the benchmark (``python -m jobs.bench --scaling N``): the Ray job at N and 10 x N
images, and the job against a plain in-process Segmenter loop on the same images.

Each job run is a subprocess (``python -m jobs.segment`` on a local lake, a local Ray runtime it starts
itself); its peak memory is the peak, sampled every 0.2 s, of the summed RSS of its whole process tree
(driver, Ray's services and workers), read with psutil. Streaming must keep that flat from N to
10 x N. The in-process loop decodes, segments in batches and encodes masks and statistics exactly as
the actor does, with no Ray: the ratio of their throughputs is the job's overhead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def tree_rss_mb(root_pid: int) -> float:
    """Summed resident memory (MB) of `root_pid` and all its descendants, read with psutil; a process
    that has gone (or cannot be read) counts as nothing."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def write_lake(folder: Path, n: int, jpegs: list[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img{i:06d}.jpg").write_bytes(jpegs[i % len(jpegs)])


def run_job(lake: Path, out: Path, args) -> dict:
    """Runs the job as a subprocess; returns wall time, images/s and peak tree RSS."""
    cmd = [sys.executable, "-m", "jobs.segment", str(lake), str(out), "--vocab", args.vocab_spec,
           "--model", args.model, "--resolution", str(args.resolution), "--batch-size", str(args.batch_size),
           "--num-cpus", str(os.cpu_count() or 2), "--object-store-mb", "512", "-q"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"job exited {proc.returncode}:\n{output[-2000:]}")
    n = len(list(lake.iterdir()))
    return {"images": n, "seconds": wall, "images_per_s": n / wall, "peak_tree_rss_mb": peak[0]}


def run_loop(lake: Path, args) -> dict:
    """The same work in-process, no Ray: decode, Segmenter in batches, encode masks and stats."""
    from diffseg import Segmenter, Vocabulary
    from diffseg.codecs.images import decode_image, resize_square
    from diffseg.codecs.masks import encode_segmentation
    from diffseg.runtime import load_runtime_pipeline

    vocab = Vocabulary.from_spec(args.vocab_spec)
    pipe = load_runtime_pipeline(args.model, args.runtime)  # as the bench's own (diffseg.runtime)
    start = time.perf_counter()  # model loading counted for the loop too: the job loads it in its actor
    seg = Segmenter(pipe, vocab, method="diffsegmenter", resolution=args.resolution)
    files = sorted(lake.iterdir())
    for i in range(0, len(files), args.batch_size):
        batch = files[i : i + args.batch_size]
        images = [decode_image(p.read_bytes(), str(p)) for p in batch]
        small = [resize_square(im, args.resolution) for im in images]
        results = seg.segment_method(small, keys=[str(p) for p in batch], sizes=[im.shape[:2] for im in images])
        for r in results:
            encode_segmentation(r, vocab.names)  # the segment actor's encoder
    wall = time.perf_counter() - start
    return {"images": len(files), "seconds": wall, "images_per_s": len(files) / wall}


def run_scaling(args, jpegs: list[bytes]) -> dict:
    """N and 10 x N through the job, N through the loop; prints and returns the figures."""
    n = args.scaling
    figures = {}
    with tempfile.TemporaryDirectory(prefix="diffseg-scaling-") as tmp:
        tmp = Path(tmp)
        for label, count in (("job_n", n), ("job_10n", 10 * n)):
            lake = tmp / f"lake{count}"
            write_lake(lake, count, jpegs)
            figures[label] = run_job(lake, tmp / f"out{count}", args)
            r = figures[label]
            print(f"  job  {count:6d} images: {r['images_per_s']:.2f} img/s ({r['seconds']:.1f} s), "
                  f"peak RSS of the job's process tree {r['peak_tree_rss_mb']:.0f} MB", flush=True)
        figures["loop_10n"] = run_loop(tmp / f"lake{10 * n}", args)
        r = figures["loop_10n"]
        print(f"  loop {10 * n:6d} images: {r['images_per_s']:.2f} img/s ({r['seconds']:.1f} s), in-process, no Ray")
    rss = figures["job_10n"]["peak_tree_rss_mb"] / figures["job_n"]["peak_tree_rss_mb"]
    overhead = figures["loop_10n"]["images_per_s"] / figures["job_10n"]["images_per_s"]
    print(f"  peak RSS 10N/N: {rss:.2f}x (flat = streaming); loop/job throughput at 10N: {overhead:.2f}x")
    figures["rss_ratio_10n_over_n"], figures["loop_over_job_throughput"] = rss, overhead
    return figures
