"""``python -m jobs.bench``: time the Segmenter stage by stage; compare designs side by side in one run.

No Ray needed (it runs on a lent GPU machine with torch, diffusers and transformers only). Prints:

- images/s and seconds per image for each stage (decode, VAE encode, U-Net + capture, method,
  labels, encode masks + statistics), peak memory (GPU allocated, host RSS), FLOPs per image and the
  share of the device's peak (``--peak-tflops``, or a table of known GPUs);
- side by side, same images, same run: diffseg's capture (Q/K kept, SDPA propagation) against a naive
  capture that materialises per-head self-attention probabilities; and the ``joint`` context against
  ``per_class`` for a ``--vocab-size`` class vocabulary. Ratios are printed.

Defaults are CPU-friendly: batch 1 at 256 px on the CPU, 512 px on a GPU. The model defaults to the
full-size SD 1.5 architecture with random weights (the same timing as real weights).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import time
from contextlib import contextmanager

for _k, _v in {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_k, _v)

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) of common GPUs, for the "share of peak" line.
KNOWN_PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "V100": 125.0, "T4": 65.0}
CLASSES20 = ("aeroplane bicycle bird boat bottle bus car cat chair cow dining-table dog horse motorbike person "
             "potted-plant sheep sofa train tv-monitor").split()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sd15-random", help="sd15-random, sd21-random, tiny, or a checkpoint")
    p.add_argument("--resolution", type=int, default=None, help="default: 512 on GPU, 256 on CPU")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dtype", default="auto", help="auto = bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default=None)
    p.add_argument("--iters", type=int, default=3, help="timed batches per configuration (after 1 warm-up)")
    p.add_argument("--vocab-size", type=int, default=20, help="classes in the vocabulary (max 20 built in)")
    p.add_argument("--method", default="diffsegmenter")
    p.add_argument("--skip", default="", help="comma list of comparisons to skip: capture, context")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for the share-of-peak line")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--scaling", type=int, default=None, metavar="N",
                   help="instead: the Ray job on N and 10xN images (peak RSS, img/s) and an in-process loop on 10xN")
    return p


def sample_jpegs(n: int) -> list[bytes]:
    """n JPEG files made from scikit-image's bundled photos (cycled), as the job would read them."""
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(photos[i % len(photos)]).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def host_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    from diffseg.codecs.masks import compute_class_stats, encode_label_png

    with patched_capture(naive):  # a Segmenter makes its capture when it is built
        seg = Segmenter(pipe, vocab, method=args.method, resolution=args.resolution, context=context)
    cuda = pipe.device.type == "cuda"
    bs = args.batch_size
    if True:
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
                encode_label_png(r.label_map)
                compute_class_stats(r.label_map, vocab.names, r.scores)
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
        "peak_host_rss_mb": host_peak_rss_mb(),
    }


def flops_per_image(pipe, vocab, args) -> float:
    """FLOPs of VAE encode + U-Net forward for one image (torch's FLOP counter)."""
    import numpy as np
    from torch.utils.flop_counter import FlopCounterMode

    from diffseg import Segmenter

    seg = Segmenter(pipe, vocab, method=args.method, resolution=args.resolution)
    img = np.zeros((args.resolution, args.resolution, 3), dtype=np.uint8)
    with FlopCounterMode(display=False) as counter:
        seg.capture_maps([img], ["flops"])
    return float(counter.get_total_flops())


def device_peak(pipe, override: float | None) -> float | None:
    import torch

    if override:
        return override * 1e12
    if pipe.device.type == "cuda":
        name = torch.cuda.get_device_name(pipe.device)
        for key, tflops in KNOWN_PEAKS.items():
            if key in name:
                return tflops * 1e12
    return None


def format_row(r: dict) -> str:
    s = r["seconds_per_image"]
    stages = " ".join(f"{k}={v * 1000:.0f}ms" for k, v in s.items())
    gpu = f" gpu_peak={r['peak_gpu_mb']:.0f}MB" if r["peak_gpu_mb"] is not None else ""
    return f"  {r['capture']:7s} {r['context']:9s} {r['images_per_s']:.3f} img/s  {stages}{gpu} host_rss_peak={r['peak_host_rss_mb']:.0f}MB"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from diffseg import Vocabulary, load_pipeline
    from diffseg.model import resolve_device

    device = resolve_device(args.device)
    if args.resolution is None:
        args.resolution = 512 if device.type == "cuda" else 256
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    print(f"loading {args.model} on {device} ({dtype}) ...", flush=True)
    pipe = load_pipeline(args.model, dtype=dtype, device=device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    vocab = Vocabulary([c.replace("-", " ") for c in CLASSES20[: args.vocab_size]])
    if args.scaling:
        from jobs.bench.scaling import run_scaling

        args.vocab_spec = ", ".join(vocab.names)
        print(f"scaling: {args.model} {args.resolution}px batch={args.batch_size} on {device}, {len(vocab)} classes")
        figures = run_scaling(args, sample_jpegs(4))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(figures, f, indent=1)
        return 0
    jpegs = sample_jpegs(args.batch_size * (args.iters + 1))
    skip = set(filter(None, args.skip.split(",")))
    figures = {"model": args.model, "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "dtype": dtype, "resolution": args.resolution, "batch_size": args.batch_size, "vocab_size": len(vocab),
               "method": args.method, "torch": torch.__version__, "runs": []}
    print(f"{args.model} {args.resolution}px batch={args.batch_size} {dtype} on {figures['device_name']}, "
          f"{len(vocab)} classes, method={args.method}, {args.iters} timed batches each")
    base = run_config(pipe, vocab, args, jpegs)
    figures["runs"].append(base)
    print(format_row(base), flush=True)
    flops = flops_per_image(pipe, vocab, args)
    peak = device_peak(pipe, args.peak_tflops)
    figures["flops_per_image"] = flops
    share = flops * base["images_per_s"] / peak if peak else None
    figures["share_of_peak"] = share
    print(f"  FLOPs/image (VAE encode + U-Net): {flops / 1e9:.1f} GFLOP; share of device peak: "
          + (f"{share:.1%} of {peak / 1e12:.0f} TFLOP/s" if share is not None else "n/a (pass --peak-tflops)"))
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
