"""jobs.stage.SegmentStage: a Ray Data stage after read_images; label maps at each image's size."""

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from diffseg.codecs.masks import decode_label_png
from jobs.stage import OUTPUT_FIELDS, SegmentStage

VOCAB = "cat, coffee cup, rocket, sky"
KWARGS = {"model": "tiny", "vocab": VOCAB, "resolution": 128, "dtype": "fp32", "device": "cpu", "torch_threads": 1}


def object_column(arrays) -> np.ndarray:
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


def check_row(row, height: int, width: int) -> None:
    """A row's label map has the image's size and every stats RLE decodes to exactly its class's pixels."""
    labels = decode_label_png(row["label_map_png"])
    assert labels.shape == (height, width) == (row["height"], row["width"])
    names = [s["class_name"] for s in row["stats"]]
    assert names == list(row["classes"])
    assert sum(s["pixel_count"] for s in row["stats"]) == int((labels > 0).sum())
    for s in row["stats"]:
        rle = {"size": list(s["rle_size"]), "counts": s["rle_counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), labels == s["class_id"])
    assert row["error"] is None


@pytest.fixture(scope="module")
def stage():
    return SegmentStage(**KWARGS, methods=("diffsegmenter", "seediff"))


def test_a_batch_gives_one_row_per_image_and_method_with_the_batch_columns(stage, sample_photos):
    photos = [sample_photos["coffee"], sample_photos["chelsea"][:, :, 0]]  # colour 400x600; grey 300x451
    batch = {"image": object_column(photos), "path": np.array(["a/coffee.jpg", "b/chelsea.png"], dtype=object)}
    table = stage(batch)
    assert table.column_names == ["image", "path"] + [f.name for f in OUTPUT_FIELDS]
    rows = table.to_pylist()
    assert [(r["path"], r["method"]) for r in rows] == [
        ("a/coffee.jpg", "diffsegmenter"), ("a/coffee.jpg", "seediff"),
        ("b/chelsea.png", "diffsegmenter"), ("b/chelsea.png", "seediff")]
    for row, (h, w) in zip(rows, [(400, 600)] * 2 + [(300, 451)] * 2):
        check_row(row, h, w)


def test_the_path_seeds_the_noise_so_batch_company_changes_a_mask_only_to_float_rounding(stage, sample_photos):
    coffee, rocket = sample_photos["coffee"], sample_photos["rocket"]
    alone = stage({"image": object_column([coffee]), "path": np.array(["x/coffee.jpg"], dtype=object)})
    pair = stage({"image": object_column([rocket, coffee]), "path": np.array(["x/rocket.jpg", "x/coffee.jpg"],
                                                                             dtype=object)})
    first = alone.to_pylist()[0]
    again = [r for r in pair.to_pylist() if r["path"] == "x/coffee.jpg" and r["method"] == first["method"]][0]
    # as diffseg's own test: a batched forward differs from a single one by float rounding only
    assert (decode_label_png(first["label_map_png"]) != decode_label_png(again["label_map_png"])).mean() < 1e-3


def test_a_row_that_is_not_an_image_gets_an_error_and_its_neighbours_their_masks(stage, sample_photos):
    batch = {"image": object_column([np.zeros(7, np.uint8), sample_photos["chelsea"]]),
             "path": np.array(["bad", "good.jpg"], dtype=object)}
    rows = stage(batch).to_pylist()
    bad = [r for r in rows if r["path"] == "bad"]
    assert len(bad) == 2 and all("not an image" in r["error"] and "shape (7,)" in r["error"] for r in bad)
    assert all(r["label_map_png"] is None and r["stats"] is None for r in bad)
    for r in rows[2:]:
        check_row(r, 300, 451)


def test_keep_image_false_drops_the_pixels():
    stage = SegmentStage(**KWARGS, keep_image=False)
    table = stage({"image": object_column([np.full((20, 30, 3), 90, np.uint8)])})
    assert table.column_names == [f.name for f in OUTPUT_FIELDS]
    check_row(table.to_pylist()[0], 20, 30)


def test_options_are_checked_with_what_to_do(stage):
    with pytest.raises(TypeError, match="model must be a URI string"):
        SegmentStage(model=object(), vocab="cat")
    with pytest.raises(KeyError, match="no 'image' column"):
        stage({"picture": object_column([np.zeros((8, 8, 3), np.uint8)])})
    with pytest.raises(ValueError, match="already has column.*method"):
        stage({"image": object_column([np.zeros((8, 8, 3), np.uint8)]), "method": np.array(["x"], dtype=object)})


@pytest.mark.slow
def test_read_images_then_the_stage_on_a_local_ray(ray_local, sample_photos, tmp_path):
    ray = ray_local
    sizes = {}
    for name, ext in (("astronaut", "jpg"), ("coffee", "png"), ("chelsea", "jpg"), ("rocket", "jpg")):
        Image.fromarray(sample_photos[name]).save(tmp_path / f"{name}.{ext}")
        sizes[f"{name}.{ext}"] = sample_photos[name].shape[:2]

    ds = ray.data.read_images(str(tmp_path), include_paths=True).map_batches(
        SegmentStage, fn_constructor_kwargs=KWARGS, concurrency=1, batch_size=2, num_cpus=0.5)
    rows = ds.take_all()

    assert sorted(r["path"].rsplit("/", 1)[-1] for r in rows) == sorted(sizes)  # one row per image
    for row in rows:
        h, w = sizes[row["path"].rsplit("/", 1)[-1]]
        assert row["method"] == "diffsegmenter" and row["image"].shape == (h, w, 3)
        check_row(row, h, w)
