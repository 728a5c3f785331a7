"""The `diffseg` console script (jobs.cli): commands, --version, help with exit codes, no Ray for images."""

import os
import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]

def run_help(command, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_help_lists_every_command_with_one_line_and_the_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, line) in COMMANDS.items():
        assert f"  {name}" in out and line in out
    assert set(COMMANDS) == {"segment", "synthesize", "evaluate", "report", "export", "status", "bench", "image"}
    codes = out.split("exit codes", 1)[1]
    for code in ("0  success", "1  the run failed", "2  bad option", "3  finished with more errors"):
        assert code in codes
    assert "examples:" in out


def test_no_arguments_prints_the_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().err


def test_version_is_the_installed_distribution_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"diffseg {version('diffseg')}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_exits_0_and_names_its_exit_codes(command, capsys):
    out = run_help(command, capsys)
    assert "usage:" in out
    assert "exit codes" in out.lower()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_has_examples(command, capsys):
    assert "examples:" in run_help(command, capsys)


def test_a_command_gets_the_rest_of_argv_and_its_exit_code_is_returned(monkeypatch):
    seen = []
    fake = types.ModuleType("jobs.status.cli")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "jobs.status.cli", fake)
    assert main(["status", "s3://lake/seg/", "--run-id", "nightly"]) == 3
    assert seen == [["s3://lake/seg/", "--run-id", "nightly"]]
    assert main(["help", "status"]) == 3 and seen[-1] == ["--help"]


def test_an_unknown_command_exits_2_and_suggests_the_nearest(capsys):
    assert main(["segmnet", "in/", "out/"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'segmnet'" in err and "did you mean 'segment'" in err


def test_images_without_a_command_are_the_image_command(monkeypatch):
    seen = []
    fake = types.ModuleType("diffseg.__main__")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "diffseg.__main__", fake)
    assert main(["photo.jpg", "--vocab", "cat"]) == 0
    assert main(["--vocab", "cat", "s3://b/x.png"]) == 0
    assert seen == [["photo.jpg", "--vocab", "cat"], ["--vocab", "cat", "s3://b/x.png"]]


def test_the_console_script_is_this_main():
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert 'diffseg = "jobs.cli:console_main"' in scripts  # main, then exit through process_exit


# every command of `diffseg`, with a required positional satisfied so that only the option is wrong
MISSPELT = {
    "segment": (["in/", "out/", "--vocab", "cat", "--model", "tiny", "--batch-szie", "2"], "--batch-size"),
    "synthesize": (["out/", "--classes", "cat", "--model", "tiny", "--per-calss", "2"], "--per-class"),
    "evaluate": (["out/", "--gt", "gt/", "--class-mapp", "m.txt"], "--class-map"),
    "report": (["out/", "--max-image", "3", "--max-imagse", "3"], "--max-images"),
    "export": (["out/", "dest/", "--fromat", "coco"], "--format"),
    "status": (["out/", "--jsno"], "--json"),
    "bench": (["--modle", "tiny"], "--model"),
    "image": (["photo.jpg", "--vocab", "cat", "--outt", "x/"], "--out"),
}


@pytest.mark.parametrize("command", sorted(MISSPELT))
def test_a_misspelt_option_names_the_right_one_and_the_command_as_called(command, capsys):
    argv, right = MISSPELT[command]
    with pytest.raises(SystemExit) as exc:
        main([command, *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"did you mean {right}" in err, err  # the nearest first
    assert f"usage: diffseg {command} " in err and "python -m" not in err.split("\n")[0], err


def test_python_m_usage_names_python_m(capsys):
    from jobs.export.cli import main as export_main

    with pytest.raises(SystemExit):
        export_main(["out/", "dest/", "--fromat", "coco"])
    err = capsys.readouterr().err
    assert "usage: python -m jobs.export " in err and "did you mean --format?" in err


def test_an_unknown_option_without_a_near_one_points_at_help(capsys):
    with pytest.raises(SystemExit):
        main(["status", "out/", "--zzzzzz"])
    assert "unrecognized option --zzzzzz (diffseg status --help lists the options)" in capsys.readouterr().err


@pytest.mark.slow
def test_image_command_runs_without_ray_installed(tmp_path):
    """`diffseg image` and today's `diffseg photo.jpg` in a process where `import ray` fails."""
    photos = {"wide": np.zeros((40, 90, 3), np.uint8), "tall": np.full((70, 30, 3), 200, np.uint8)}
    for name, array in photos.items():
        Image.fromarray(array).save(tmp_path / f"{name}.png")
    code = ("import sys; sys.modules['ray'] = None; from jobs.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    common = ["--vocab", "cat, dog", "--model", "tiny", "--resolution", "128", "--dtype", "fp32", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (["image", str(tmp_path / "wide.png"), "--out", str(tmp_path / "a")],
                 [str(tmp_path / "tall.png"), "--out", str(tmp_path / "b")]):
        done = subprocess.run([sys.executable, "-c", code, *args, *common], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "No module named 'ray'" not in done.stderr
    wide = np.asarray(Image.open(tmp_path / "a" / "wide.diffsegmenter.labels.png"))
    tall = np.asarray(Image.open(tmp_path / "b" / "tall.diffsegmenter.labels.png"))
    assert wide.shape == (40, 90) and tall.shape == (70, 30)
