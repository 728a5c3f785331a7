"""The cluster options both jobs share (placement, shared OUTPUT, the run's lease) and their config fields.

``add_cluster_options(parser)`` adds the "cluster" group; ``cluster_fields(args)`` turns the parsed
values into the RunOptions keyword arguments (``device``, ``shared_output``, ``wait_for_nodes``,
``break_lease``, ``lease_stale_s``, ``retry_errors``, ``grace_s``). docs/job.md ("Running on a cluster") explains each.
"""

from __future__ import annotations

import argparse


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    """Adds --device, --shared-output, --wait-for-nodes, --break-lease, --retry-errors, --grace-seconds and
    --lease-stale-minutes."""
    g = p.add_argument_group("cluster")
    g.add_argument("--device", choices=("cpu", "cuda"),
                   help="where the model runs (default: cuda when actors hold GPUs, else cpu). '--device cpu' on GPU "
                   "nodes keeps one actor per GPU with the model on the CPU: a test and debugging aid")
    g.add_argument("--shared-output", action="store_true",
                   help="OUTPUT is a local path every node sees (NFS): allow it on a cluster of several nodes")
    g.add_argument("--wait-for-nodes", action="store_true",
                   help="when no alive node can hold one actor, wait for nodes (an autoscaler or an operator adds them) "
                   "instead of exiting 2")
    g.add_argument("--break-lease", action="store_true",
                   help="take over the run's lease although its holder looks alive (only when that holder is gone)")
    g.add_argument("--retry-errors", action="store_true",
                   help="retry every error row of the run, final ones too (by default a rerun retries only the "
                   "retryable ones: network, throttling, credentials, memory, device; after fixing inputs or "
                   "raising a limit, use this)")
    g.add_argument("--grace-seconds", type=float, default=25.0,
                   help="after SIGTERM or SIGINT, commit what is whole and exit within this many seconds (exit "
                   "143/130); default 25, under Kubernetes' 30 s before SIGKILL")
    g.add_argument("--lease-stale-minutes", type=float, default=2.0,
                   help="a lease without a heartbeat (every 30 s) for this long is taken over without --break-lease "
                   "(default 2)")


def cluster_fields(args: argparse.Namespace) -> dict:
    """The RunOptions fields of the options added by :func:`add_cluster_options`."""
    return {"device": args.device, "shared_output": args.shared_output, "wait_for_nodes": args.wait_for_nodes,
            "break_lease": args.break_lease, "lease_stale_s": args.lease_stale_minutes * 60.0,
            "retry_errors": args.retry_errors, "grace_s": args.grace_seconds}
