"""``python -m jobs.synthesize OUTPUT --classes VOCAB --per-class N --model MODEL``: synthetic annotated data.

SeeDiff's original use, as a Ray batch job: for every class and seed, generate an image from
"a photo of a {class}" (SeeDiff's recipe: guidance 7, 50 DDIM steps) with the frozen Stable Diffusion pipeline, read its mask from the attention
averaged over the denoising steps (diffseg.generate), and write (image, mask) pairs as a Parquet
training set. Thin entry point: argument parsing; the flow is jobs.synthesize.run, the work items and
units jobs.synthesize.config, the actor jobs.synthesize.actor, the tables diffseg.lake.schemas. docs/synthesize.md
explains the output and how to load it.
"""

from __future__ import annotations

import argparse
import sys

from diffseg.argtypes import CommandParser
from jobs.common.cli import add_actor_options, add_common_options, run_main, vocab_spec
from jobs.common.cluster_options import cluster_fields
from jobs.synthesize.config import SynthConfig

EXAMPLES = """\
examples:
  # local smoke test: the offline tiny model (random weights: meaningless images and masks)
  python -m jobs.synthesize ./synth/ --classes "cat, dog, potted plant" --per-class 4 --model tiny \\
      --steps 2 --resolution 64

  # 1000 pairs per class with SD 1.5 on 4 GPUs, via Ray Jobs
  ray job submit --runtime-env cluster/runtime-env.yaml -- python -m jobs.synthesize s3://lake/synth/ \\
      --classes s3://lake/voc-classes.txt --per-class 1000 --model s3://models/stable-diffusion-v1-5/ \\
      --actors 4 --gpus-per-actor 1 --batch-size 8

exit codes: 0 done (or nothing to do), 1 run failed (rerun to finish), 2 bad option or refused run,
3 finished but more errors than --max-error-fraction.
Rerunning the same command is safe: committed (class, seed) samples are skipped, a killed run's
leftovers removed. Raising --per-class later generates only the new seeds.
"""


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m jobs.synthesize",
        description="Generate (image, mask) training pairs from class names alone (SeeDiff): Stable Diffusion "
        "generates each image, and the mask is read from its attention averaged over the denoising steps. A Ray "
        "Data batch job: exactly once per (class, seed), resumable. Writes a Parquet samples/ table (image and "
        "mask PNGs, class, prompt, seed, mask statistics), errors/ and manifest.json under OUTPUT.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("output", metavar="OUTPUT", help="folder or prefix (local, file://, s3://, gs://) for samples/, "
                   "errors/ and manifest.json")
    p.add_argument("--classes", required=True, metavar="VOCAB", type=vocab_spec,
                   help="class names: a file (path or URL) with one class per line, or a comma-separated list "
                   "such as 'cat, dog, potted plant'. class_id k = the k-th class (1-based)")
    p.add_argument("--per-class", type=int, required=True, metavar="N",
                   help="samples per class: seeds S .. S+N-1 (see --seed)")
    p.add_argument("--model", required=True,
                   help="'tiny' (offline random test model), 'sd15-random'/'sd21-random' (random weights, "
                   "benchmarks), or a folder or URL (s3://...) of a diffusers-format Stable Diffusion checkpoint")
    g = p.add_argument_group("generation")
    g.add_argument("--prompt", default="a photo of a {}",
                   help="prompt template; '{}' is replaced by the class name (default SeeDiff's 'a photo of a {}')")
    g.add_argument("--steps", type=int, default=50, help="DDIM denoising steps (default 50, as SeeDiff)")
    g.add_argument("--guidance", type=float, default=7.0,
                   help="classifier-free guidance scale, >= 1; 1 = none (default SeeDiff's 7; SD's usual is 7.5)")
    g.add_argument("--resolution", type=int, default=512,
                   help="image side in pixels, a multiple of 64 (default 512)")
    g.add_argument("--seed", type=int, default=0,
                   help="first seed of every class (default 0); the initial noise of a sample is seeded by "
                   "(class, seed), so the same class, seed, model and settings give the same image and mask")
    g.add_argument("--pamr", action="store_true",
                   help="refine each mask on its image with PAMR (SeeDiff's optional step; threshold 0.8 after it)")
    g.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="model precision (default auto: bf16 on GPU, fp32 on CPU)")
    s = p.add_argument_group("sizing")
    s.add_argument("--batch-size", type=int, default=4,
                   help="seeds of one class per generation call per actor (default 4; the U-Net sees twice "
                   "as many with guidance. GPU at 512 px: 8-16 depending on memory; CPU: 1-4)")
    add_actor_options(s)
    s.add_argument("--unit-size", type=int, default=64,
                   help="seeds of one class per work unit = per output file and commit (default 64)")
    r = p.add_argument_group("runs")
    r.add_argument("--run-id", default="default",
                   help="name of the run inside OUTPUT (default 'default'). Reruns with the same id skip committed "
                   "samples; another model, class list, prompt, steps, guidance, resolution, --pamr or --dtype "
                   "needs a new id")
    r.add_argument("--max-error-fraction", type=float, default=0.05,
                   help="exit 3 when a larger fraction of this invocation's samples fail (default 0.05)")
    add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """The SynthConfig for parsed arguments (raises ConfigError for bad values)."""
    return SynthConfig(
        output=args.output, classes=args.classes, per_class=args.per_class, model=args.model, prompt=args.prompt,
        steps=args.steps, guidance=args.guidance, resolution=args.resolution, seed=args.seed, pamr=args.pamr,
        batch_size=args.batch_size, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor, dtype=args.dtype, run_id=args.run_id, unit_size=args.unit_size,
        max_error_fraction=args.max_error_fraction, address=args.address, num_cpus=args.num_cpus,
        object_store_mb=args.object_store_mb, verbose=args.verbose, **cluster_fields(args),
    )


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), config_from_args, "jobs.synthesize.run", argv)


if __name__ == "__main__":
    sys.exit(main())
