"""SIGTERM (Kubernetes, `ray job stop`, a scheduler's timeout) and SIGINT: the job stops within its grace
period with status `interrupted`, leaves no process behind, and a resubmission finishes exactly once."""

from __future__ import annotations

import signal

import pytest
from jobtest_utils import RESOLUTION, check_exactly_once, put_files, signal_job_after_commits

from diffseg.lake.store import OutputStore
from jobs.common.config import JobConfig
from jobs.segment.run import run

pytestmark = pytest.mark.slow

VOCAB = "cat, person, coffee cup, rocket"
NAMES = ["astronaut.jpg", "coffee.png", "chelsea.JPG", "sub/rocket.jpeg"]


def argv(tmp_path, *extra) -> list[str]:
    return ["jobs.segment", str(tmp_path / "in"), str(tmp_path / "out"), "--vocab", VOCAB, "--model", "tiny",
            "--resolution", str(RESOLUTION), "--unit-size", "2", "--batch-size", "2", "--address", "local",
            "--num-cpus", "2", "--object-store-mb", "150", *extra]


def test_sigterm_mid_run_exits_in_the_grace_period_as_interrupted_and_the_rerun_finishes_once(
        ray_local, tmp_path, lake_files, capsys):
    files, _, _ = lake_files
    uris = put_files(str(tmp_path / "in"), {f"{i}/{n}": files[n] for i in range(4) for n in NAMES})
    code, committed, elapsed, left = signal_job_after_commits(argv(tmp_path, "--grace-seconds", "20"),
                                                              tmp_path / "out", tmp_path / "job.log", signal.SIGTERM)
    log = (tmp_path / "job.log").read_text()
    assert code == 143, log[-3000:]
    assert elapsed < 20 + 5, elapsed  # the grace period, plus the interpreter's exit
    assert left == "", f"processes left behind:\n{left}"
    assert "interrupted by SIGTERM after" in log and "rerun the same command" in log
    store = OutputStore(str(tmp_path / "out"))
    manifest = store.get_json("manifest.json")
    assert manifest["status"] == "interrupted" and manifest["error"] == "stopped by SIGTERM"
    assert not store.exists("_leases/default.json")  # a resubmission on another pod starts at once
    assert 1 <= committed < 8

    assert run(JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), vocab=VOCAB, model="tiny",
                         resolution=RESOLUTION, unit_size=2, batch_size=2)) == 0
    tables = check_exactly_once(str(tmp_path / "out"), uris)
    assert tables["masks"].num_rows == 16
    counts = store.get_json("manifest.json")["counts"]
    assert counts["already_done"] >= 2 * committed and counts["already_done"] + counts["processed"] == 16


def test_sigterm_before_the_pipeline_releases_the_lease_and_exits_143(tmp_path, lake_files):
    """A signal while the job lists INPUT and plans (before Ray starts): the lease is released at once."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    files, _, _ = lake_files
    put_files(str(tmp_path / "in"), {f"{i}/{n}": files[n] for i in range(2) for n in NAMES})
    lease = tmp_path / "out" / "_leases" / "default.json"
    proc = subprocess.Popen([sys.executable, "-m", *argv(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=Path(__file__).resolve().parents[3])
    try:
        deadline = time.monotonic() + 120
        while not lease.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            import os
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out.decode()
    assert proc.returncode == 143, text[-3000:]
    assert "interrupted by SIGTERM" in text
    assert not lease.exists()
