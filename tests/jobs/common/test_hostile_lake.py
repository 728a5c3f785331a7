"""The segment job on a lake of hostile names and files: a name with '::', a name that is not UTF-8, a
FIFO and a link to /dev/zero, a manifest path with '#'. Nothing hangs, every listed name is one row."""

from __future__ import annotations

import os

import pytest
from jobtest_utils import MAX_PIXELS, RESOLUTION, check_exactly_once, encode

from jobs.common.config import JobConfig
from jobs.segment.run import run

pytestmark = pytest.mark.slow


def test_hostile_names_each_become_one_row_and_the_rest_of_the_lake_runs(ray_local, tmp_path, sample_photos, capsys):
    lake, output = tmp_path / "lake", str(tmp_path / "out")
    lake.mkdir()
    (lake / "colon").write_bytes(encode(sample_photos["coffee"], "PNG"))  # what fsspec's chaining would read
    (lake / "colon::x.png").write_bytes(encode(sample_photos["chelsea"], "PNG"))
    (lake / "take#2.jpg").write_bytes(encode(sample_photos["rocket"], "JPEG"))
    with open(os.path.join(os.fsencode(str(lake)), b"caf\xe9.jpg"), "wb") as f:
        f.write(encode(sample_photos["astronaut"], "JPEG"))
    os.mkfifo(lake / "fifo.jpg")  # reading it would block forever
    os.symlink("/dev/zero", lake / "zero.jpg")  # reading it would never end
    cfg = JobConfig(input=str(lake), output=output, vocab="cat, rocket", model="tiny", resolution=RESOLUTION,
                    batch_size=2, unit_size=8, max_pixels=MAX_PIXELS, max_error_fraction=1.0)
    assert run(cfg) == 0, capsys.readouterr()
    base = f"file://{lake}"
    escaped = f"{base}/caf%E9.jpg"
    tables = check_exactly_once(output, [f"{base}/colon::x.png", f"{base}/take#2.jpg", escaped])
    sizes = {m["uri"]: (m["height"], m["width"]) for m in tables["masks"].to_pylist()}
    assert sizes == {f"{base}/colon::x.png": sample_photos["chelsea"].shape[:2],
                     f"{base}/take#2.jpg": sample_photos["rocket"].shape[:2]}
    (error,) = tables["errors"].to_pylist()
    assert error["uri"] == escaped and error["error_type"] == "NonUtf8NameError"
    assert error["stage"] == "list" and "not valid UTF-8" in error["message"]

    # a rerun finds every listed name committed (the escaped one too): nothing to do
    assert run(cfg) == 0
    assert "nothing to do: all 3 input images are already committed" in capsys.readouterr().out

    # a manifest naming the FIFO and the link: read errors naming why, no hang
    (tmp_path / "list.txt").write_text(f"# hostile\n{lake}/fifo.jpg\n{lake}/zero.jpg\n{lake}/take#2.jpg\n")
    assert run(JobConfig(**{**cfg.__dict__, "input": str(tmp_path / "list.txt"), "run_id": "manifest"})) == 0
    tables = check_exactly_once(output, [f"{base}/fifo.jpg", f"{base}/zero.jpg", f"{base}/take#2.jpg"],
                                run_id="manifest")
    errors = {r["uri"]: r for r in tables["errors"].to_pylist()}
    for name in ("fifo.jpg", "zero.jpg"):
        assert errors[f"{base}/{name}"]["error_type"] == "NotRegularFileError"
        assert "not a regular file" in errors[f"{base}/{name}"]["message"]
