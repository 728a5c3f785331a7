"""The README's commands as printed, in order, on a copy of the checkout: the demo (what `make demo`
runs after installing), the "after-demo" block (pandas, DuckDB, exports, report, status) and the
"submit" block against a Ray head on 127.0.0.1 with token auth (started by the block's own `ray start`
line plus free ports and a private --temp-dir; stopped by pid instead of its `ray stop` line)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jobtest_utils import free_port, stop_process_tree

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = os.path.dirname(sys.executable)


def readme_block(name: str) -> str:
    """The bash block after ``<!-- readme-test: NAME -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- readme-test: {name} -->\s*```bash\n(.*?)```", text, flags=re.S)
    assert match, f"README.md has no block marked readme-test: {name}"
    return match.group(1)


def copy_checkout(dest: Path) -> Path:
    """The repository's files as a fresh clone has them (no venv, no outputs, no caches)."""
    ignore = shutil.ignore_patterns(".git", ".venv", "demo-out", "out", "__pycache__", "*.egg-info", ".pytest_cache",
                                    ".ruff_cache", "build")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def bash(script: str, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def checkout(tmp_path):
    repo = copy_checkout(tmp_path / "diffseg")
    marker = f"readme{os.getpid()}{int(time.time()) % 100000}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    # what `. .venv/bin/activate` gives: this venv's tools first; the copy's code first (editable installs
    # point elsewhere); a HOME of its own (the Ray token file); a marker to stop the head's processes
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(repo), HOME=str(tmp_path / "home"),
               RAY_USAGE_STATS_ENABLED="0", DIFFSEG_TEST_PROCESS_TREE=marker)
    (tmp_path / "home").mkdir()
    try:
        yield repo, env
    finally:
        stop_process_tree("DIFFSEG_TEST_PROCESS_TREE", marker)  # the head: gcs, raylet, dashboard, workers


def test_the_readme_sequence_runs_as_printed(checkout, tmp_path):
    repo, env = checkout
    demo = subprocess.run([sys.executable, "-m", "jobs.demo"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stderr.strip() == "", demo.stderr  # -q: nothing of Ray's on the console
    assert "4 segmented, 1 errors" in demo.stdout

    after = bash(readme_block("after-demo"), repo, env, timeout=600)
    out = after.stdout + after.stderr
    assert after.returncode == 0 and "Traceback" not in out, out
    assert "not-an-image.jpg" in after.stdout and "class_name" in after.stdout  # pandas
    assert "images" in after.stdout and "int64" in after.stdout  # DuckDB's table (its column types)
    assert "exported 4 images" in after.stdout and "as coco to demo-out/export/coco" in after.stdout
    assert (repo / "demo-out/export/coco/instances.json").exists()
    tasks = (repo / "demo-out/export/labelstudio/tasks.json").read_text()
    assert '"image": "/data/local-files/?d=lake/astronaut.jpg"' in tasks
    assert "wrote demo-out/report.html" in after.stdout
    assert "diffseg status: exit 0" in after.stdout  # the demo's run allows 50 % errors

    temp_dir = f"/tmp/rr{os.getpid()}{int(time.time()) % 10000}"  # short: socket paths have a length limit
    script, _ = submit_script(env, temp_dir)
    try:
        submitted = bash(script, repo, env, timeout=900)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    out = submitted.stdout + submitted.stderr
    assert "ray job submit: exit 1" in out, out[-6000:]  # the job's exit 3, as Ray Jobs reports it
    assert "diffseg status: exit 3" in out and "TOO MANY ERRORS (exit 3)" in out, out[-6000:]
    assert "4 segmented, 1 errors" in out, out[-6000:]
    import pyarrow.dataset as ds

    output = repo / "demo-out" / "cluster-output"
    masks = ds.dataset(output / "masks", format="parquet").to_table(columns=["uri"]).column("uri").to_pylist()
    errors = ds.dataset(output / "errors", format="parquet").to_table(columns=["uri"]).column("uri").to_pylist()
    assert sorted(u.rsplit("/", 1)[1] for u in masks) == ["astronaut.jpg", "chelsea.png", "coffee.jpg", "rocket.jpg"]
    assert [u.rsplit("/", 1)[1] for u in errors] == ["not-an-image.jpg"]


def submit_script(env: dict, temp_dir: str) -> tuple[str, str]:
    """The README's submit block, with free ports and a private --temp-dir on its `ray start` line, its
    address pointed at that head's dashboard and its `ray stop` left to the test; and that address."""
    dashboard = free_port()
    ports = (f"--port {free_port()} --dashboard-port {dashboard} --ray-client-server-port {free_port()} "
             f"--dashboard-agent-listen-port {free_port()} --dashboard-agent-grpc-port {free_port()} "
             f"--metrics-export-port {free_port()} --runtime-env-agent-port {free_port()} "
             f"--node-manager-port {free_port()} --object-manager-port {free_port()} "
             "--min-worker-port 24000 --max-worker-port 24999")
    lines = []
    for line in readme_block("submit").splitlines():
        if line.startswith("ray start "):
            line = re.sub(r"--temp-dir \S+", f"--temp-dir {temp_dir}", line) + " " + ports
        elif line.strip() == "ray stop":
            continue
        lines.append(line.replace("http://127.0.0.1:8265", f"http://127.0.0.1:{dashboard}"))
    return "\n".join(lines), f"http://127.0.0.1:{dashboard}"
