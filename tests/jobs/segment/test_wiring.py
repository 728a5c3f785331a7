"""What the segment job's runner and actors now pass on (issues 11.1, 13.4, 14): the read limits, the
model preflight, the recipe, redacted error descriptions and the progress lines users read."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from jobtest_utils import encode, run_main

from jobs.segment.actor import decode_batch
from jobs.segment.cli import main

SECRET = "wiring/Secret+Key"


def test_an_input_over_max_read_bytes_is_a_read_error_naming_the_limit(tmp_path):
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    small.write_bytes(encode(np.zeros((8, 8, 3), np.uint8), "PNG"))
    big.write_bytes(encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), "PNG"))
    limit = small.stat().st_size + 10
    out = decode_batch({"uri": np.array([str(small), str(big)], dtype=object), "unit_id": np.array(["u", "u"])},
                       resolution=16, max_pixels=10_000, max_read_bytes=limit, read_timeout=30.0)
    assert list(out["stage"]) == ["", "read"] and out["error_type"][1] == "ReadLimitError"
    assert f"larger than the read cap of {limit} bytes (--max-read-bytes)" in out["message"][1]
    assert (out["height"][0], out["width"][0]) == (8, 8)


def test_resolution_the_model_cannot_run_exits_2_before_any_image_is_read(tmp_path, capsys):
    # INPUT does not exist: had it been listed, the message would say so
    code, out, err = run_main(main, capsys, tmp_path / "no-such-input", tmp_path / "out", "--model", "tiny",
                              "--vocab", "cat", "--resolution", "100")
    assert code == 2 and "--resolution 100: must be a multiple of 64" in out + err, out + err
    assert not (tmp_path / "out").exists()


def test_actor_error_descriptions_hide_credentials():
    from jobs.common.actor import describe

    text = describe(OSError(f"cannot open s3://AKIAWIRING:{SECRET}@bucket/x.jpg"))
    assert text.startswith("OSError: cannot open s3://") and "Secret" not in text and "AKIAWIRING" not in text
    assert describe(KeyError()) == "KeyError"


@pytest.mark.slow
def test_recipe_and_read_cap_reach_the_actors_and_progress_is_one_kind_of_line(ray_local, tmp_path, sample_photos,
                                                                               capsys, caplog):
    from diffseg.lake.store import OutputStore
    from diffseg.lake.units import read_committed

    class Lines(logging.Handler):
        def emit(self, record):
            seen.append((record.name, record.getMessage()))

    seen, handler = [], Lines(logging.DEBUG)
    watched = [logging.getLogger(name) for name in ("jobs.progress", "diffseg.lake.writer", "ray.data")]
    for logger in watched:
        logger.addHandler(handler)
    caplog.set_level(logging.INFO)
    lake, output = tmp_path / "lake", tmp_path / "out"
    lake.mkdir()
    (lake / "small.png").write_bytes(encode(sample_photos["chelsea"][:60, :80], "PNG"))
    (lake / "big.png").write_bytes(encode(sample_photos["coffee"], "PNG"))
    limit = (lake / "small.png").stat().st_size + 100
    code, out, err = run_main(main, capsys, lake, output, "--model", "tiny", "--vocab", "cat, cup", "--resolution",
                              "64", "--timesteps", "50", "--context", "per_class", "--max-read-bytes", limit,
                              "--read-timeout", "60", "--max-error-fraction", "1", "--unit-size", "1")
    assert code == 0, out + err
    assert "2 images (1 segmented, 1 errors = 50.0%)" in out
    manifest = OutputStore(str(output)).get_json("manifest.json")
    assert manifest["recipe"]["timesteps"] == [50] and manifest["recipe"]["context"] == "per_class"
    assert manifest["config"]["max_read_bytes"] == limit and manifest["config"]["read_timeout"] == 60.0
    (mask,) = read_committed(str(output), "masks").to_pylist()
    assert mask["uri"].endswith("small.png") and (mask["height"], mask["width"]) == (60, 80)
    (error,) = read_committed(str(output), "errors").to_pylist()
    assert error["stage"] == "read" and f"read cap of {limit} bytes" in error["message"]
    for logger in watched:
        logger.removeHandler(handler)
    progress = [m for name, m in seen if name == "jobs.progress"]
    assert progress and progress[-1].startswith("2/2 images (100.0%), 1 error,") and "ETA 0s" in progress[-1], seen
    assert not [m for _, m in seen if "Total Progress" in m]  # Ray Data's own lines: only with -v
    assert not [m for name, m in seen if name == "diffseg.lake.writer" and m.startswith("committed ")]  # DEBUG now


def test_the_actor_segmenter_runs_the_recipe_it_is_given():
    from jobs.common.config import JobConfig
    from jobs.segment.actor import SegmentUDF, UdfConfig

    config = JobConfig(input="in/", output="out/", vocab="cat, cup", model="tiny", resolution=64, context="per_class",
                       timesteps=(50,), template="a photo of a {class}")
    actor = SegmentUDF("tiny", config.vocab, UdfConfig(resolution=64, recipe=config.recipe_kwargs()))
    recipe = actor.segmenter.recipe
    assert (recipe["context"], recipe["timesteps"], recipe["template"]) == ("per_class", [50], "a photo of a {class}")
    items = actor.items({"uri": np.array(["a"], dtype=object), "unit_id": np.array(["u"], dtype=object),
                         "image": np.zeros((1, 64, 64, 3), np.uint8), "height": np.array([30]),
                         "width": np.array([40]), "stage": np.array([""], dtype=object),
                         "error_type": np.array([""], dtype=object), "message": np.array([""], dtype=object)})
    (result,) = actor.compute(items)
    assert result["diffsegmenter"].label_map.shape == (30, 40)
