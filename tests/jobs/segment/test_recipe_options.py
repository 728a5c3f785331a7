"""jobs.segment's recipe options (issue 11 item 1) and per-method thresholds (item 6): parsed into
JobConfig, handed to the Segmenter as recipe_kwargs, refused before anything is read when unusable."""

from __future__ import annotations

import pytest
from jobtest_utils import run_main

import diffseg.inputs
from diffseg import Vocabulary
from diffseg.recipes import SegmenterConfig, resolve_recipe
from jobs.segment.cli import build_parser, config_from_args, main


def config(*extra):
    return config_from_args(build_parser().parse_args(["in/", "out/", "--model", "tiny", "--vocab", "cat", *extra]))


def refused(tmp_path, monkeypatch, capsys, *extra) -> str:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["in/", "out/", "--model", "tiny", "--vocab", "cat", *extra])
    assert exit_.value.code == 2
    assert not (tmp_path / "out").exists()  # refused before anything was written
    return capsys.readouterr().err


def test_recipe_options_reach_the_config_and_the_segmenter_kwargs():
    c = config("--context", "per_class", "--timesteps", "20,100,200", "--template", "a photo of a {class}",
               "--class-token-weight", "1.1")
    assert (c.context, c.timesteps, c.template, c.class_token_weight) == ("per_class", (20, 100, 200),
                                                                         "a photo of a {class}", 1.1)
    assert c.recipe_kwargs() == {"context": "per_class", "timesteps": (20, 100, 200),
                                 "template": "a photo of a {class}", "class_token_weight": 1.1}
    assert c.to_dict()["timesteps"] == [20, 100, 200]  # JSON-ready for the manifest
    recipe = resolve_recipe(c.methods, SegmenterConfig(**c.recipe_kwargs()), Vocabulary(["cat"]))
    assert recipe == {"name": "diffsegmenter", "timesteps": [20, 100, 200], "template": "a photo of a {class}",
                      "separator": ", ", "context": "per_class", "class_token_weight": 1.1, "noise": True}


def test_no_recipe_option_leaves_each_methods_own_recipe():
    c = config("--method", "maskdiffusion")
    assert c.recipe_kwargs() == {"context": "joint"}
    recipe = resolve_recipe(c.methods, SegmenterConfig(**c.recipe_kwargs()), Vocabulary(["cat"]))
    assert recipe["timesteps"] == [0] and recipe["noise"] is False and recipe["template"] == "{classes}"


def test_per_method_thresholds_reach_the_config():
    c = config("--method", "diffsegmenter", "--method", "maskdiffusion",
               "--tau", "diffsegmenter=0.45", "--tau", "maskdiffusion=0.3")
    assert c.method_params == {"diffsegmenter": {"tau": 0.45}, "maskdiffusion": {"tau": 0.3}}
    c = config("--method", "diffsegmenter", "--method", "seediff", "--tau", "0.5")  # one scale: bare is fine
    assert c.method_params == {"diffsegmenter": {"tau": 0.5}, "seediff": {"tau": 0.5}}


@pytest.mark.parametrize("extra, message", [
    (["--method", "diffsegmenter", "--method", "maskdiffusion", "--tau", "0.4"],
     "--tau 0.4 would set thresholds on different scales"),
    (["--tau", "maskdiffusion=0.3"], "method maskdiffusion is not in use"),
    (["--tau", "diffsegmenter=7"], r"--tau 7.0: must be a finite number in \[0, 1\] for method diffsegmenter"),
    (["--tau", "nosuch=0.3"], "'nosuch' has no background threshold"),
    (["--timesteps", "10,x"], "argument --timesteps: '10,x': must be comma-separated whole numbers >= 0"),
    (["--template", "a photo of {class}"], "--template/--separator: .*must contain '{classes}'"),
    (["--context", "per_class", "--template", "photos of {classes}"], "must contain '{class}'"),
])
def test_unusable_recipe_or_threshold_options_exit_2(tmp_path, monkeypatch, capsys, extra, message):
    import re

    assert re.search(message, refused(tmp_path, monkeypatch, capsys, *extra))


def test_preflight_builds_the_prompt_with_the_recipe_and_refuses_a_too_long_template(tmp_path, capsys, monkeypatch):
    """The preflight encodes the prompt the actors will encode (--context per_class, --template): a template
    longer than one 77-token context exits 2 naming --template, before INPUT is listed or OUTPUT written."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"never read")

    def not_listed(*args, **kwargs):
        raise AssertionError("INPUT listed before the prompt was checked")

    monkeypatch.setattr(diffseg.inputs, "list_input", not_listed)
    template = "a photo of " + " ".join(["big"] * 80) + " {class}"
    code, out, err = run_main(main, capsys, tmp_path / "in", tmp_path / "out", "--model", "tiny", "--vocab", "cat",
                              "--resolution", "64", "--context", "per_class", "--template", template)
    assert code == 2
    assert "--template" in err and "longer than one 77-token context" in err
    assert not (tmp_path / "out").exists()
