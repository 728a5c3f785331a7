"""``python -m jobs.segment INPUT OUTPUT --vocab VOCAB --model MODEL``: segment an image lake with Ray.

Thin entry point: argument parsing and configuration. The job is jobs.segment.run (a jobs.common.runner.Job),
the Ray Data pipeline jobs.segment.dataset, the actor jobs.segment.actor; docs/job.md explains operating it.
"""

from __future__ import annotations

import argparse
import sys

from diffseg.argtypes import CommandParser
from diffseg.codecs.images import DEFAULT_MAX_PIXELS
from diffseg.inputs import READ_MAX_BYTES, READ_TIMEOUT_S
from jobs.common.cli import (
    add_actor_options,
    add_common_options,
    positive_float,
    positive_int,
    run_main,
    vocab_spec,
)
from jobs.common.cluster_options import cluster_fields
from jobs.common.config import ConfigError, JobConfig

RECIPE_HELP = """\
recipe: alone, each method runs its paper's recipe (diffsegmenter: t=100, "a photograph of {classes}"
joined ", "; seediff: t=100, "a photo of {classes}"; maskdiffusion: one pass at t=0 on the noise-free
latent, "{classes}" joined " and "); several methods share DiffSegmenter's. --timesteps, --template,
--separator and --class-token-weight override it; the manifest records the recipe that ran.
thresholds: --tau diffsegmenter=0.45 --tau maskdiffusion=0.3 (one per method); a bare --tau X only when
the methods' thresholds share a scale (diffsegmenter and seediff: min-max scores; maskdiffusion: relative
to the image's best class).
"""

EXAMPLES = """\
examples:
  # local demo: a folder of photos, the offline tiny model (random weights: meaningless masks)
  python -m jobs.segment ./photos/ ./out/ --vocab "person, dog, grass" --model tiny --resolution 256

  # a lake on S3 (or any S3-compatible store: set AWS_ENDPOINT_URL), SD 1.5 on 4 GPUs, via Ray Jobs
  ray job submit --working-dir . -- python -m jobs.segment s3://lake/images/ s3://lake/seg/ \\
      --vocab s3://lake/classes.txt --model s3://models/stable-diffusion-v1-5/ --actors 4 --batch-size 16

  # the paper's per-class protocol, two methods with one threshold each
  python -m jobs.segment ./photos/ ./out/ --vocab voc.txt --model ./sd15/ --context per_class \\
      --method diffsegmenter --method maskdiffusion --tau diffsegmenter=0.45 --tau maskdiffusion=0.3 --run-id pc

exit codes: 0 done (or nothing to do), 1 run failed (rerun to finish), 2 bad option or failed check
before any image was read, 3 finished but more errors than --max-error-fraction.
Rerunning the same command is safe: committed images are skipped, a killed run's leftovers removed.
"""


def build_parser() -> argparse.ArgumentParser:
    from diffseg.argtypes import add_recipe_options
    from diffseg.eval.fitted import tau_option

    p = CommandParser(
        prog="python -m jobs.segment",
        description="Training-free open-vocabulary semantic segmentation of an image lake with a frozen Stable "
        "Diffusion U-Net, as a Ray Data batch job. Writes Parquet masks/, stats/ and errors/ tables and a "
        "manifest.json under OUTPUT; exactly once per image, resumable, incremental.",
        epilog=EXAMPLES + "\n" + RECIPE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT",
                   help="images: a folder or prefix (recursive; .jpg .jpeg .png .gif .bmp .tif .tiff .webp, any case), "
                   "a glob ('s3://lake/2024-*/*.jpg'), or a manifest file (.txt: one URI per line; .parquet: a 'uri' "
                   "column); WebDataset .tar shards (a folder, glob or brace list 'shards/{00000..00099}.tar'); Parquet "
                   "files or a Hugging Face dataset folder whose rows hold image bytes; an S3 Inventory manifest.json. "
                   "Local paths, file://, s3://, gs:// (anything fsspec reads). See --input-format and docs/inputs.md")
    p.add_argument("--input-format", default="auto", type=input_format, metavar="FORM[:OPTIONS]",
                   help="what INPUT is: auto (default: detected from its name and contents; an ambiguous INPUT exits 2 "
                   "naming the choice), files, webdataset, parquet or inventory. Options after a colon: image=EXT "
                   "(webdataset: the image member's extension) or image=COLUMN (parquet: binary or struct<bytes, path>), "
                   "key=COLUMN (parquet; default 'key' when present, else the row index), e.g. parquet:image=jpg,key=key")
    p.add_argument("output", metavar="OUTPUT", help="prefix or folder for masks/, stats/, errors/ and manifest.json")
    p.add_argument("--vocab", required=True, type=vocab_spec,
                   help="classes: a file (path or URL) with one class per line, 'name: alias, alias', or a "
                   "comma-separated list such as 'person, car, road' (names must differ ignoring case; a spec with a "
                   "'/' or a file suffix must be an existing file)")
    p.add_argument("--model", required=True,
                   help="'tiny' (offline random test model), 'sd15-random'/'sd21-random' (random weights, "
                   "benchmarks), or a folder or URL (s3://...) of a diffusers-format Stable Diffusion checkpoint")
    p.add_argument("--method", dest="methods", action="append", metavar="NAME",
                   help="segmentation method; repeat for several (one U-Net pass serves all). Default: diffsegmenter")
    g = p.add_argument_group("sizing")
    g.add_argument("--batch-size", type=int, default=8, help="images per model call per actor (default 8; "
                   "GPU at 512 px: 8-32 depending on memory; CPU: 1-4)")
    add_actor_options(g)
    g.add_argument("--unit-size", type=int, default=256,
                   help="images per work unit = per output file and commit (default 256)")
    g.add_argument("--limit", type=int, help="process at most N of the images not yet done, taken in the plan's spread (hashed) order, "
                   "not the first N by name (smoke tests)")
    m = p.add_argument_group("model and outputs")
    m.add_argument("--resolution", type=positive_int, default=512,
                   help="square model input side in pixels, a multiple of the model's total downsampling (64 for "
                   "Stable Diffusion; default 512)")
    m.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="model precision (default auto: bf16 on GPU, fp32 on CPU)")
    m.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net's blocks once per actor (slower start, faster batches on GPUs; "
                   "the same switch as python -m jobs.bench --compile)")
    m.add_argument("--save-scores", action="store_true",
                   help="also store per-class scores (uint8, model resolution) in masks.scores_png (for jobs.evaluate)")
    m.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"images with more pixels become 'decode' error rows (default {DEFAULT_MAX_PIXELS:,})")
    m.add_argument("--fitted", metavar="PATH",
                   help="fitted.json written by `python -m jobs.evaluate --fit tau`: segment with its background "
                        "thresholds (local path or URL)")
    m.add_argument("--tau", type=tau_option, action="append", default=None, metavar="[METHOD=]X",
                   help="background threshold, METHOD=X per method (repeat); a bare X for every method only when "
                   "their thresholds share a scale (see 'thresholds' below; DiffSegmenter's default 0.4 is provisional)")
    rc = p.add_argument_group("recipe (default: the methods' own, see 'recipe' below)")
    add_recipe_options(rc)
    m.add_argument("--max-read-bytes", type=positive_int, default=READ_MAX_BYTES, metavar="N",
                   help=f"inputs larger than N bytes become 'read' error rows, unread (default {READ_MAX_BYTES} = "
                   f"{READ_MAX_BYTES >> 20} MB)")
    m.add_argument("--read-timeout", type=positive_float, default=READ_TIMEOUT_S, metavar="S",
                   help=f"an input not read within S seconds becomes a 'read' error row (default {READ_TIMEOUT_S:g})")
    r = p.add_argument_group("runs")
    r.add_argument("--run-id", default="default",
                   help="name of the run inside OUTPUT (default 'default'). Reruns with the same id skip committed "
                   "images; another model/vocabulary/method needs a new id. A new id also retries error rows")
    r.add_argument("--max-error-fraction", type=float, default=0.05,
                   help="exit 3 when a larger fraction of this invocation's images fail (default 0.05)")
    add_common_options(p)
    return p


def input_format(value: str) -> str:
    """``--input-format`` checked by diffseg.inputs.parse_format (a usage error names the bad part)."""
    from diffseg.inputs import InputError, parse_format

    try:
        parse_format(value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def method_params(args: argparse.Namespace) -> dict[str, dict]:
    """{method: {"tau": x}} from --tau (METHOD=X or a bare X) or --fitted ({} when neither is given; ConfigError when unusable)."""
    from diffseg.eval.fitted import background_values
    from diffseg.redact import describe_error, redact_uri
    from jobs.common.checks import check_background

    try:
        values = background_values(args.methods or ("diffsegmenter",), args.tau, args.fitted)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    except Exception as exc:  # a storage client's own error (botocore's ParamValidationError...)
        raise ConfigError(f"--fitted {redact_uri(args.fitted)!r} cannot be read: {describe_error(exc)}") from exc
    check_background(values, "--fitted" if args.fitted else "--tau")
    return values


def check_recipe(config: JobConfig) -> JobConfig:
    """`config` when its recipe options build (a template with {classes}/{class}); ConfigError naming the
    option otherwise, before Ray starts."""
    from diffseg import Vocabulary
    from diffseg.segmenter import SegmenterConfig, resolve_recipe, vocab_with_template

    try:
        vocab_with_template(Vocabulary(["x"]), resolve_recipe(
            config.methods, SegmenterConfig(**config.recipe_kwargs()), Vocabulary(["x"])))
    except ValueError as exc:
        raise ConfigError(f"--template/--separator: {exc}") from exc
    return config


def config_from_args(args: argparse.Namespace) -> JobConfig:
    """The JobConfig for parsed arguments (raises ConfigError for bad values)."""
    return check_recipe(JobConfig(
        input=args.input, input_format=args.input_format, output=args.output, vocab=args.vocab, model=args.model,
        methods=tuple(args.methods or ("diffsegmenter",)), batch_size=args.batch_size, actors=args.actors,
        gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor, resolution=args.resolution,
        dtype=args.dtype, compile=args.compile, run_id=args.run_id, max_error_fraction=args.max_error_fraction, limit=args.limit,
        save_scores=args.save_scores, unit_size=args.unit_size,
        method_params=method_params(args),
        max_pixels=args.max_pixels, max_read_bytes=args.max_read_bytes, read_timeout=args.read_timeout,
        context=args.context, timesteps=args.timesteps, template=args.template, separator=args.separator,
        class_token_weight=args.class_token_weight,
        address=args.address, num_cpus=args.num_cpus, object_store_mb=args.object_store_mb, verbose=args.verbose,
        **cluster_fields(args),
    ))


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), config_from_args, "jobs.segment.run", argv)


if __name__ == "__main__":
    sys.exit(main())
