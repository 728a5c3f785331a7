"""jobs.evaluate on a small hand-made OUTPUT and ground truth: figures, the fit/eval protocol, errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from jobtest_utils import run_main
from PIL import Image

from diffseg.codecs.masks import encode_label_png, encode_scores_png
from diffseg.eval.errors import EvaluationError
from diffseg.eval.evaluate import evaluate_output
from diffseg.eval.protocol import DEFAULT_GRID, Split, in_holdout, parse_grid
from diffseg.lake.schemas import SCHEMAS
from diffseg.lake.store import OutputStore
from diffseg.lake.units import Unit, unit_id_of, write_unit
from jobs.evaluate.cli import main

VOCAB = ["cat", "dog"]
METHOD = "diffsegmenter"


def write_output(root, masks: list[dict], errors: list[dict] = (), run_id: str = "r1") -> str:
    """A committed OUTPUT (one unit) as jobs.segment writes it, with a manifest naming VOCAB."""
    store = OutputStore(str(root))
    rows = [
        {"method": METHOD, "classes": [], "run_id": run_id, "model": "tiny", "vocab_hash": "h", **m}
        for m in masks
    ]
    uris = sorted({r["uri"] for r in rows} | {e["uri"] for e in errors})
    tables = {
        "masks": pa.Table.from_pylist(rows, schema=SCHEMAS["masks"]),
        "stats": SCHEMAS["stats"].empty_table(),
        "errors": pa.Table.from_pylist([{"run_id": run_id, **e} for e in errors], schema=SCHEMAS["errors"]),
    }
    write_unit(store, run_id, Unit(unit_id_of(uris), tuple(uris)), tables)
    store.put_json("manifest.json", {"run_id": run_id, "vocabulary": {"classes": VOCAB, "hash": "h"}})
    return str(root)


def mask_row(stem: str, label: np.ndarray, scores: np.ndarray | None = None) -> dict:
    return {
        "uri": f"s3://lake/images/{stem}.jpg",
        "width": label.shape[1],
        "height": label.shape[0],
        "label_map_png": encode_label_png(label.astype(np.uint8)),
        "scores_png": None if scores is None else encode_scores_png(scores),
    }


def save_gt(folder, stem: str, gt: np.ndarray, palette: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(gt.astype(np.uint8), mode="L")
    if palette:  # PASCAL VOC ships palette PNGs; their indices are the class ids
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
        image.frombytes(gt.astype(np.uint8).tobytes())
    image.save(folder / f"{stem}.png")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    return run_main(main, capsys, *argv)


def evaluate(capsys, tmp_path, out, class_map, *options, to="ev") -> tuple[int, str, str]:
    """`python -m jobs.evaluate OUT --gt tmp_path/gt --class-map MAP OPTIONS --out tmp_path/TO`."""
    return run_cli(
        capsys, out, "--gt", tmp_path / "gt", "--class-map", class_map, *options, "--out", tmp_path / to
    )


@pytest.fixture
def class_map(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# vocabulary name: ground-truth id (PASCAL VOC ids)\nbackground: 0\ncat: 8\ndog: 12\n")
    return path


# --- figures of the job's own labels ------------------------------------------------------------------


def test_known_figures_with_resize_palette_gt_ignore_and_unmatched(tmp_path, capsys, class_map):
    gt_dir = tmp_path / "gt"
    # image a: top half cat, bottom half background, one ignore pixel; prediction at half size (8x8),
    # exact except one 2x2 block of background predicted as dog.
    gt_a = np.zeros((16, 16), np.uint8)
    gt_a[:8] = 8
    gt_a[0, 0] = 255
    pred_a = np.zeros((8, 8), np.uint8)
    pred_a[:4] = 1
    pred_a[7, 7] = 2
    # image b: all dog (palette PNG); the prediction calls the first column cat.
    gt_b = np.full((16, 16), 12, np.uint8)
    pred_b = np.full((16, 16), 2, np.uint8)
    pred_b[:, 0] = 1
    save_gt(gt_dir, "a", gt_a)
    save_gt(gt_dir, "b", gt_b, palette=True)
    save_gt(gt_dir, "only_gt", gt_b)
    out = write_output(
        tmp_path / "out", [mask_row("a", pred_a), mask_row("b", pred_b), mask_row("no_gt", pred_b)]
    )

    code, stdout, _ = run_cli(capsys, out, "--gt", gt_dir, "--class-map", class_map, "--out", tmp_path / "ev")
    assert code == 0
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    e = result["methods"][METHOD]
    # Rows = ground truth (ids 0, 8, 12), columns = prediction, counted by hand:
    #   background: 128 px, 124 right, 4 (the 2x2 block) dog; cat: 127 px (one ignored), all right;
    #   dog: 256 px, 240 right, 16 (first column) cat.
    cm = np.array(e["confusion_matrix"])
    assert cm.shape == (13, 13)
    assert cm[0, 0] == 124 and cm[0, 12] == 4 and cm[8, 8] == 127 and cm[12, 12] == 240 and cm[12, 8] == 16
    assert cm.sum() == 128 + 127 + 256
    iou = {0: 124 / 128, 8: 127 / (127 + 143 - 127), 12: 240 / (256 + 244 - 240)}
    for cid, value in iou.items():
        assert e["iou"][cid] == pytest.approx(value)
    assert all(e["iou"][i] is None for i in range(13) if i not in iou)
    assert e["miou"] == pytest.approx(sum(iou.values()) / 3)
    assert e["pixel_accuracy"] == pytest.approx((124 + 127 + 240) / 511)
    assert e["tau"] is None and e["tau_source"] == "job" and e["images"] == 2
    assert e["matching"]["matched"] == 2 and e["matching"]["predictions_without_gt"] == ["no_gt"]
    assert e["matching"]["gt_without_prediction"] == 1
    assert [c["name"] for c in result["classes"]][:1] == ["background"] and result["classes"][12][
        "name"
    ] == "dog"
    markdown = (tmp_path / "ev" / "metrics.md").read_text()
    assert f"{100 * e['miou']:.2f}" in markdown and f"| 8 | cat | {100 * iou[8]:.1f} |" in markdown
    assert f"| 12 | dog | {100 * iou[12]:.1f} |" in markdown
    assert markdown in stdout
    assert not (tmp_path / "ev" / "fitted.json").exists()


# --- the honest protocol ------------------------------------------------------------------------------


def scored_image(cat_score: float, noise: float, size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt, job label, scores): left half cat scoring `cat_score`, right half background where cat scores
    `noise`; dog scores 0.1 everywhere; the job's background score is 0.4."""
    gt = np.zeros((size, size), np.uint8)
    gt[:, : size // 2] = 8
    scores = np.zeros((3, size, size), np.float32)
    scores[0] = 0.4
    scores[1] = noise
    scores[1][:, : size // 2] = cat_score
    scores[2] = 0.1
    return gt, scores.argmax(axis=0).astype(np.uint8), scores


def make_scored(tmp_path, stems_fit, stems_eval, name="out"):
    """Fit-type images are perfect for any tau in (0.3, 0.7); eval-type ones for tau in (0.55, 0.9)."""
    rows = []
    for stems, (cat, noise) in ((stems_fit, (0.7, 0.3)), (stems_eval, (0.9, 0.55))):
        for stem in stems:
            gt, label, scores = scored_image(cat, noise)
            gt[0, -1] = 255  # an ignore pixel in every image
            save_gt(tmp_path / "gt", stem, gt)
            rows.append(mask_row(stem, label, scores))
    return write_output(tmp_path / name, rows)


def test_fit_uses_only_the_fit_split_and_reports_only_the_eval_split(tmp_path, capsys, class_map):
    fit, evl = ["f1", "f2", "f3"], ["e1", "e2"]
    out = make_scored(tmp_path, fit, evl)
    (tmp_path / "fit.txt").write_text("f1\ns3://lake/images/f2.jpg\nf3.png\n")  # stems, URIs or file names
    (tmp_path / "eval.txt").write_text("e1\ne2\n")
    code, _, err = evaluate(
        capsys,
        tmp_path,
        out,
        class_map,
        "--fit",
        "tau",
        "--fit-split",
        tmp_path / "fit.txt",
        "--eval-split",
        tmp_path / "eval.txt",
        to="ev",
    )
    assert code == 0, err
    fitted = json.loads((tmp_path / "ev" / "fitted.json").read_text())[METHOD]
    # the fit split's optimum plateau is 0.35..0.65 -> its middle, 0.5; the eval split's would be > 0.55
    assert fitted["tau"] == pytest.approx(0.5)
    assert fitted["fit_miou"] == pytest.approx(1.0) and fitted["n_fit"] == 3 and fitted["fit_stems"] == fit
    e = json.loads((tmp_path / "ev" / "metrics.json").read_text())["methods"][METHOD]
    assert e["tau"] == pytest.approx(0.5) and e["tau_source"] == "fit"
    assert e["images"] == 2 and e["protocol"]["n_fit"] == 3 and e["protocol"]["n_eval"] == 2
    # at tau 0.5 the eval images' background (0.55) is all called cat: background IoU 0, cat IoU 0.5
    # (2 x 128 cat pixels over a union of 2 x 255 counted pixels, one ignored per image)
    assert e["iou"][0] == 0.0 and e["iou"][8] == pytest.approx(256 / 510)
    assert e["miou"] == pytest.approx(256 / 510 / 2)
    assert e["pixel_accuracy"] == pytest.approx(256 / 510)
    assert e["as_run"]["miou"] == pytest.approx(e["miou"])  # the job's tau 0.4 errs the same way here

    # jobs.evaluate only parses options: the library call with the same values returns its metrics.json
    split = Split(fit=frozenset(fit), eval=frozenset(evl))
    grid = parse_grid(DEFAULT_GRID)
    result = evaluate_output(out, str(tmp_path / "gt"), str(class_map), split=split, fit_grid=grid)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == json.loads(json.dumps(result))

    # a later run passes the fitted values back: same tau, and the fit images are left out
    code, _, err = evaluate(
        capsys, tmp_path, out, class_map, "--fitted", tmp_path / "ev" / "fitted.json", to="ev2"
    )
    assert code == 0, err
    again = json.loads((tmp_path / "ev2" / "metrics.json").read_text())["methods"][METHOD]
    assert again["tau"] == pytest.approx(0.5) and again["tau_source"] == "fitted"
    assert again["images"] == 2 and again["protocol"]["excluded_fitted"] == 3
    assert again["miou"] == pytest.approx(e["miou"])


def test_the_library_refuses_two_sources_of_tau(tmp_path, class_map):
    out = make_scored(tmp_path, ["f1"], [])
    with pytest.raises(EvaluationError, match="at most one of fit_grid, tau and fitted_uri"):
        evaluate_output(out, str(tmp_path / "gt"), str(class_map), tau=0.4, fit_grid=np.array([0.5]))


def test_tau_outside_the_plateau_is_worse(tmp_path, capsys, class_map):
    out = make_scored(tmp_path, ["f1", "f2"], [])
    results = {}
    for tau in ("0.5", "0.8"):
        code, _, err = evaluate(capsys, tmp_path, out, class_map, "--tau", tau, to=tau)
        assert code == 0, err
        results[tau] = json.loads((tmp_path / tau / "metrics.json").read_text())["methods"][METHOD]["miou"]
    assert results["0.5"] == pytest.approx(1.0)
    # tau 0.8 > every cat score (0.7): all background -> background IoU 127 / 255 (one pixel of the
    # background half is ignored), cat IoU 0
    assert results["0.8"] == pytest.approx(127 / 255 / 2)


def test_holdout_split_is_deterministic_disjoint_and_per_image(tmp_path, capsys, class_map):
    stems = [f"img{i:02d}" for i in range(20)]
    out = make_scored(tmp_path, stems, [])
    runs = []
    for name in ("h1", "h2"):
        code, _, err = evaluate(
            capsys, tmp_path, out, class_map, "--fit", "tau", "--holdout", "0.5", "--seed", "3", to=name
        )
        assert code == 0, err
        runs.append((tmp_path / name / "fitted.json").read_text())
    assert runs[0] == runs[1]
    fitted = json.loads(runs[0])[METHOD]
    expected_eval = {s for s in stems if in_holdout(s, 0.5, 3)}
    assert set(fitted["fit_stems"]) == set(stems) - expected_eval
    assert 0 < len(expected_eval) < 20
    e = json.loads((tmp_path / "h1" / "metrics.json").read_text())["methods"][METHOD]
    assert e["images"] == len(expected_eval) and e["protocol"]["n_fit"] == 20 - len(expected_eval)
    assert e["miou"] == pytest.approx(1.0) and fitted["tau"] == pytest.approx(0.5)
    # an image's split never depends on the others
    assert {s for s in stems[:7] if in_holdout(s, 0.5, 3)} == expected_eval & set(stems[:7])


# --- clear errors -------------------------------------------------------------------------------------


def test_clear_errors(tmp_path, capsys, class_map):
    gt, label, scores = scored_image(0.7, 0.3)
    save_gt(tmp_path / "gt", "a", gt)
    out = write_output(tmp_path / "out", [mask_row("a", label)])  # no scores saved
    base = [out, "--class-map", class_map, "--out", tmp_path / "ev"]

    code, _, err = run_cli(capsys, *base, "--gt", tmp_path / "missing")
    assert code == 2 and "ground truth" in err and "does not exist" in err

    (tmp_path / "other").mkdir()
    save_gt(tmp_path / "other", "zzz", gt)
    code, _, err = run_cli(capsys, *base, "--gt", tmp_path / "other")
    assert code == 2 and "matches a ground-truth file by stem" in err and "'a'" in err and "'zzz'" in err

    bad_map = tmp_path / "bad.json"
    bad_map.write_text(json.dumps({"cat": 8, "dog": 12, "zebra": 3}))
    code, _, err = run_cli(capsys, out, "--gt", tmp_path / "gt", "--class-map", bad_map)
    assert code == 2 and "['zebra']" in err and "not in the run's vocabulary" in err

    short_map = tmp_path / "short.json"
    short_map.write_text(json.dumps({"cat": 8}))
    code, _, err = run_cli(capsys, out, "--gt", tmp_path / "gt", "--class-map", short_map)
    assert code == 2 and "['dog']" in err and "no ground-truth id" in err

    (tmp_path / "s.txt").write_text("a\n")
    code, _, err = run_cli(
        capsys,
        *base,
        "--gt",
        tmp_path / "gt",
        "--fit",
        "tau",
        "--fit-split",
        tmp_path / "s.txt",
        "--eval-split",
        tmp_path / "s.txt",
    )
    assert code == 2 and "both the fit and the eval split" in err

    code, _, err = run_cli(capsys, tmp_path / "nothing", "--gt", tmp_path / "gt", "--class-map", class_map)
    assert code == 2 and "manifest.json" in err


def test_fit_without_saved_scores_says_to_save_them(tmp_path, capsys, class_map):
    rows = []
    for stem in ("a", "b", "c", "d"):
        gt, label, _ = scored_image(0.7, 0.3)
        save_gt(tmp_path / "gt", stem, gt)
        rows.append(mask_row(stem, label))
    out = write_output(tmp_path / "out", rows)
    (tmp_path / "fit.txt").write_text("a\nb\n")
    code, _, err = evaluate(
        capsys, tmp_path, out, class_map, "--fit", "tau", "--fit-split", tmp_path / "fit.txt"
    )
    assert code == 2 and "re-run the job with --save-scores" in err


def test_output_ground_truth_and_results_on_s3(tmp_path, capsys, class_map, bucket):
    """OUTPUT, ground truth and --out on an S3-compatible server (moto), as fsspec URLs."""
    import io

    import fsspec

    fs = fsspec.filesystem("s3")
    rows = []
    for stem in ("f1", "f2", "e1"):
        gt, label, scores = scored_image(0.7, 0.3)
        buffer = io.BytesIO()
        Image.fromarray(gt).save(buffer, format="PNG")
        fs.pipe_file(f"{bucket}/gt/{stem}.png", buffer.getvalue())
        rows.append(mask_row(stem, label, scores))
    out = write_output(f"s3://{bucket}/out", rows)
    (tmp_path / "eval.txt").write_text("e1\n")
    code, _, err = run_cli(
        capsys,
        out,
        "--gt",
        f"s3://{bucket}/gt/",
        "--class-map",
        class_map,
        "--fit",
        "tau",
        "--eval-split",
        tmp_path / "eval.txt",
        "--out",
        f"s3://{bucket}/ev",
    )
    assert code == 0, err
    result = json.loads(fs.cat_file(f"{bucket}/ev/metrics.json"))["methods"][METHOD]
    assert result["images"] == 1 and result["protocol"]["n_fit"] == 2 and result["miou"] == pytest.approx(1.0)
    assert json.loads(fs.cat_file(f"{bucket}/ev/fitted.json"))[METHOD]["fit_stems"] == ["f1", "f2"]


def test_unreadable_saved_scores_name_the_image(tmp_path, capsys, class_map):
    gt, label, _ = scored_image(0.7, 0.3)
    save_gt(tmp_path / "gt", "a", gt)
    row = mask_row("a", label)
    row["scores_png"] = b"\x89PNG\r\n\x1a\n cut short"  # a truncated file, as a killed writer or a bad copy leaves
    out = write_output(tmp_path / "out", [row])
    code, _, err = evaluate(capsys, tmp_path, out, class_map, "--tau", "0.5")
    assert code == 2 and "s3://lake/images/a.jpg: unreadable saved scores" in err


def test_builtin_voc21_class_map_gives_the_file_maps_figures_and_names_every_class(tmp_path, capsys, class_map):
    gt = np.zeros((16, 16), np.uint8)
    gt[:8] = 8  # VOC: 8 = cat, 12 = dog
    gt[8:, :4] = 12
    pred = np.zeros((16, 16), np.uint8)
    pred[:8] = 1
    pred[8:, :2] = 2
    save_gt(tmp_path / "gt", "a", gt)
    out = write_output(tmp_path / "out", [mask_row("a", pred)])
    assert evaluate(capsys, tmp_path, out, "voc21", to="builtin")[0] == 0
    assert evaluate(capsys, tmp_path, out, class_map, to="file")[0] == 0
    builtin = json.loads((tmp_path / "builtin" / "metrics.json").read_text())
    from_file = json.loads((tmp_path / "file" / "metrics.json").read_text())
    assert builtin["methods"][METHOD]["iou"][:13] == from_file["methods"][METHOD]["iou"]  # the file maps ids <= 12
    assert builtin["methods"][METHOD]["iou"][12] == pytest.approx(0.5)
    names = {c["id"]: c["name"] for c in builtin["classes"] if c["in_class_map"]}
    assert names[0] == "background" and names[8] == "cat" and names[12] == "dog" and names[11] == "diningtable"
    markdown = (tmp_path / "builtin" / "metrics.md").read_text()
    assert len(builtin["classes"]) == 21 and builtin["classes"][20]["name"] == "tvmonitor"
    assert "| 9 | chair | – |" in markdown and "| 20 | tvmonitor | – |" in markdown  # absent: listed, no IoU
