"""Design comparisons (``python -m jobs.bench --designs``), side by side in one run on the same images:
diffseg's capture (queries and keys kept, fused propagation) against a naive capture that materialises
per-head self-attention probabilities, and the ``joint`` context against ``per_class`` (one U-Net row per
class, the DiffSegmenter paper's protocol). Each run times decode -> Segmenter -> mask encoding.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from jobs.bench.floor import peak_rss_mb


@contextmanager
def patched_capture(naive: bool):
    """Temporarily makes the Segmenter use the naive capture (benchmark comparison only)."""
    import diffseg.segmenter as seg_mod

    original = seg_mod.capture
    if naive:
        from jobs.bench.naive_capture import naive_capture

        seg_mod.capture = naive_capture
    try:
        yield
    finally:
        seg_mod.capture = original


def run_config(pipe, vocab, args, jpegs, context="joint", naive=False) -> dict:
    """Times `args.iters` batches through decode -> Segmenter -> mask encoding; returns figures."""
    import torch

    from diffseg import Segmenter
    from diffseg.codecs.images import decode_image
    from diffseg.codecs.masks import encode_segmentation

    with patched_capture(naive):  # a Segmenter makes its capture when it is built
        seg = Segmenter(pipe, vocab, method=args.method, resolution=args.resolution, context=context)
    cuda = pipe.device.type == "cuda"
    bs = args.batch_size
    for it in range(args.iters + 1):  # the first batch warms up kernels and allocators
        if it == 1:
            seg.timings.clear()
            stage = {"decode": 0.0, "encode_masks": 0.0}
            if cuda:
                torch.cuda.reset_peak_memory_stats(pipe.device)
            start = time.perf_counter()
        batch = jpegs[it * bs : (it + 1) * bs] or jpegs[:bs]
        t0 = time.perf_counter()
        images = [decode_image(b) for b in batch]
        t1 = time.perf_counter()
        results = seg.segment_method(images, keys=[f"img{it}-{j}" for j in range(len(images))])
        t2 = time.perf_counter()
        for r in results:
            encode_segmentation(r, vocab.names)
        t3 = time.perf_counter()
        if it >= 1:
            stage["decode"] += t1 - t0
            stage["encode_masks"] += t3 - t2
    total = time.perf_counter() - start
    n = args.iters * bs
    stage.update(seg.timings)
    return {
        "context": context,
        "capture": "naive" if naive else "diffseg",
        "images": n,
        "images_per_s": n / total,
        "seconds_per_image": {k: v / n for k, v in stage.items()},
        "peak_gpu_mb": torch.cuda.max_memory_allocated(pipe.device) / 2**20 if cuda else None,
        "peak_host_rss_mb": peak_rss_mb(),
    }


def format_row(r: dict) -> str:
    s = r["seconds_per_image"]
    stages = " ".join(f"{k}={v * 1000:.0f}ms" for k, v in s.items())
    gpu = f" gpu_peak={r['peak_gpu_mb']:.0f}MB" if r["peak_gpu_mb"] is not None else ""
    return f"  {r['capture']:7s} {r['context']:9s} {r['images_per_s']:.3f} img/s  {stages}{gpu} host_rss_peak={r['peak_host_rss_mb']:.0f}MB"


def run_designs(pipe, vocab, args, jpegs, base: dict, skip: set, figures: dict) -> None:
    """Prints (and adds to figures["runs"]) the naive-capture and per_class runs against `base`."""
    import torch

    if "capture" not in skip:
        try:
            naive = run_config(pipe, vocab, args, jpegs, naive=True)
            figures["runs"].append(naive)
            print(format_row(naive), flush=True)
            ratio = naive["seconds_per_image"]["unet_capture"] / base["seconds_per_image"]["unet_capture"]
            print(f"  naive/diffseg U-Net+capture time: {ratio:.2f}x", end="")
            if base["peak_gpu_mb"]:
                print(f"; peak GPU memory: {naive['peak_gpu_mb'] / base['peak_gpu_mb']:.2f}x", end="")
            print(f"; method time: {naive['seconds_per_image']['method'] / base['seconds_per_image']['method']:.2f}x")
        except torch.cuda.OutOfMemoryError:
            print("  naive capture: out of GPU memory at this batch size (diffseg's capture ran)")
    if "context" not in skip:
        per_class = run_config(pipe, vocab, args, jpegs, context="per_class")
        figures["runs"].append(per_class)
        print(format_row(per_class), flush=True)
        print(f"  per_class/joint time per image: {base['images_per_s'] / per_class['images_per_s']:.2f}x "
              f"({len(vocab)} classes: {len(vocab)} U-Net rows per image instead of 1)")
