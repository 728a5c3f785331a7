"""The end-to-end pipeline benchmark (jobs.bench.pipeline) and the commit benchmark (jobs.bench.commits):
their reports carry every figure the docs quote (never a timing assert), the stand-in's results look like
the Segmenter's, and the commit benchmark commits every unit through the real driver path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jobs.bench.commits import SlowStore, run_commits
from jobs.bench.pipeline import CLASSES, blob_scores, cpus_per_gpu


def test_the_commit_bench_commits_every_unit_and_counts_its_requests(tmp_path):
    r = run_commits(units=40, unit_size=8, latency_ms=1.0)
    assert (r["units"], r["compactions"]) == (40, 0)
    assert 1 <= r["entries"] <= 40 and r["store_requests"] >= r["entries"]  # one log append per entry at least
    stale = run_commits(units=10, unit_size=8, latency_ms=1.0, stale=True)
    assert stale["store_requests"] > stale["entries"]  # the late attempts' files were deleted too


def test_the_slow_store_waits_before_every_request(tmp_path):
    store = SlowStore(str(tmp_path), 0.0)
    store.put("a.txt", b"x")
    assert store.get("a.txt") == b"x" and store.exists("a.txt")
    store.remove(["a.txt"])
    assert store.requests == 4


def test_stand_in_scores_give_five_to_ten_classes_and_sizing_adds_the_actor():
    import torch

    from diffseg.segmentation import scores_to_labels

    scores = blob_scores((1382, 2048), seed=3)
    assert scores.shape == (1 + CLASSES, 64, 64) and scores.dtype == np.float32
    labels, counts = scores_to_labels(torch.from_numpy(scores), (1382, 2048), 1024)
    assert labels.shape == (691, 1024) and labels.dtype == np.uint8  # the argmax size of a 2.8 MP photo
    assert 3 <= np.count_nonzero(counts[1:]) <= 10
    assert cpus_per_gpu(15.0, 200) == 5  # 3 CPUs of work at 75 % use -> 4, plus the actor's own


@pytest.mark.slow
def test_pipeline_bench_reports_every_figure(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jobs.bench.pipeline", "--images", "24", "--unit-size", "8",
                          "--batch-size", "4", "--ms-per-image", "5", "--json"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    r = json.loads(lines[-1])
    assert r["photos"]["images"] == 24 and r["units"] == 3 and r["stand_in_images_per_s"] == 200.0
    assert set(r["cpu_ms_per_image"]) == {"decode", "model", "encode", "write", "driver"}
    assert all(v is not None and v >= 0 for v in r["cpu_ms_per_image"].values())
    assert r["pipeline_efficiency"] > 0 and r["compactions"] == 0 and r["commit_entries"] >= 1
    assert set(r["cpus_per_gpu"]) == {"200", "400"} and r["cpus_per_gpu"]["400"] >= r["cpus_per_gpu"]["200"] >= 2
    text = "\n".join(lines[:-1])
    for words in ("pipeline efficiency:", "CPU ms per image: decode", "compactions: 0 of 3 units", "CPUs per GPU:"):
        assert words in text, words
