"""jobs.evaluate with several runs: settings side by side, each tau fitted on FIT, ranked on EVAL."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_evaluate import METHOD, VOCAB, mask_row, run_cli, save_gt, write_output

from diffseg.eval.compare import RunRef, parse_runs
from diffseg.eval.errors import EvaluationError
from diffseg.lake.store import OutputStore

STEMS = ["a1", "a2", "a3", "a4", "a5", "a6"]


def write_run(root, run_id: str, rows: list[dict], config: dict) -> str:
    """One committed run in OUTPUT `root`, recorded as jobs.segment records it: _runs/<id>.json, its
    manifest under _history/<id>/, and manifest.json (so the last run written is the latest)."""
    write_output(root, rows, run_id=run_id)
    store = OutputStore(str(root))
    manifest = {
        "run_id": run_id,
        "config": {"input": "s3://lake/images/", "batch_size": 8, "resolution": 512, **config},
        "model": {"uri": "tiny"},
        "vocabulary": {"classes": VOCAB, "hash": "h", "template": "a photograph of {classes}"},
    }
    store.put_json(f"_runs/{run_id}.json", {"run_id": run_id, "identity": {"model": "tiny"}, "classes": VOCAB})
    store.put_json(f"_history/{run_id}/20261130T000000Z.json", manifest)
    store.put_json("manifest.json", manifest)  # replaces write_output's short one
    return str(root)


def image(cat: float, noise: float, spot: float | None = None, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(label, scores): cat scores `cat` on the left half (the ground truth's cat), `noise` on the right
    (background), and `spot` on the right half's top quarter when given; background 0.4, dog 0.1."""
    scores = np.zeros((3, size, size), np.float32)
    scores[0], scores[2] = 0.4, 0.1
    scores[1] = noise
    scores[1][:, : size // 2] = cat
    if spot is not None:
        scores[1][: size // 4, size // 2 :] = spot
    return scores.argmax(axis=0).astype(np.uint8), scores


def rows_of(stems, cat, noise, spot=None) -> list[dict]:
    return [mask_row(s, *image(cat, noise, spot)) for s in stems]


@pytest.fixture
def runs(tmp_path):
    """Three runs of the same six images (ground truth: left half cat, right half background):
    "sharp" is perfect at any tau in (0.2, 0.8); "spotty" calls a quarter of the background cat at every
    tau that keeps the cat; "flat" (another OUTPUT, one more image) scores the background above the cat."""
    gt = np.zeros((16, 16), np.uint8)
    gt[:, :8] = 8
    for stem in [*STEMS, "extra"]:
        save_gt(tmp_path / "gt", stem, gt)
    joint = {"context": "joint", "filter_ratio": 0.2}
    write_run(tmp_path / "out", "spotty", rows_of(STEMS, 0.8, 0.2, spot=0.9), joint)
    write_run(tmp_path / "out", "sharp", rows_of(STEMS, 0.8, 0.2), {"context": "per_class", "filter_ratio": 0.2})
    write_run(tmp_path / "other", "flat", rows_of([*STEMS, "extra"], 0.7, 0.9), {**joint, "timesteps": [100]})
    return tmp_path


def test_ranking_has_the_known_winner_and_says_what_differed(runs, capsys):
    code, stdout, err = run_cli(
        capsys, runs / "out", f"{runs / 'other'}#flat", "--run-id", "spotty", "--run-id", "sharp",
        "--gt", runs / "gt", "--class-map", _class_map(runs),
        "--fit", "tau", "--holdout", "0.5", "--out", runs / "ev",
    )
    assert code == 0, err
    result = json.loads((runs / "ev" / "comparison.json").read_text())
    ranking = result["ranking"]
    assert [r["run"] for r in ranking] == [f"{runs / 'out'}#sharp", f"{runs / 'out'}#spotty", f"{runs / 'other'}#flat"]
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    assert ranking[0]["miou"] == pytest.approx(1.0) and ranking[0]["fit_miou"] == pytest.approx(1.0)
    assert 0.2 < ranking[0]["tau"] < 0.8 and ranking[0]["tau_source"] == "fit"
    # spotty, best tau (< 0.8): cat IoU 128 / (128 + 32), background IoU 96 / 128
    assert ranking[1]["miou"] == pytest.approx((128 / 160 + 96 / 128) / 2)
    assert ranking[2]["miou"] < ranking[1]["miou"]
    # every row on the same images: the six all runs have ("extra" is only in "flat"), split alike
    assert result["common_images"] == 6
    assert len({(r["images"], r["n_fit"]) for r in ranking}) == 1 and ranking[0]["images"] + ranking[0]["n_fit"] == 6
    assert result["differing"] == ["context", "timesteps"]
    assert ranking[0]["settings"] == {"context": "per_class", "timesteps": None}
    assert ranking[2]["settings"] == {"context": "joint", "timesteps": [100]}
    markdown = (runs / "ev" / "comparison.md").read_text()
    assert markdown in stdout
    assert "| rank | run | method | context | timesteps | tau |" in markdown
    assert f"| 1 | {runs / 'out'}#sharp | {METHOD} | per_class | – |" in markdown
    assert "| 100 |" in markdown and "filter_ratio = 0.2" in markdown and "resolution = 512" in markdown
    assert "batch_size" not in markdown and "input" not in result["differing"]
    # fitted.json is the winner's, ready for `jobs.segment --fitted`
    fitted = json.loads((runs / "ev" / "fitted.json").read_text())
    assert fitted[METHOD]["run_id"] == "sharp" and fitted[METHOD]["tau"] == ranking[0]["tau"]
    assert not (runs / "ev" / "metrics.json").exists()


def _class_map(root) -> str:
    path = root / "classes.txt"
    path.write_text("background: 0\ncat: 8\ndog: 12\n")
    return str(path)


def test_one_run_still_writes_metrics_and_the_hash_form_picks_the_run(runs, capsys):
    code, _, err = run_cli(
        capsys, f"{runs / 'out'}#spotty", "--gt", runs / "gt", "--class-map", _class_map(runs), "--out", runs / "ev"
    )
    assert code == 0, err
    result = json.loads((runs / "ev" / "metrics.json").read_text())
    assert result["run_id"] == "spotty" and result["methods"][METHOD]["images"] == 6
    assert not (runs / "ev" / "comparison.json").exists()


def test_parse_runs_syntax():
    assert parse_runs(["o1", "o2#r"], ["a", "b"]) == [RunRef("o1", "a"), RunRef("o1", "b"), RunRef("o2", "r")]
    assert parse_runs(["s3://b/o"]) == [RunRef("s3://b/o", None)]
    with pytest.raises(EvaluationError, match="expected OUTPUT or OUTPUT#RUN_ID"):
        parse_runs(["o#"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{out}#sharp", "{out}#sharp"], "runs named twice"),
        (["{out}#sharp", "{out}#spotty", "--fitted", "f.json"], "--fitted applies to one run"),
        (["{out}#sharp", "{out}#nope"], "has no run 'nope'"),
    ],
)
def test_comparison_errors(runs, capsys, argv, message):
    argv = [a.format(out=runs / "out") for a in argv]
    code, _, err = run_cli(capsys, *argv, "--gt", runs / "gt", "--class-map", _class_map(runs), "--out", runs / "ev")
    assert code == 2 and message in err
