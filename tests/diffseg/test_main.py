import json

import numpy as np
import pytest
from PIL import Image

from diffseg.__main__ import main
from diffseg.codecs.masks import decode_label_png


def test_cli_writes_label_map_overlay_and_stats_per_image(tmp_path, sample_photos, capsys):
    photo = tmp_path / "cat.jpg"
    Image.fromarray(sample_photos["chelsea"]).save(photo)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    out = tmp_path / "out"
    code = main([str(photo), str(broken), "--vocab", "cat, potted plant", "--model", "tiny",
                 "--resolution", "128", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 3  # partial failure is not success
    assert "meaningless" in captured.err  # the random model says so plainly
    assert "broken.jpg" in captured.err
    labels = decode_label_png((out / "cat.diffsegmenter.labels.png").read_bytes())
    assert labels.shape == (300, 451)
    overlay = Image.open(out / "cat.diffsegmenter.overlay.png")
    assert overlay.width >= 451 and overlay.height >= 300
    meta = json.loads((out / "cat.diffsegmenter.json").read_text())
    assert meta["width"] == 451 and meta["height"] == 300
    total = sum(c["pixel_count"] for c in meta["classes"]) + int((labels == 0).sum())
    assert total == 300 * 451
    assert {c["class_name"] for c in meta["classes"]} == {["cat", "potted plant"][i - 1] for i in np.unique(labels) if i}


def test_cli_bad_vocabulary_and_model_exit_2_with_a_message(tmp_path, capsys):
    assert main(["x.jpg", "--vocab", " , ", "--model", "tiny"]) == 2
    assert "vocabulary is empty" in capsys.readouterr().err
    assert main(["x.jpg", "--vocab", "cat", "--model", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_fitted_thresholds_from_evaluate_change_the_background(tmp_path, sample_photos):
    photo = tmp_path / "coffee.jpg"
    Image.fromarray(sample_photos["coffee"]).save(photo)
    fitted = tmp_path / "fitted.json"
    fitted.write_text(json.dumps({"diffsegmenter": {"tau": 1.01, "fit_miou": 0.5}}))  # above every score
    assert main([str(photo), "--vocab", "cup, table", "--resolution", "64", "--out", str(tmp_path / "a"),
                 "--fitted", str(fitted)]) == 0
    labels = decode_label_png((tmp_path / "a" / "coffee.diffsegmenter.labels.png").read_bytes())
    assert labels.max() == 0  # all background: the fitted threshold was applied
    assert main([str(photo), "--vocab", "cup, table", "--resolution", "64", "--out", str(tmp_path / "b"),
                 "--tau", "-1"]) == 0
    labels = decode_label_png((tmp_path / "b" / "coffee.diffsegmenter.labels.png").read_bytes())
    assert (labels > 0).all()  # nothing is background below every score


def test_fitted_values_are_read_as_the_job_reads_them(tmp_path, capsys):
    """One reader (diffseg.eval.fitted) for the command and the job: same checks, same messages."""
    other = tmp_path / "fitted.json"
    other.write_text(json.dumps({"seediff": {"tau": 0.5}}))
    assert main(["x.jpg", "--vocab", "cup", "--fitted", str(other)]) == 2
    assert "has no fitted threshold for diffsegmenter (it holds seediff)" in capsys.readouterr().err
    other.write_text("{not json")
    assert main(["x.jpg", "--vocab", "cup", "--fitted", str(other)]) == 2
    assert "cannot read fitted values" in capsys.readouterr().err
    assert main(["x.jpg", "--vocab", "cup", "--fitted", str(other), "--tau", "0.3"]) == 2
    assert "give --tau or --fitted, not both" in capsys.readouterr().err


def test_make_params_maps_tau_to_each_methods_background_field():
    import pytest

    from diffseg.methods import make_params

    assert make_params("seediff", {"tau": 0.6}).threshold == 0.6
    assert make_params("maskdiffusion", {"tau": 0.3}).background == 0.3
    with pytest.raises(ValueError, match="no parameter"):
        make_params("diffsegmenter", {"bogus": 1})


def test_a_bare_tau_is_refused_when_the_methods_thresholds_differ_in_scale(capsys):
    """diffsegmenter's tau is on min-max scores, maskdiffusion's relative to its best cosine: one bare
    value for both is refused (exit 2 naming the methods and scales); one per method is accepted."""
    from diffseg.__main__ import build_parser, method_params

    argv = ["x.jpg", "--vocab", "cup", "--method", "diffsegmenter", "--method", "maskdiffusion", "--tau", "0.4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--tau 0.4 would set thresholds on different scales" in err
    assert "[0, 1] for method diffsegmenter" in err and "for method maskdiffusion" in err
    assert "--tau diffsegmenter=X --tau maskdiffusion=X" in err
    args = build_parser().parse_args([*argv[:-2], "--tau", "diffsegmenter=0.4", "--tau", "maskdiffusion=0.2"])
    params = method_params(args.method, args.tau, None)
    assert (params["diffsegmenter"].tau, params["maskdiffusion"].background) == (0.4, 0.2)
    args = build_parser().parse_args(["x.jpg", "--vocab", "c", "--method", "seediff", "--method", "diffsegmenter",
                                      "--tau", "0.3"])  # one scale: a bare value serves both
    params = method_params(args.method, args.tau, None)
    assert (params["seediff"].threshold, params["diffsegmenter"].tau) == (0.3, 0.3)
    assert main(["x.jpg", "--vocab", "cup", "--tau", "seediff=0.3"]) == 2
    assert "method seediff is not in use" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["x.jpg", "--vocab", "c", "--tau", "nosuch=0.3"])
    assert exit_.value.code == 2 and "'nosuch' has no background threshold" in capsys.readouterr().err


def test_recipe_options_reach_the_segmenter(tmp_path, capsys, sample_photos):
    photo = tmp_path / "coffee.jpg"
    Image.fromarray(sample_photos["coffee"]).save(photo)
    base = [str(photo), "--vocab", "cup, table", "--resolution", "64", "--out", str(tmp_path)]
    assert main([*base, "--method", "maskdiffusion"]) == 0
    assert "recipe: name 'maskdiffusion', timesteps [0]" in capsys.readouterr().err
    assert main([*base, "--timesteps", "20,200", "--template", "a photo of {classes}", "--separator", ", ",
                 "--class-token-weight", "1.1"]) == 0
    err = capsys.readouterr().err
    assert "timesteps [20, 200], template 'a photo of {classes}', separator ', '" in err
    assert "class_token_weight 1.1" in err
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--timesteps", "-3"])
    assert exit_.value.code == 2 and "'-3': must be comma-separated whole numbers >= 0" in capsys.readouterr().err


def test_unsupervised_method_writes_its_outputs_with_its_own_segment_names(tmp_path, capsys, sample_photos):
    """maskdiffusion-unsupervised finds more segments than the vocabulary has classes and names them itself:
    the outputs are written as the job writes them (diffseg.codecs.masks.encode_segmentation), no crash."""
    photo = tmp_path / "cat.jpg"
    Image.fromarray(sample_photos["chelsea"]).save(photo)
    out = tmp_path / "out"
    assert main([str(photo), "--vocab", "cat", "--model", "tiny", "--method", "maskdiffusion-unsupervised",
                 "--resolution", "64", "--out", str(out)]) == 0
    labels = decode_label_png((out / "cat.maskdiffusion-unsupervised.labels.png").read_bytes())
    assert labels.shape == (300, 451)
    assert (out / "cat.maskdiffusion-unsupervised.overlay.png").exists()
    meta = json.loads((out / "cat.maskdiffusion-unsupervised.json").read_text())
    assert {c["class_id"] for c in meta["classes"]} == {int(i) for i in np.unique(labels) if i}
    assert sum(c["pixel_count"] for c in meta["classes"]) + int((labels == 0).sum()) == 300 * 451
    assert "segmented 1 image(s), 0 failed" in capsys.readouterr().out
