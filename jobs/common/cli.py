"""What the job entry points (jobs.segment, jobs.synthesize) share: the last options, option types and ``main``.

Option values are checked by argparse types here (exit 2 naming the option, the value and the rule,
before anything is read); checks that need the model or OUTPUT are in jobs.common.checks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from diffseg.argtypes import finite_float, positive_float, positive_int
from jobs.common.config import ConfigError

__all__ = ["add_actor_options", "add_common_options", "finite_float", "positive_float", "positive_int", "run_main",
           "vocab_spec"]


def vocab_spec(text: str) -> str:
    """argparse type of --vocab/--classes: refuses a spec that looks like a missing local path or a
    folder, and a comma list with names equal ignoring case and spaces (files are read by the checks)."""
    from diffseg.vocabulary import Vocabulary, check_spec, looks_like_path

    try:
        check_spec(text)
        if "://" not in text and not looks_like_path(text):
            Vocabulary.from_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_actor_options(g) -> None:
    """Adds --actors, --gpus-per-actor and --cpus-per-actor (the actor pool; see config.resolve_resources)."""
    g.add_argument("--actors", type=int, help="model actors (default: one per GPU share; 1 on a CPU-only cluster)")
    g.add_argument("--gpus-per-actor", type=float,
                   help="GPUs per actor (default: 1 when the cluster has GPUs, else 0 = CPU); 0.5 puts two on a GPU")
    g.add_argument("--cpus-per-actor", type=float,
                   help="CPUs reserved per actor (default: 1 with GPUs; on CPU-only clusters a share that leaves a "
                   "quarter of the CPUs, at least 1, to the other tasks). Fractions are fine")


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Adds the "ray" and "cluster" option groups and ``-q``/``-v`` (after the job's own options, as ``--help`` lists them)."""
    from jobs.common.cluster_options import add_cluster_options

    c = p.add_argument_group("ray")
    c.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, as set by `ray job submit`, else "
                   "a new local runtime; 'local' forces one)")
    c.add_argument("--num-cpus", type=positive_int, help="CPUs of a local Ray runtime started by the job (>= 1)")
    c.add_argument("--object-store-mb", type=positive_int, help="object store size (MB) of a local Ray runtime")
    add_cluster_options(p)
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="our warnings and the summary line only (Ray's own lines go to its session logs)")
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="also show Ray Data's own progress bars or lines and execution banners")


def run_main(parser: argparse.ArgumentParser, config_from_args: Callable[[argparse.Namespace], object],
             runner: str, argv: list[str] | None = None) -> int:
    """Parses `argv`, sets up logging (``-q``: warnings only), builds the config (a ConfigError is a usage
    error: exit 2 with the parser's message) and returns ``run(config)`` of the `runner` module (imported
    only then, so ``--help`` and option errors stay fast). Everything it prints or logs is redacted
    (diffseg.redact: no credential of a URL argument is ever shown)."""
    from diffseg.redact import redacted_output

    with redacted_output(sys.argv[1:] if argv is None else argv):
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            config = config_from_args(args)
        except ConfigError as exc:
            parser.error(str(exc))
        from jobs.common.ray_env import quiet_ray

        with quiet_ray(args.quiet):  # -q: Ray's own lines go to its session logs (ray_env.QuietRay)
            return importlib.import_module(runner).run(config)
