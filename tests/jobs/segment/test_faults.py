"""The whole segment job under store faults and a batch that kills its actor (issue 20).

- Behind tests/faultproxy.py (a loopback proxy in front of moto answering a share of GETs, PUTs, LISTs and
  DELETEs with 503 SlowDown, and failing every request on two input images for longer than the clients'
  retries): the job finishes with each image exactly once, the images the burst hit are retryable read
  errors, one plain rerun leaves no retryable error row, and the masks equal a clean run's.
- A batch whose image kills its actor process every time: the job ends (bounded actor restarts and task
  retries, jobs/common/ray_env.py) and says what happened, instead of restarting actors for ever.

Each job runs as its own process with its own Ray runtime (its workers must see the proxy's endpoint);
the tests stop every process it started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
from faultproxy import FaultProxy
from jobtest_utils import (
    MAX_PIXELS,
    RESOLUTION,
    check_exactly_once,
    put_files,
    read_output,
    stop_process_tree,
)

pytestmark = pytest.mark.slow

VOCAB = "cat, person: astronaut, coffee cup, rocket"
ROOT = Path(__file__).resolve().parents[3]


def run_process(args: list[str], env: dict, log_path: Path, timeout: float) -> tuple[int | None, str, float]:
    """Runs ``python args...`` in its own session with its own Ray runtime; returns (exit code or None when it
    ran past `timeout` and was killed, its output, seconds it ran). Every process it started is stopped."""
    ray_tmp = f"/tmp/rf{os.getpid()}{int(time.time() * 1000) % 100000}"  # short: Ray's socket path limit
    os.makedirs(ray_tmp)
    marker = os.path.basename(ray_tmp)
    env = dict(os.environ, **env, RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled", RAY_ADDRESS="",
               DIFFSEG_TEST_PROCESS_TREE=marker, PYTHONPATH=str(ROOT))  # the Ray workers import this checkout
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(ROOT))
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
            stop_process_tree("DIFFSEG_TEST_PROCESS_TREE", marker)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    return code, Path(log_path).read_text(errors="replace"), time.monotonic() - t0


def job_args(input: str, output: str, *extra: str) -> list[str]:
    """The job's command line. ``--batch-size 1``: the model sees each image alone, so a mask does not depend on
    which other images of its unit failed (in a batch of two, float results differ in a few pixels with the
    batch's other image; the burst's images are missing from their units' batches in the first faulty run)."""
    return ["-m", "jobs.segment", input, output, "--vocab", VOCAB, "--model", "tiny", "--resolution", str(RESOLUTION),
            "--unit-size", "4", "--batch-size", "1", "--max-pixels", str(MAX_PIXELS), "--max-error-fraction", "1",
            "--read-timeout", "20", "--address", "local", "--num-cpus", "2", "--object-store-mb", "150", *extra]


def fresh(output: str) -> str:
    """`output`, with this process's cached listings of it dropped (a job process changed it meanwhile)."""
    from fsspec.core import url_to_fs

    url_to_fs(output)[0].invalidate_cache()
    return output


def masks_by_uri(output: str) -> dict[str, bytes]:
    masks = read_output(fresh(output), "masks")
    return dict(zip(masks["uri"].to_pylist(), masks["label_map_png"].to_pylist()))


def test_job_behind_a_failing_store_finishes_exactly_once_and_a_rerun_heals_it(s3_endpoint, bucket, lake_files,
                                                                               tmp_path, capsys):
    files, good, bad = lake_files
    uris = put_files(f"s3://{bucket}/images", files)
    # every request on them fails for 60 s from the first one: longer than a read's retries may last
    # (--read-timeout 20: a read still failing then is a retryable "read timeout" error; left at its default
    # of 120 s, the client's own retries of one GET (s3fs x botocore x the job's tries) outlast any burst)
    burst = ["coffee.png", "sub/rocket.jpeg"]
    clean, faulty = f"s3://{bucket}/clean", f"s3://{bucket}/faulty"

    code, out, _ = run_process(job_args(f"s3://{bucket}/images/", clean), {"AWS_ENDPOINT_URL": s3_endpoint},
                               tmp_path / "clean.log", timeout=550)
    assert code == 0, out[-3000:]
    reference = masks_by_uri(clean)
    assert len(reference) == len(good)

    shares = {"GET": 0.1, "PUT": 0.1, "LIST": 0.1, "DELETE": 0.1}
    with FaultProxy(s3_endpoint, shares, bursts={f"images/{name}": 60.0 for name in burst}) as proxy:
        env = {"AWS_ENDPOINT_URL": proxy.endpoint}
        code, out, _ = run_process(job_args(f"s3://{bucket}/images/", faulty), env, tmp_path / "faulty.log", timeout=550)
        first = proxy.summary()
        assert code == 0, out[-3000:]
        tables = check_exactly_once(fresh(faulty), uris)  # 0 lost, 0 duplicated, in a plain read
        errors = {r["uri"].rsplit("/images/", 1)[1]: r for r in tables["errors"].to_pylist()}
        for name in burst:  # the burst outlasted the clients' retries: a retryable read error, not a final one
            assert errors[name]["stage"] == "read" and errors[name]["retryable"], errors.get(name)
        assert {n for n, r in errors.items() if not r["retryable"]} == set(bad)

        proxy.bursts.clear()  # the store recovers (the random 503s go on)
        code, out, _ = run_process(job_args(f"s3://{bucket}/images/", faulty), env, tmp_path / "rerun.log", timeout=550)
        rerun = proxy.summary()
        assert code == 0, out[-3000:]
    assert f"{len(burst)} images ({len(burst)} segmented, 0 errors" in out
    tables = check_exactly_once(fresh(faulty), uris)
    errors = tables["errors"]
    assert pc.sum(pc.cast(errors["retryable"], "int64")).as_py() in (None, 0)  # no retryable error row left
    assert sorted(u.rsplit("/images/", 1)[1] for u in errors["uri"].to_pylist()) == sorted(bad)
    assert masks_by_uri(faulty) == reference  # every mask equals the clean run's
    with capsys.disabled():
        print(f"\nfaultproxy, first run: {first['total_failed']} of {first['total']} requests failed "
              f"({first['failed_share']:.1%}; per operation {first['failed']} of {first['requests']}; of them the "
              f"burst {first['burst_failed']}); rerun: {rerun['total_failed'] - first['total_failed']} of "
              f"{rerun['total'] - first['total']}")
    assert first["burst_failed"] and all(first["failed"].get(op) for op in ("GET", "PUT", "LIST", "DELETE"))


KILLER = r'''
import os, sys
from jobs.common.config import JobConfig
from jobs.common.runner import run
from jobs.segment.actor import SegmentUDF
from jobs.segment.dataset import build_dataset
from jobs.segment.run import SegmentJob

class DiesOnPoison(SegmentUDF):  # defined in __main__: Ray ships it by value to the actors
    def compute(self, items):  # the model call: a segfault in it, a host OOM kill, kill the actor's process
        if any(item["uri"].endswith("poison.png") for item in items):
            with open(os.path.join(os.environ["DEATHS"], f"{os.getpid()}-{len(os.listdir(os.environ['DEATHS']))}"), "w"):
                pass
            os._exit(1)
        return super().compute(items)

class PoisonJob(SegmentJob):
    def dataset(self, config, checked, units, resources, target):
        return build_dataset(units, config, resources, checked.vocab, target, actor_class=DiesOnPoison)

input, output, resolution, max_pixels = sys.argv[1:5]
config = JobConfig(input=input, output=output, vocab="cat, person", model="tiny", resolution=int(resolution),
                   batch_size=2, unit_size=3, max_pixels=int(max_pixels), max_error_fraction=1.0,
                   address="local", num_cpus=2, object_store_mb=150)
sys.exit(run(PoisonJob(), config))
'''


def test_a_batch_that_kills_its_actor_is_split_and_the_image_becomes_an_error_row(tmp_path, lake_files):
    """One image kills its actor process every time the model runs on it (a segfault, a host OOM kill): the
    batch is split until that image is known (jobs.common.crashes: the batch together, then one image at a
    time), the image becomes a final `model` error row of type WorkerCrash, its neighbours are segmented,
    and the job exits 0, the whole within a bound of actor deaths (Ray's retries are bounded)."""
    files, _, _ = lake_files
    names = ["astronaut.jpg", "coffee.png", "chelsea.JPG", "odd/gray.png", "odd/cmyk.jpg"]
    # sorted into units of 3, the poison shares the last unit with 1/odd/gray.png
    inputs = {f"{i}/{n}": files[n] for i in range(2) for n in names} | {"1/poison.png": files["coffee.png"]}
    uris = put_files(str(tmp_path / "in"), inputs)
    output = str(tmp_path / "out")
    deaths = tmp_path / "deaths"
    deaths.mkdir()
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    code, out, seconds = run_process([str(script), str(tmp_path / "in"), output, str(RESOLUTION), str(MAX_PIXELS)],
                                     {"DEATHS": str(deaths)}, tmp_path / "job.log",
                                     timeout=550)
    from jobs.common.ray_env import ACTOR_TASK_RETRIES

    try:  # a pipeline that lost a worker is started again a few times (where the runner does)
        from jobs.common.restarts import PIPELINE_RESTARTS
    except ImportError:
        PIPELINE_RESTARTS = 0
    bound = (ACTOR_TASK_RETRIES + 1) * (PIPELINE_RESTARTS + 1)  # tries of the batch per pipeline x pipelines
    print(f"the job ended after {seconds:.0f} s with exit code {code}; the poison killed {len(os.listdir(deaths))} "
          f"actor process(es) (at most {bound})")
    assert code is not None, f"the job did not end in 550 s; actors killed: {len(os.listdir(deaths))}\n{out[-3000:]}"
    assert 1 <= len(os.listdir(deaths)) <= 3  # together, then alone until the poison: two deaths, one to spare
    assert code == 0, out[-3000:]
    tables = check_exactly_once(output, uris)
    (error,) = tables["errors"].to_pylist()
    assert error["uri"].endswith("poison.png") and error["stage"] == "model" and error["error_type"] == "WorkerCrash"
    assert error["retryable"] is False and "died while segmenting" in error["message"]
    masks = tables["masks"]["uri"].to_pylist()
    assert len(set(masks)) == len(masks) and set(masks) <= set(uris)
