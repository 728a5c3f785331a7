"""Print a segment (or synthesize) run's state from its OUTPUT and exit with a code schedulers can act on.

``ray job submit`` turns a job's exit 3 into 1, and a retry of a run with too many errors finds nothing to
do; this command reads what the run left in OUTPUT instead, so an alert or a scheduler's last step gets
the run's own outcome. Reads manifest.json, _history/ and the run's commit log only (a few small
files); needs no Ray. The rules are in jobs.status.state and docs/deploy.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from diffseg.argtypes import CommandParser
from diffseg.lake.read import OutputError
from diffseg.model import redact_uri
from diffseg.redact import redacting
from jobs.status.state import DEFAULT_STALE_AFTER_S, EXIT_MISSING, read_run_status

EPILOG = """\
exit codes:
  0  the run succeeded (also when the latest invocation had nothing to do), or it is running
  1  the run failed, or it is "running" but showed no sign of life for --stale-after seconds (killed?),
     or it was interrupted and never finished
  2  no such OUTPUT or run (or bad options)
  3  the run finished, but its error fraction (all invocations) is above its --max-error-fraction

examples:
  python -m jobs.status s3://lake/seg/
  python -m jobs.status s3://lake/seg/ --run-id nightly --json
  python -m jobs.segment ... ; python -m jobs.status s3://lake/seg/ || alert "diffseg nightly: exit $?"
"""


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m jobs.status", formatter_class=argparse.RawDescriptionHelpFormatter,
                      description="Print a run's state from OUTPUT/manifest.json and its commit log.",
                      epilog=EPILOG)
    p.add_argument("output", metavar="OUTPUT", help="the job's OUTPUT (local path or s3://, gs://, file:// URL)")
    p.add_argument("--run-id", help="which run (default: the latest invocation's, manifest.json's run_id)")
    p.add_argument("--stale-after", type=float, default=DEFAULT_STALE_AFTER_S, metavar="SECONDS",
                   help="a running invocation with no commit for this long counts as dead (default 3600)")
    p.add_argument("--max-error-fraction", type=float,
                   help="judge the error fraction against this (default: the run's own --max-error-fraction)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


@redacting
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.stale_after <= 0:
        parser.error(f"--stale-after must be positive, got {args.stale_after:g}")
    if args.max_error_fraction is not None and not 0.0 <= args.max_error_fraction <= 1.0:
        parser.error(f"--max-error-fraction must be in [0, 1], got {args.max_error_fraction:g}")
    try:
        status = read_run_status(args.output, args.run_id, stale_after_s=args.stale_after,
                                 max_error_fraction=args.max_error_fraction)
    except OutputError as exc:
        print(f"diffseg: error: {exc}", file=sys.stderr)
        return EXIT_MISSING
    if args.json:
        print(json.dumps({**status.to_dict(), "output": redact_uri(status.output)}))
        return status.exit_code
    s = status
    print(f"run {s.run_id!r} of {redact_uri(s.output)}: {s.outcome.upper()} (exit {s.exit_code})")
    print(f"  latest invocation: {s.invocation_status or 'none recorded'}, started {s.started_at or '?'}, "
          f"finished {s.finished_at or '-'}, last activity {s.last_activity or '?'}")
    listed = f" of {s.listed} listed" if s.listed is not None else ""
    print(f"  committed: {s.images} images{listed} in {s.units} units; {s.errors} errors = "
          f"{s.error_fraction:.1%} (limit {s.max_error_fraction:.1%})")
    if s.error:
        print(f"  error: {s.error[:500]}")
    return s.exit_code
