"""`make demo` (jobs.demo): the job on the bundled photos and one broken file, then the report."""

import pyarrow.dataset as ds
import pytest

from jobs.demo import main

pytestmark = pytest.mark.slow


def test_demo_segments_the_photos_records_the_broken_file_and_says_masks_are_noise(
    ray_local, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DIFFSEG_DEMO_DIR", str(tmp_path))
    assert main() == 0
    out = capsys.readouterr().out
    assert "the masks are NOISE" in out
    output = tmp_path / "output"
    masks = ds.dataset(output / "masks", format="parquet").to_table(columns=["uri", "method"]).to_pylist()
    photos = {"astronaut.jpg", "coffee.jpg", "chelsea.png", "rocket.jpg"}
    assert sorted((r["uri"].rsplit("/", 1)[-1], r["method"]) for r in masks) == sorted(
        (p, m) for p in photos for m in ("diffsegmenter", "seediff"))
    errors = ds.dataset(output / "errors", format="parquet").to_table(columns=["uri", "stage"]).to_pylist()
    assert [(r["uri"].rsplit("/", 1)[-1], r["stage"]) for r in errors] == [("not-an-image.jpg", "decode")]
    assert (output / "manifest.json").exists()
    report = (tmp_path / "report.html").read_text()
    assert "chelsea.png" in report and "not-an-image.jpg" in report
    assert str(tmp_path / "report.html") in out
