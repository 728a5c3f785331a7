"""The whole job on a local Ray runtime with the real tiny model: an S3 lake of photos and bad inputs,
resubmission, incremental runs, refused vocabulary changes, and an actor killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from jobtest_utils import (
    MAX_PIXELS,
    RESOLUTION,
    check_exactly_once,
    check_masks_and_stats,
    committed_units,
    parent_pid,
    pids_matching,
    put_files,
)

from diffseg.lake.store import OutputStore
from diffseg.lake.units import read_committed
from jobs.common.config import JobConfig
from jobs.segment.run import run

pytestmark = pytest.mark.slow

VOCAB = "cat, person: astronaut, coffee cup, rocket"


def config(input, output, **kw) -> JobConfig:
    base = dict(input=input, output=output, vocab=VOCAB, model="tiny", resolution=RESOLUTION, batch_size=4,
                unit_size=6, max_pixels=MAX_PIXELS)
    base.update(kw)
    return JobConfig(**base)


def test_s3_lake_every_input_once_resubmit_incremental_and_refused_vocabulary(ray_local, bucket, lake_files, capsys):
    files, good, bad = lake_files
    uris = put_files(f"s3://{bucket}/images", files)
    output = f"s3://{bucket}/seg"
    put_files(f"s3://{bucket}", {"classes.txt": b"# what we look for\ncat\nperson: astronaut, man\ncoffee cup\nrocket\n"})
    cfg = config(f"s3://{bucket}/images/", output, vocab=f"s3://{bucket}/classes.txt", save_scores=True)

    # 5 of 16 inputs cannot be decoded: more than the default 5% -> exit 3, but everything is written
    assert run(cfg) == 3
    summary = capsys.readouterr().out
    assert "16 images (11 segmented, 5 errors = 31.2%)" in summary and "--max-error-fraction" in summary
    tables = check_exactly_once(output, uris)
    check_masks_and_stats(tables, {f"s3://{bucket}/images/{n}": size for n, size in good.items()})
    errors = {r["uri"].rsplit("/images/", 1)[1]: r for r in tables["errors"].to_pylist()}
    assert sorted(errors) == sorted(bad)
    for name, word in bad.items():
        assert errors[name]["stage"] == "decode" and word in errors[name]["message"], errors[name]
    masks = tables["masks"].to_pylist()
    assert {m["run_id"] for m in masks} == {"default"} and all(m["scores_png"] for m in masks)
    store = OutputStore(output)
    manifest = store.get_json("manifest.json")
    counts = manifest["counts"]
    assert manifest["status"] == "too many errors"
    assert counts["processed"] == counts["segmented"] + counts["errors"] == 16 and counts["mask_rows"] == 11
    assert counts["errors_by_stage"] == {"decode": 5} and manifest["units"]["committed"] == 3
    assert manifest["vocabulary"]["classes"] == ["cat", "person", "coffee cup", "rocket"]
    assert manifest["vocabulary"]["aliases"] == {"person": ["astronaut", "man"]}
    assert "testing" not in json.dumps(manifest)  # the test's AWS secret key

    # resubmit: no model work, says so, writes no data file, and reports the run's outcome again (exit 3)
    before = store.list("masks") + store.list("stats") + store.list("errors")
    assert run(cfg) == 3
    out = capsys.readouterr().out
    assert "nothing to do: all 16 input images are already committed" in out and "5 errors in 16 images" in out
    assert store.list("masks") + store.list("stats") + store.list("errors") == before

    # nightly: two new images arrive; only they are processed
    new = put_files(f"s3://{bucket}/images/2024-06-02", {"a.jpg": files["astronaut.jpg"], "b.png": files["coffee.png"]})
    assert run(cfg) == 0
    assert "2 images (2 segmented, 0 errors" in capsys.readouterr().out
    counts = store.get_json("manifest.json")["counts"]
    assert (counts["already_done"], counts["processed"], counts["run_images_done"]) == (16, 2, 18)
    check_exactly_once(output, uris + new)

    # another vocabulary under the same run is refused before any work; a new run id is accepted
    assert run(config(cfg.input, output, vocab="dog, tree")) == 2
    assert "--run-id" in capsys.readouterr().err
    assert run(config(cfg.input, output, vocab="dog, tree", run_id="trees", limit=3, max_error_fraction=1.0)) == 0
    assert read_committed(output, "masks", run_id="trees").num_rows + read_committed(
        output, "errors", run_id="trees").num_rows == 3
    check_exactly_once(output, uris + new, run_id="default")


def test_actor_killed_mid_run_loses_nothing(ray_local, tmp_path, lake_files, capsys):
    import ray

    files, good, _ = lake_files
    names = ["astronaut.jpg", "coffee.png", "chelsea.JPG", "sub/rocket.jpeg", "odd/gray.png", "odd/cmyk.jpg"]
    uris = put_files(str(tmp_path / "in"), {f"{i}/{n}": files[n] for i in range(2) for n in names})
    output = str(tmp_path / "out")
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    killed = []

    def kill_one_actor_after_first_commit():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if committed_units(output) >= 1:
                for pid in pids_matching("SegmentUDF"):
                    if parent_pid(pid) == raylet:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_actor_after_first_commit, daemon=True)
    killer.start()
    assert run(config(str(tmp_path / "in"), output, unit_size=2, batch_size=2)) == 0
    killer.join(timeout=5)
    assert killed, "the test did not find the actor to kill"
    assert "12 images (12 segmented, 0 errors" in capsys.readouterr().out
    tables = check_exactly_once(output, uris)
    assert tables["masks"].num_rows == 12


def test_killed_job_resumes_without_duplicates_and_removes_debris(ray_local, tmp_path, lake_files, capsys):
    """Kill a running `python -m jobs.segment` (the driver, its Ray runtime and actors) after some units
    were committed, then submit it again: it finishes the rest, and every image is there exactly once."""

    from jobtest_utils import kill_job_after_commits

    files, _, _ = lake_files
    names = ["astronaut.jpg", "coffee.png", "chelsea.JPG", "sub/rocket.jpeg", "odd/gray.png", "odd/one_pixel.png"]
    uris = put_files(str(tmp_path / "in"), {f"{i}/{n}": files[n] for i in range(3) for n in names})
    output = tmp_path / "out"
    argv = ["jobs.segment", str(tmp_path / "in"), str(output), "--vocab", VOCAB,
            "--model", "tiny", "--resolution", str(RESOLUTION), "--unit-size", "2", "--batch-size", "2",
            "--address", "local", "--num-cpus", "2", "--object-store-mb", "150"]
    committed = kill_job_after_commits(argv, output, tmp_path / "job.log")  # whole markers only
    assert 2 <= committed < 9
    # what a kill can leave: a unit's file that no commit names (here made explicit and unreadable)
    store = OutputStore(str(output))
    (killed,) = {store.get_json(r)["invocation"] for r in store.list("_log/default") if r.endswith(".json")
                 and not r.rsplit("/", 1)[1].startswith("_")}
    (output / "masks" / f"part-default-{killed}-00000000deadbeef-0badc0de.parquet").write_bytes(b"half-written")
    assert store.list(f"_plans/default/{killed}")  # the killed invocation's stored plan is left behind

    assert run(config(str(tmp_path / "in"), str(output), unit_size=2, batch_size=2)) == 0
    assert store.list("_plans") == []  # gone with the killed invocation's sweep; the resume removed its own
    counts = OutputStore(str(output)).get_json("manifest.json")["counts"]
    assert counts["already_done"] == 2 * committed and counts["processed"] == 18 - 2 * committed
    assert counts["debris_files_removed"] >= 1
    tables = check_exactly_once(str(output), uris)  # a plain read: no debris, no duplicates
    assert tables["masks"].num_rows == 18
    assert f"{18 - 2 * committed} images ({18 - 2 * committed} segmented" in capsys.readouterr().out
