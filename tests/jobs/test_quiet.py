"""-q: what Ray itself writes to the driver's stderr goes to its session logs, ours keeps the terminal
(jobs.common.ray_env.QuietRay), and everything is put back afterwards. Checked in a process of its own
(fd 2 is the process's), without starting Ray: the C++ core worker's lines are raw writes to fd 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, os, sys
from diffseg.redact import redacted_output
from jobs.common import ray_env

logs = sys.argv[1]
with redacted_output([]):  # as run_main: our streams are redacting wrappers
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    ray_log = logging.getLogger("ray")
    ray_log.propagate = False
    console = logging.StreamHandler(sys.stderr)
    ray_log.addHandler(console)  # Ray's own console handler, as `import ray` installs it
    ray_log.setLevel(logging.INFO)
    with ray_env.quiet_ray(True):
        ray_env._quiet.quiet_ray_loggers()
        ray_log.warning("Token authentication is enabled for this Ray cluster")  # before ray.init
        ray_env._quiet.route_to_logs(logs)
        os.write(2, b"[E core_worker.cc:2465] native line of Ray\\n")
        ray_log.info("Started a local Ray instance.")
        ray_log.error("a Ray error still shows")
        logging.getLogger("jobs.segment").warning("our warning")
        print("diffseg: 5 images (4 segmented, 1 errors = 20.0%)")
        print("our error line", file=sys.stderr)
    os.write(2, b"fd 2 is the terminal again\\n")
    logging.getLogger("jobs.segment").warning("our warning after")
"""


def test_quiet_ray_sends_rays_lines_to_its_logs_and_keeps_ours(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    for ours in ("WARNING our warning", "our error line", "a Ray error still shows", "fd 2 is the terminal again",
                 "WARNING our warning after"):
        assert ours in err, err
    for rays in ("Token authentication", "native line of Ray", "Started a local Ray instance"):
        assert rays not in err, err
    assert "4 segmented" in done.stdout
    assert "native line of Ray" in (tmp_path / "diffseg-driver-stderr.log").read_text()
    assert "Started a local Ray instance" in (tmp_path / "diffseg-driver-ray.log").read_text()
