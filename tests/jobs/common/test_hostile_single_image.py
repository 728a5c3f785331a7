"""`python -m diffseg` against careless input: no traceback on a bad option, one output per input even
when stems repeat, the exact file a `::` name names, and no credential of a URL printed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffseg.__main__ import main, output_stems

KEY, SECRET = "AKIASINGLEIMAGE", "single/Secret+Key"


def test_batch_size_zero_is_a_usage_error_without_traceback(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["x.jpg", "--vocab", "cat", "--batch-size", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --batch-size: '0': must be a whole number >= 1" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["x.jpg", "--vocab", "cat", "--tau", "nan"])
    assert "argument --tau: 'nan': must be a finite number" in capsys.readouterr().err


def test_output_names_are_distinct_when_stems_repeat():
    assert output_stems(["a/pic.bmp", "b/pic.webp", "c/other.jpg"]) == ["pic.bmp", "pic.webp", "other"]
    assert output_stems(["a/pic.jpg", "b/pic.jpg", "pic.jpg-2"]) == ["pic.jpg", "pic.jpg-3", "pic.jpg-2"]
    assert output_stems(["s3://b/x/colon::x.png"]) == ["colon::x"]


@pytest.mark.slow
def test_each_input_gets_its_own_outputs_and_colon_names_are_exact(tmp_path, capsys):
    rng = np.random.default_rng(0)
    sizes = {"pic.bmp": (40, 50), "pic.webp": (60, 30), "colon": (20, 20), "colon::x.png": (70, 90)}
    for name, (h, w) in sizes.items():
        fmt = {"bmp": "BMP", "webp": "WEBP"}.get(name.rsplit(".", 1)[-1], "PNG")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name, format=fmt)
    out = tmp_path / "out"
    code = main([str(tmp_path / n) for n in ("pic.bmp", "pic.webp", "colon::x.png")] +
                ["--vocab", "cat, dog", "--model", "tiny", "--resolution", "64", "--out", str(out), "--dtype", "fp32",
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr()
    for name, stem in (("pic.bmp", "pic.bmp"), ("pic.webp", "pic.webp"), ("colon::x.png", "colon::x")):
        meta = json.loads((out / f"{stem}.diffsegmenter.json").read_text())
        assert (meta["height"], meta["width"]) == sizes[name]  # the file itself, not 'colon' nor the other pic
        assert Image.open(out / f"{stem}.diffsegmenter.labels.png").size == sizes[name][::-1]


def test_credentials_in_image_urls_are_never_printed(bucket, tmp_path, capsys):
    code = main([f"s3://{KEY}:{SECRET}@{bucket}/missing.jpg", "--vocab", "cat", "--model", "tiny",
                 "--resolution", "64", "--out", str(tmp_path / "out"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1 and "skipped s3://***@" in err
    assert KEY not in out + err and "Secret+Key" not in out + err and "single" not in out + err
