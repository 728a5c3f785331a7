"""The null-model benchmark of the job's driver (jobs.bench.null_model): how it reads its samples, how it
splits the driver's CPU into a per-second and a per-image part, and one real run of the job with it."""

import json
import os
import subprocess
import sys

import pytest

from jobs.bench.null_model import cpu_line, make_lake, report, steady_window


def test_the_steady_window_leaves_out_start_up_and_the_tail():
    # 10 units; nothing for 5 s (start-up: 1 s of CPU), then one unit per second, CPU 0.1 s per second
    samples = [(t * 0.5, t * 0.1, 0) for t in range(10)]
    samples += [(5 + u, 1 + 0.1 * u, u) for u in range(1, 11)]
    seconds, cpu, units = steady_window(samples, 10)
    assert (seconds, units) == (8, 8)  # from the first sample with 1 unit done to the first with 9
    assert cpu == pytest.approx(0.8)
    # units that all land between two samples give no window (rather than a division by zero)
    assert steady_window([(0, 0, 0), (1, 1, 10)], 10) is None
    assert steady_window([(0, 0, 0), (1, 1, 3)], 10) is None


def test_the_cpu_line_recovers_a_per_second_and_a_per_image_cost():
    a, b = 30.0, 0.05  # ms per second, ms per image

    def point(images_per_s):
        return images_per_s, a + b * images_per_s

    assert cpu_line(point(900), point(110)) == pytest.approx((a, b))


def _row(mode, images, slow, img_s, cpu_ms_s, rss=400.0):
    steady = {"images_per_s": img_s, "cpu_ms_per_s": cpu_ms_s, "cpu_ms_per_image": cpu_ms_s / img_s, "window_s": 9}
    return {"mode": mode, "slow": slow, "images": images, "wall_s": 1, "images_per_s": 1,
            "driver_cpu_ms_per_image": 1, "driver_bytes_per_image": 4.4 if mode == "job" else None,
            "driver_peak_rss_mb": rss, "steady": steady}


def test_report_splits_the_driver_cpu_from_the_medians_of_repeated_runs():
    rows = []
    for mode, (a, b) in (("job", (30.0, 0.06)), ("native", (35.0, 0.04))):
        rows += [_row(mode, 1000, False, 500, 60)]
        # three repeats of the large run; the outlier (a loaded machine) does not move the median
        rows += [_row(mode, 10000, False, x, a + b * x, rss=420.0) for x in (800, 1000, 1000)]
        rows[-1]["steady"]["cpu_ms_per_s"] += 500
        rows += [_row(mode, 2560, True, 100, a + b * 100)]
    text = report(rows)
    assert "job: RSS at 10 N / N = 1.05; driver CPU = 30.0 ms per second + 0.0600 ms per image: " \
           "one driver core holds 16,167 images/s" in text
    assert "native: RSS at 10 N / N = 1.05; driver CPU = 35.0 ms per second + 0.0400 ms per image" in text
    assert len(text.splitlines()) == 1 + len(rows) + 1 + 2


@pytest.mark.slow
def test_one_null_model_run_of_the_job_writes_every_image_and_sends_the_driver_only_metadata(tmp_path):
    lake = tmp_path / "lake"
    make_lake(str(lake), 300)
    out = subprocess.run([sys.executable, "-m", "jobs.bench.null_model", "--unit-size", "100", "--num-cpus", "2",
                          "--one", "job", str(lake), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["images"] == 300 and row["driver_bytes_per_image"] < 256
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["processed"] == 300 and manifest["counts"]["errors"] == 0
    assert len(os.listdir(tmp_path / "out" / "masks")) == 3  # one file per unit
