"""End to end as users run it: `ray start --head`, then `ray job submit --working-dir . -- python -m
jobs.segment s3://... s3://...` against the moto S3 server, credentials passed in the runtime env."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from jobtest_utils import (
    MAX_PIXELS,
    RESOLUTION,
    check_exactly_once,
    free_port,
    put_files,
    stop_process_tree,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head with its own temp dir and ports; its processes are stopped by pid afterwards."""
    temp_dir = f"/tmp/rh{os.getpid()}{int(time.time()) % 10000}"  # short: socket paths have a length limit
    os.makedirs(temp_dir)
    bin_dir = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the job gets them via its runtime env
    marker = os.path.basename(temp_dir)
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               DIFFSEG_TEST_PROCESS_TREE=marker)  # inherited by every process of this head: how we stop them
    drawn: set[int] = set()

    def port() -> int:  # distinct free ports, outside the workers' range (the OS may hand one out twice)
        while True:
            p = free_port()
            if p not in drawn and not 23000 <= p <= 23999:
                drawn.add(p)
                return p

    dashboard = port()
    ports = ["--port", str(port()), "--dashboard-port", str(dashboard),
             "--ray-client-server-port", str(port()), "--dashboard-agent-listen-port", str(port()),
             "--dashboard-agent-grpc-port", str(port()), "--metrics-export-port", str(port()),
             "--runtime-env-agent-port", str(port()), "--node-manager-port", str(port()),
             "--object-manager-port", str(port()), "--min-worker-port", "23000", "--max-worker-port", "23999"]
    start = subprocess.run(
        [f"{bin_dir}/ray", "start", "--head", "--temp-dir", temp_dir, "--num-cpus", "2",
         "--object-store-memory", str(200 * 1024 * 1024), "--include-dashboard", "true",
         "--dashboard-host", "127.0.0.1", "--disable-usage-stats", *ports],
        env=env, capture_output=True, text=True, timeout=180,
    )
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        yield {"address": f"http://127.0.0.1:{dashboard}", "env": env, "temp_dir": temp_dir}
    finally:
        stop_process_tree("DIFFSEG_TEST_PROCESS_TREE", marker)  # gcs, raylet, dashboard, agents, workers
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_segments_an_s3_lake(ray_head, bucket, s3_endpoint, lake_files):
    files, good, bad = lake_files
    names = ["astronaut.jpg", "coffee.png", "odd/exif_rotated.jpg", "bad/truncated.jpg", "bad/zero_bytes.jpg"]
    uris = put_files(f"s3://{bucket}/images", {n: files[n] for n in names})
    runtime_env = yaml.safe_load((ROOT / "cluster" / "runtime-env.yaml").read_text())
    runtime_env["env_vars"].update(
        AWS_ENDPOINT_URL=s3_endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", RAY_AUTH_MODE="disabled",
    )
    output = f"s3://{bucket}/seg/"
    submit = subprocess.run(
        [f"{os.path.dirname(sys.executable)}/ray", "job", "submit", "--address", ray_head["address"],
         "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "-m", "jobs.segment", f"s3://{bucket}/images/", output, "--vocab", "person, cup, rocket",
         "--model", "tiny", "--resolution", str(RESOLUTION), "--batch-size", "2", "--unit-size", "3",
         "--max-pixels", str(MAX_PIXELS), "--max-error-fraction", "0.5"],
        cwd=ROOT, env=ray_head["env"], capture_output=True, text=True, timeout=400,
    )
    log = submit.stdout + submit.stderr
    if submit.returncode != 0:
        from jobtest_utils import read_output

        errors = read_output(output, "errors").to_pylist() if "committed" in log else "no output"
        pytest.fail(f"ray job submit exited {submit.returncode}; errors: {errors}\n{log[-4000:]}")
    assert "succeeded" in log and "5 images (3 segmented, 2 errors = 40.0%)" in log, log[-4000:]
    tables = check_exactly_once(output, uris)
    assert sorted(r["stage"] for r in tables["errors"].to_pylist()) == ["decode", "decode"]
    sizes = {(r["uri"].rsplit("/", 1)[1], r["height"], r["width"]) for r in tables["masks"].to_pylist()}
    assert sizes == {("astronaut.jpg", 512, 512), ("coffee.png", 400, 600), ("exif_rotated.jpg", 300, 200)}
