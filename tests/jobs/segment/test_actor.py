"""The job's stages without Ray: decode_batch on every bad-input kind, SegmentUDF with the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from jobtest_utils import MAX_PIXELS, RESOLUTION, put_files

from diffseg.lake.schemas import RESULT_SCHEMA, split_results
from jobs.segment.actor import SegmentUDF, UdfConfig, decode_batch


def decode(uris: list[str]) -> dict[str, np.ndarray]:
    batch = {"uri": np.array(uris, dtype=object), "unit_id": np.array(["u1"] * len(uris), dtype=object)}
    return decode_batch(batch, resolution=RESOLUTION, max_pixels=MAX_PIXELS)


def test_decode_batch_handles_every_input_kind(tmp_path, lake_files):
    files, good, bad = lake_files
    uris = put_files(str(tmp_path), files)
    missing = f"file://{tmp_path}/gone.jpg"
    out = decode(uris + [missing])
    assert out["image"].shape == (len(uris) + 1, RESOLUTION, RESOLUTION, 3) and out["image"].dtype == np.uint8
    rows = {u: i for i, u in enumerate(out["uri"])}
    for name, (h, w) in good.items():
        i = rows[f"file://{tmp_path}/{name}"]
        assert out["stage"][i] == "", (name, out["message"][i])
        assert (out["height"][i], out["width"][i]) == (h, w), name  # EXIF rotation applied, animations: frame 1
        assert out["image"][i].any(), name
    for name, word in bad.items():
        i = rows[f"file://{tmp_path}/{name}"]
        assert out["stage"][i] == "decode", name
        assert word in out["message"][i] and name in out["message"][i], (name, out["message"][i])
    i = rows[missing]
    assert out["stage"][i] == "read" and out["error_type"][i] == "FileNotFoundError" and "gone.jpg" in out["message"][i]


@pytest.fixture(scope="module")
def udf():
    return SegmentUDF("tiny", "cat, person, coffee cup", UdfConfig(resolution=RESOLUTION, save_scores=True))


def segment_rows(udf, photos, names, keys=None):
    images = np.stack([np.asarray(photos[n][:RESOLUTION, :RESOLUTION]) for n in names])
    n = len(names)
    batch = {
        "uri": np.array(keys or [f"s3://lake/{name}.jpg" for name in names], dtype=object),
        "unit_id": np.array(["u1"] * n, dtype=object),
        "image": images,
        "height": np.array([photos[x].shape[0] for x in names], dtype=np.int32),
        "width": np.array([photos[x].shape[1] for x in names], dtype=np.int32),
        "stage": np.array([""] * n, dtype=object),
        "error_type": np.array([""] * n, dtype=object),
        "message": np.array([""] * n, dtype=object),
    }
    return batch


def test_actor_returns_encoded_masks_and_stats_at_original_size(udf, sample_photos):
    from diffseg.codecs.masks import decode_label_png, decode_scores_png

    batch = segment_rows(udf, sample_photos, ["coffee", "chelsea"])
    batch["stage"][1], batch["error_type"][1], batch["message"][1] = "decode", "ImageDecodeError", "broken"
    result = udf(batch)
    assert result.schema == RESULT_SCHEMA and result.num_rows == 2
    tables = split_results(result, "r1", "tiny", "hash")
    assert tables["errors"].to_pylist() == [
        {"uri": "s3://lake/chelsea.jpg", "stage": "decode", "error_type": "ImageDecodeError", "message": "broken",
         "retryable": False, "run_id": "r1", "model": "tiny", "vocab_hash": "hash", "invocation": None,
         "written_at": None}]  # the writer fills invocation and written_at (diffseg.lake.commit.stamp_rows)
    (mask,) = tables["masks"].to_pylist()
    assert (mask["height"], mask["width"], mask["method"]) == (400, 600, "diffsegmenter")
    assert decode_label_png(mask["label_map_png"]).shape == (400, 600)
    scores = decode_scores_png(mask["scores_png"], channels=4)
    assert scores.shape == (4, RESOLUTION // 8, RESOLUTION // 8) and 0 <= scores.min() <= scores.max() <= 1
    assert sorted(tables["stats"]["class_name"].to_pylist()) == sorted(mask["classes"])


def test_model_failure_is_retried_per_image_and_isolated(udf, sample_photos, monkeypatch):
    real = udf.segmenter.segment
    calls = []

    def flaky(images, keys=None, sizes=None):
        calls.append(list(keys))
        if "s3://lake/poison.jpg" in keys:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(images, keys=keys, sizes=sizes)

    monkeypatch.setattr(udf.segmenter, "segment", flaky)
    batch = segment_rows(udf, sample_photos, ["coffee", "rocket", "astronaut"],
                         keys=["s3://lake/a.jpg", "s3://lake/poison.jpg", "s3://lake/c.jpg"])
    tables = split_results(udf(batch), "r1", "tiny", "hash")
    assert calls[0] == ["s3://lake/a.jpg", "s3://lake/poison.jpg", "s3://lake/c.jpg"] and len(calls) == 4
    assert sorted(tables["masks"]["uri"].to_pylist()) == ["s3://lake/a.jpg", "s3://lake/c.jpg"]
    (error,) = tables["errors"].to_pylist()
    assert error["uri"] == "s3://lake/poison.jpg" and error["stage"] == "model"
    assert error["error_type"] == "RuntimeError" and "illegal memory access" in error["message"]


def test_encode_failure_of_one_image_is_an_encode_error_row(udf, sample_photos, monkeypatch):
    import diffseg.codecs.masks

    real = diffseg.codecs.masks.encode_label_png

    def picky(label_map):
        if label_map.shape == (427, 640):
            raise ValueError("cannot encode this one")
        return real(label_map)

    monkeypatch.setattr(diffseg.codecs.masks, "encode_label_png", picky)
    tables = split_results(udf(segment_rows(udf, sample_photos, ["rocket", "coffee"])), "r1", "tiny", "h")
    assert tables["masks"]["uri"].to_pylist() == ["s3://lake/coffee.jpg"]
    assert tables["errors"].select(["uri", "stage", "message"]).to_pylist() == [
        {"uri": "s3://lake/rocket.jpg", "stage": "encode", "message": "ValueError: cannot encode this one"}]


def test_fitted_threshold_reaches_the_actor(sample_photos, tmp_path):
    """`--fitted fitted.json` (from jobs.evaluate --fit) sets the background threshold the actor uses."""
    import json

    from diffseg.codecs.masks import decode_label_png
    from jobs.segment.cli import build_parser, config_from_args

    fitted = tmp_path / "fitted.json"
    fitted.write_text(json.dumps({"diffsegmenter": {"tau": 1.0, "fit_miou": 0.4, "fit_stems": ["a"]}}))
    args = build_parser().parse_args(["in/", "out/", "--vocab", "cat", "--model", "tiny", "--fitted", str(fitted)])
    config = config_from_args(args)
    assert config.method_params == {"diffsegmenter": {"tau": 1.0}}  # typed values, not JSON text
    actor = SegmentUDF("tiny", "cat, person", UdfConfig(resolution=RESOLUTION, method_params=config.method_params))
    tables = split_results(actor(segment_rows(actor, sample_photos, ["coffee"])), "r1", "tiny", "hash")
    (mask,) = tables["masks"].to_pylist()
    assert decode_label_png(mask["label_map_png"]).max() == 0  # no score is above it (ties go to background)
    bad = build_parser().parse_args(["in/", "out/", "--vocab", "cat", "--model", "tiny", "--fitted", str(tmp_path / "no.json")])
    with pytest.raises(ValueError, match="fitted"):
        config_from_args(bad)


def test_actor_stores_the_argmax_size_map_of_a_big_photo_and_stats_at_its_size(udf, sample_photos):
    from diffseg.codecs.masks import decode_label_map, decode_label_png
    from diffseg.codecs.stats import compute_class_stats

    batch = segment_rows(udf, sample_photos, ["coffee"])
    batch["height"][0], batch["width"][0] = 1382, 2048  # a 2.8 MP photo, decoded to the model's input
    (mask,) = split_results(udf(batch), "r1", "tiny", "hash")["masks"].to_pylist()
    stats = split_results(udf(batch), "r1", "tiny", "hash")["stats"].to_pylist()
    assert (mask["height"], mask["width"]) == (1382, 2048)
    assert decode_label_png(mask["label_map_png"]).shape == (691, 1024)  # max_label_side 1024
    (seg,) = udf.segmenter.segment_method([batch["image"][0]], keys=[batch["uri"][0]], sizes=[(1382, 2048)])
    full = decode_label_map(mask["label_map_png"], mask["width"], mask["height"])
    assert np.array_equal(full, seg.label_map)
    expected = compute_class_stats(full, udf.vocab.names, seg.scores)
    assert [(s["class_id"], s["pixel_count"], s["rle_counts"], s["components"]) for s in stats] == [
        (s["class_id"], s["pixel_count"], s["rle_counts"], s["components"]) for s in expected]
