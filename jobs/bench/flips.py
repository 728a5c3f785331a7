"""``python -m jobs.bench.flips``: label flips of reduced-precision propagation against fp32.

Propagation (m = S·c, diffseg.selfattention.SelfAttention.propagate) runs its fused attention kernel
in fp32 (docs/benchmarks.md "Propagation precision" says why). This measures what a reduced dtype would
cost in labels: for each photo, ONE capture (the model in ``--dtype``, bf16 by default, so queries and
keys are what a bf16 U-Net gives), then every method that reads self-attention (DiffSegmenter's
propagation, SeeDiff's cosine growth) scored on those same maps with propagation in each dtype of
``--propagation`` and in fp32. Flips = pixels whose label differs between the two label maps, at the
photo's size (as the Segmenter returns them), over all pixels; fp64 against fp32 is the noise floor.
bf16 on a CPU is a stand-in for bf16 on a GPU: the same rounding of inputs, probabilities and output
(flash kernels on both accumulate in fp32), not the same kernels.

Photos: jobs.bench.photos (synthetic, numpy + Pillow), 20 classes. Random-weight models give
meaningless masks, so the printout also gives how many labels each fp32 map holds: a method whose
maps are all one label would hide flips.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64"}
PROPAGATING = ("diffsegmenter", "seediff")  # the methods that read self-attention


def dtype_list(text: str) -> list[str]:
    """argparse type of --propagation: a comma list of DTYPES names."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in DTYPES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma list of {', '.join(DTYPES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.flips", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,sd15-random", help="comma list (default: tiny,sd15-random)")
    p.add_argument("--resolution", type=int, default=256, help="model input side (default 256: CPU-sized)")
    p.add_argument("--images", type=int, default=4, help="photos per model (default 4)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="the model's dtype (default bf16)")
    p.add_argument("--propagation", default="bf16,fp16,fp64", type=dtype_list,
                   help="comma list of propagation dtypes compared with fp32 (default bf16,fp16,fp64; fp64: how far "
                   "fp32 itself is from exact, the noise floor)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--vocab-size", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="CPU torch threads (default: every core)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def label_flips(seg, maps, spans, size, method: str, dtype) -> dict:
    """Scores of `method` on `maps` with propagation in `dtype` and in fp32 -> {pixels, flips,
    classes (present in the fp32 map, background included), max_score_diff}."""
    import numpy as np
    import torch

    from diffseg.segmentation import scores_to_label_map

    def labels(propagation_dtype):
        chosen = dataclasses.replace(maps, self_attn={r: sa.in_dtype(propagation_dtype)
                                                      for r, sa in maps.self_attn.items()})
        scores = seg.fns[method](chosen, spans, seg.params[method]).float()[0]
        return scores, scores_to_label_map(scores, size, seg.config.max_label_side, seg.label_dtype)

    reduced_scores, reduced = labels(dtype)
    exact_scores, exact = labels(torch.float32)
    finite = torch.isfinite(exact_scores) & torch.isfinite(reduced_scores)
    diff = (reduced_scores - exact_scores)[finite].abs().max().item() if finite.any() else 0.0
    return {"pixels": int(exact.size), "flips": int((reduced != exact).sum()),
            "classes": len(np.unique(exact)), "max_score_diff": diff}


def measure(model: str, args) -> dict:
    """{propagation dtype: {method: totals over the photos}} for one model."""
    import torch

    from diffseg import Segmenter, Vocabulary
    from diffseg.codecs.images import decode_image
    from diffseg.runtime import choose_runtime, load_runtime_pipeline
    from jobs.bench.cli import CLASSES20
    from jobs.bench.photos import sample_jpegs

    pipe = load_runtime_pipeline(model, choose_runtime(args.device, args.dtype))
    vocab = Vocabulary([c.replace("-", " ") for c in CLASSES20[: args.vocab_size]])
    seg = Segmenter(pipe, vocab, method=list(PROPAGATING), resolution=args.resolution)
    totals = {name: {m: {"pixels": 0, "flips": 0, "classes": [], "max_score_diff": 0.0} for m in PROPAGATING}
              for name in args.propagation}
    with torch.no_grad():
        for i, jpeg in enumerate(sample_jpegs(args.images)):
            image = decode_image(jpeg)
            maps, spans = seg.capture_maps([image], [f"flips{i}"])
            for name in args.propagation:
                for m in PROPAGATING:
                    one = label_flips(seg, maps, spans, image.shape[:2], m, getattr(torch, DTYPES[name]))
                    total = totals[name][m]
                    total["pixels"] += one["pixels"]
                    total["flips"] += one["flips"]
                    total["classes"].append(one["classes"])
                    total["max_score_diff"] = max(total["max_score_diff"], one["max_score_diff"])
    return totals


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    print(f"label flips: propagation in {', '.join(args.propagation)} vs fp32 on the same capture (model in "
          f"{args.dtype} on {args.device}), {args.images} photos at {args.resolution} px, {args.vocab_size} classes")
    print(f"  {'model':12s} {'propagation':11s} {'method':14s} {'pixels':>9s} {'flips':>7s} {'share':>8s} "
          f"{'max |score diff|':>17s}  labels per map (fp32)")
    figures = {"dtype": args.dtype, "propagation": args.propagation, "resolution": args.resolution,
               "images": args.images, "device": args.device, "torch": torch.__version__, "models": {}}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        figures["models"][model] = by_dtype = measure(model, args)
        for name, totals in by_dtype.items():
            for method, t in totals.items():
                t["share"] = t["flips"] / max(1, t["pixels"])
                print(f"  {model:12s} {name:11s} {method:14s} {t['pixels']:9d} {t['flips']:7d} {t['share']:8.4%} "
                      f"{t['max_score_diff']:17.2e}  {t['classes']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
