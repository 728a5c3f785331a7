"""``python -m jobs.bench``: how far a Segmenter call is from the physical floor; design comparisons.

No Ray needed (it runs on a lent GPU machine with torch, diffusers and transformers only). Modes:

- default (jobs.bench.floor): the floor (VAE encode + one plain U-Net forward per image) and the
  Segmenter for diffsegmenter, seediff, maskdiffusion and all three from one pass, side by side on the
  same images, each as a ratio to the floor (time and peak memory), with images/s, FLOPs per image
  and the share of the device's bf16/fp16 peak (``--peak-tflops``, or a table of known GPUs);
- ``--designs`` (jobs.bench.designs): stage times of decode -> Segmenter -> mask encoding, diffseg's
  capture against a naive one that materialises per-head self-attention, ``joint`` against ``per_class``;
- ``--scaling N`` (jobs.bench.scaling): the Ray job at N and 10 x N images against an in-process loop.

The model loads as the job's actors load it (diffseg.runtime: bf16 and channels_last on CUDA). Label
flips of reduced-precision propagation have their own command, ``python -m jobs.bench.flips``.

CPU defaults: batch 1 at 256 px (pass --resolution 512 for the papers' size). The model defaults to
the full-size SD 1.5 architecture with random weights (the same timing as real weights).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from diffseg.argtypes import CommandParser

# No HF_HUB_OFFLINE here: models never touch a hub, and setting it breaks `datasets` on s3:// in the
# same process (the scaling mode runs the job in-process).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

EPILOG = """\
examples:
  # the floor and the three methods on a lent GPU, the papers' size (SD 1.5 architecture, random weights)
  python -m jobs.bench --resolution 512 --batch-size 8 --json bench.json

  # CPU, steadier on shared cores: one thread, two configurations
  python -m jobs.bench --model tiny --threads 1 --configs diffsegmenter,maskdiffusion

  # design comparisons (naive capture, joint vs per_class), then the Ray job's scaling on 20 and 200 images
  python -m jobs.bench --designs --method seediff
  python -m jobs.bench --scaling 20 --model tiny

exit codes: 0 the figures were printed (and written to --json), 1 a run failed (its error is printed),
2 bad option or a model that cannot be loaded.
"""

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) of common GPUs, for the "share of peak" line.
KNOWN_PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "V100": 125.0, "T4": 65.0}
CLASSES20 = ("aeroplane bicycle bird boat bottle bus car cat chair cow dining-table dog horse motorbike person "
             "potted-plant sheep sofa train tv-monitor").split()


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m jobs.bench", description=__doc__, epilog=EPILOG,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sd15-random", help="sd15-random, sd21-random, tiny, or a checkpoint")
    p.add_argument("--resolution", type=int, default=None, help="default: 512 on GPU, 256 on CPU")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dtype", default="auto", help="auto = bf16 on GPU, fp32 on CPU (diffseg.runtime, as the job)")
    p.add_argument("--device", default=None)
    p.add_argument("--iters", type=int, default=3, help="timed rounds per configuration (after 1 warm-up)")
    p.add_argument("--vocab-size", type=int, default=20, help="classes in the vocabulary (max 20 built in)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU: torch threads (default: every core; 1 is steadier when other work shares the cores)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="U-Net and VAE in channels_last memory format (default: on GPU only)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU: TF32 for fp32 matmuls and convolutions (default off: diffseg.runtime says why)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net's ResNet and feed-forward blocks, once for every configuration")
    p.add_argument("--configs", type=lambda v: [c.strip() for c in v.split(",") if c.strip()], default=None,
                   help="comma list of the configurations timed against the floor (default: all of "
                        "diffsegmenter, seediff, maskdiffusion, 'all three')")
    p.add_argument("--designs", action="store_true", help="instead: the design comparisons (naive capture, per_class)")
    p.add_argument("--method", default="diffsegmenter", help="--designs: the method timed")
    p.add_argument("--skip", default="", help="--designs: comma list of comparisons to skip: capture, context")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for the share-of-peak line")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--scaling", type=int, default=None, metavar="N",
                   help="instead: the Ray job on N and 10xN images (peak RSS, img/s) and an in-process loop on 10xN")
    p.add_argument("--null-model", action="store_true",
                   help="with --scaling N: the whole job with a model that returns fixed masks, beside Ray Data's own "
                   "map_batches -> write_parquet of the same rows (driver CPU, bytes and RSS per image; "
                   "jobs.bench.null_model, which also measures --replan)")
    return p


def flops_per_image(pipe, vocab, args) -> float:
    """FLOPs of the floor for one image: VAE encode + one U-Net forward (torch's FLOP counter)."""
    import numpy as np
    from torch.utils.flop_counter import FlopCounterMode

    from diffseg import Segmenter

    seg = Segmenter(pipe, vocab, resolution=args.resolution)
    img = np.zeros((args.resolution, args.resolution, 3), dtype=np.uint8)
    with FlopCounterMode(display=False) as counter:
        seg.forward_plain([img], ["flops"])
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.null_model:
        from jobs.bench import null_model

        return null_model.main(["--scaling", str(args.scaling or 1000)])
    import torch

    from diffseg import Vocabulary
    from diffseg.codecs.images import decode_image
    from diffseg.model import ModelLoadError
    from diffseg.runtime import choose_runtime, load_runtime_pipeline
    from jobs.bench.photos import sample_jpegs

    try:
        runtime = choose_runtime(args.device, args.dtype, args.channels_last, args.tf32, args.compile)
        cuda = runtime.device.type == "cuda"
        if args.resolution is None:
            args.resolution = 512 if cuda else 256
        print(f"loading {args.model} ({runtime.describe()}) ...", flush=True)
        pipe = load_runtime_pipeline(args.model, runtime)
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.runtime = runtime  # the scaling loop loads its own pipeline the same way
    device, dtype, channels_last = runtime.device, runtime.dtype_name, runtime.channels_last
    if not cuda:
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    vocab = Vocabulary([c.replace("-", " ") for c in CLASSES20[: args.vocab_size]])
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    figures = {"model": args.model, "device": str(device), "device_name": device_name, "dtype": dtype,
               "resolution": args.resolution, "batch_size": args.batch_size, "vocab_size": len(vocab),
               "channels_last": channels_last, "tf32": runtime.tf32, "compile": args.compile,
               "torch": torch.__version__}
    setup = (f"{args.model} {args.resolution}px batch={args.batch_size} {dtype} on {device_name} "
             f"({torch.get_num_threads()} threads), {len(vocab)} classes, "
             f"channels_last={channels_last} tf32={runtime.tf32} compile={args.compile}")
    if args.scaling:
        from jobs.bench.scaling import run_scaling

        args.vocab_spec = ", ".join(vocab.names)
        print(f"scaling: {setup}")
        figures["scaling"] = run_scaling(args, sample_jpegs(4))
    elif args.designs:
        from jobs.bench.designs import format_row, run_config, run_designs

        jpegs = sample_jpegs(args.batch_size * (args.iters + 1))
        print(f"designs: {setup}, method={args.method}, {args.iters} timed batches each")
        base = run_config(pipe, vocab, args, jpegs)
        figures["runs"] = [base]
        print(format_row(base), flush=True)
        run_designs(pipe, vocab, args, jpegs, base, set(filter(None, args.skip.split(","))), figures)
    else:
        from jobs.bench.floor import count_host_syncs, print_floor, run_floor

        print(f"floor: {setup}; best of {args.iters} interleaved rounds after a warm-up", flush=True)
        images = [decode_image(b) for b in sample_jpegs(args.batch_size * args.iters)]
        figures["configs"] = run_floor(pipe, vocab, args, images)
        print_floor(figures["configs"], device.type)
        syncs = count_host_syncs(pipe, vocab, args, images)
        figures["host_syncs_per_capture_forward"] = syncs
        if syncs is not None:
            print(f"  implicit host syncs during one capture forward (all three methods): {syncs}")
        flops = flops_per_image(pipe, vocab, args)
        peak = device_peak(pipe, args.peak_tflops)
        named = "diffsegmenter" if "diffsegmenter" in figures["configs"] else list(figures["configs"])[-1]
        rate = figures["configs"][named]["images_per_s"]
        figures["flops_per_image"], figures["share_of_peak"] = flops, (flops * rate / peak if peak else None)
        print(f"  floor FLOPs/image (VAE encode + U-Net forward): {flops / 1e9:.1f} GFLOP; {named}: "
              f"{rate:.2f} img/s = " + (f"{figures['share_of_peak']:.1%} of the device's {peak / 1e12:.0f} TFLOP/s peak"
                                        if peak else f"{flops * rate / 1e9:.0f} GFLOP/s (pass --peak-tflops for a share)"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
