"""Careless options refused before anything is read (exit 2 naming the value and the rule), preflight
checks of the model as the actor would fail, and no credential of a URL argument ever printed."""

from __future__ import annotations

import pytest
from jobtest_utils import run_main

from diffseg import Vocabulary
from jobs.common.checks import check_background, check_model_setup
from jobs.common.config import ConfigError

KEY, SECRET = "AKIAHOSTILEEXAMPLE", "sEcReT/hostile+Example"


def _segment(argv):
    from jobs.segment.cli import main

    return main(argv)


def _synthesize(argv):
    from jobs.synthesize.cli import main

    return main(argv)


@pytest.mark.parametrize("extra, message", [
    (["--vocab", "clases.txt"], "'clases.txt' looks like a file path but no such file exists"),
    (["--vocab", "lists/"], "'lists/' is a folder, not a class file"),
    (["--vocab", "voc/list"], "'voc/list' looks like a file path"),
    (["--vocab", "cat, Cat, CAT"], "unique ignoring case and spaces; repeated: cat = Cat = CAT"),
    (["--vocab", "cat", "--tau", "nan"], "argument --tau: 'nan': must be a finite number"),
    (["--vocab", "cat", "--tau", "5"], r"--tau 5.0: must be a finite number in \[0, 1\] for method diffsegmenter"),
    (["--vocab", "cat", "--method", "maskdiffusion", "--method", "diffsegmenter", "--tau", "-0.5"],
     r"in \[0, 1\] for method diffsegmenter"),
    (["--vocab", "cat", "--num-cpus", "0"], "argument --num-cpus: '0': must be a whole number >= 1"),
    (["--vocab", "cat", "--object-store-mb", "-5"], "argument --object-store-mb: '-5'"),
    (["--vocab", "cat", "--read-timeout", "0"], "argument --read-timeout: '0': must be a number > 0"),
    (["--vocab", "cat", "--max-read-bytes", "0"], "argument --max-read-bytes: '0'"),
    (["--vocab", "cat", "--resolution", "0"], "argument --resolution: '0'"),
])
def test_segment_refuses_careless_options_with_exit_2(tmp_path, monkeypatch, capsys, extra, message):
    import re

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lists").mkdir()
    with pytest.raises(SystemExit) as exit_:
        _segment(["in/", "out/", "--model", "tiny", *extra])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_maskdiffusion_tau_is_relative_to_the_images_own_cosines():
    check_background({"maskdiffusion": {"tau": 0.5}})
    with pytest.raises(ConfigError, match=r"--fitted -0.5: must be a finite number in \[0, 1\] for method maskdiffusion"):
        check_background({"maskdiffusion": {"tau": -0.5}}, "--fitted")


def test_synthesize_refuses_a_typo_in_classes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        _synthesize(["out/", "--classes", "voc.txt", "--per-class", "1", "--model", "tiny"])
    assert exit_.value.code == 2 and "'voc.txt' looks like a file path" in capsys.readouterr().err


def test_preflight_checks_resolution_and_prompt_as_the_actor_would(tiny_pipe, tmp_path):
    from diffseg.model import save_pipeline

    folder = str(save_pipeline(tiny_pipe, tmp_path / "sd"))
    vocab = Vocabulary(["cat", "potted plant"])
    for model in ("tiny", folder):
        check_model_setup(model, vocab, 128)
        with pytest.raises(ConfigError, match=r"--resolution 100: must be a multiple of 64, the model's total "
                                              r"downsampling .*e.g. 64 or 128"):
            check_model_setup(model, vocab, 100)
    long_name = " ".join(["potted"] * 80)
    with pytest.raises(ConfigError, match="--vocab: vocabulary: 'potted potted .* longer than one 77-token context"):
        check_model_setup("tiny", Vocabulary(["cat", long_name]), 128)
    with pytest.raises(ConfigError, match="--classes: class 'potted potted"):
        check_model_setup("tiny", Vocabulary([long_name], class_template="a photograph of a {class}"), 128,
                          mode="per_class", option="--classes")


@pytest.mark.parametrize("position", ["input", "output", "--vocab", "--model", "--fitted"])
def test_credentials_in_any_url_argument_are_never_printed(bucket, tmp_path, capsys, caplog, position):
    secret_uri = f"s3://{KEY}:{SECRET}@{bucket}/x/"
    args = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "--vocab": "cat", "--model": "tiny"}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"not read")
    if position == "--fitted":
        args["--fitted"] = secret_uri + "fitted.json"
    else:
        args[position] = secret_uri + ("classes.txt" if position == "--vocab" else "")
    argv = [args.pop("input"), args.pop("output")] + [x for kv in args.items() for x in kv]
    code, out, err = run_main(_segment, capsys, *argv)
    shown = out + err + caplog.text
    assert code == 2, shown
    assert SECRET not in shown and KEY not in shown and "sEcReT" not in shown
    assert bucket in shown  # the message still names where
