"""What the job entry points (jobs.segment, jobs.synthesize) share: the last options and ``main``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from jobs.common.config import ConfigError


def add_actor_options(g) -> None:
    """Adds --actors, --gpus-per-actor and --cpus-per-actor (the actor pool; see config.resolve_resources)."""
    g.add_argument("--actors", type=int, help="model actors (default: one per GPU share; 1 on a CPU-only cluster)")
    g.add_argument("--gpus-per-actor", type=float,
                   help="GPUs per actor (default: 1 when the cluster has GPUs, else 0 = CPU); 0.5 puts two on a GPU")
    g.add_argument("--cpus-per-actor", type=float,
                   help="CPUs reserved per actor (default: 1 with GPUs; on CPU-only clusters a share that leaves a "
                   "quarter of the CPUs, at least 1, to the other tasks). Fractions are fine")


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Adds the "ray" option group and ``-q`` (after the job's own options, as ``--help`` lists them)."""
    c = p.add_argument_group("ray")
    c.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, as set by `ray job submit`, else "
                   "a new local runtime; 'local' forces one)")
    c.add_argument("--num-cpus", type=int, help="CPUs of a local Ray runtime started by the job")
    c.add_argument("--object-store-mb", type=int, help="object store size (MB) of a local Ray runtime")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only (the summary line is always printed)")


def run_main(parser: argparse.ArgumentParser, config_from_args: Callable[[argparse.Namespace], object],
             runner: str, argv: list[str] | None = None) -> int:
    """Parses `argv`, sets up logging (``-q``: warnings only), builds the config (a ConfigError is a usage
    error: exit 2 with the parser's message) and returns ``run(config)`` of the `runner` module (imported
    only then, so ``--help`` and option errors stay fast)."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    return importlib.import_module(runner).run(config)
