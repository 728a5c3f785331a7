"""Helpers of the cluster tests: running a job as a user does, a separate driver process connected to the
cluster with ``--address``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def job_process(job: str, config: dict, address: str, log_path) -> subprocess.Popen:
    """``jobs.<job>`` run by a driver process of its own on the cluster at `address`, from `config`
    (the job config's fields), output to `log_path`."""
    code = ("import json, logging, sys\n"
            "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            f"from jobs.{job}.run import run\n"
            f"from {'jobs.common.config import JobConfig as C' if job == 'segment' else 'jobs.synthesize.config import SynthConfig as C'}\n"
            "sys.exit(run(C(**json.loads(sys.argv[1]))))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-c", code, json.dumps({**config, "address": address})], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
