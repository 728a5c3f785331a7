"""jobs.export on a hand-built committed OUTPUT (two units, two methods, a stem clash, debris, errors):
COCO decodes with pycocotools to the label maps, VOC PNGs hold the ids, the HF folder loads with
`datasets`, Label Studio's own decoder gives back every mask."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json

import numpy as np
import pyarrow as pa
import pytest
from jobtest_utils import run_main
from PIL import Image

from diffseg.codecs.masks import encode_label_png
from diffseg.codecs.stats import compute_class_stats
from diffseg.codecs.upscale import upscale_labels
from diffseg.export.source import unique_stems
from diffseg.lake.schemas import SCHEMAS
from diffseg.lake.store import OutputStore
from diffseg.lake.units import Unit, unit_id_of, write_unit
from jobs.export.cli import main

VOCAB = ["cat", "dog", "sky"]
METHODS = ("diffsegmenter", "seediff")


def label_map(seed: int, shape=(24, 40)) -> np.ndarray:
    """Blocks of classes 0..3 at seed-dependent places (every class present in most maps)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    for k in (1, 2, 3):
        y, x = rng.integers(0, shape[0] - 6), rng.integers(0, shape[1] - 6)
        labels[y : y + rng.integers(3, 10), x : x + rng.integers(3, 14)] = k
    return labels


def write_run(root, images: dict[str, np.ndarray], run_id: str = "r1", units: int = 2, errors=(),
              stored: dict[str, np.ndarray] | None = None) -> str:
    """A committed OUTPUT as jobs.segment writes it: `units` units, masks+stats for both METHODS.

    `stored`: per URI, the argmax-size map the job stores instead of the photo-size map of `images`
    (whose nearest upscale it must be)."""
    store = OutputStore(str(root))
    uris = sorted(images)
    for part in np.array_split(np.array(uris + list(errors), dtype=object), units):
        masks, stats = [], []
        for uri in part:
            if uri in errors:
                continue
            labels = (stored or {}).get(uri, images[uri])
            height, width = images[uri].shape
            scores = np.random.default_rng(len(uri)).random((1 + len(VOCAB), 8, 8)).astype(np.float32)
            for method in METHODS:
                present = compute_class_stats(labels, VOCAB, scores, size=(height, width))
                masks.append({"uri": uri, "width": width, "height": height, "method": method,
                              "label_map_png": encode_label_png(labels), "classes": [s["class_name"] for s in present],
                              "run_id": run_id, "model": "tiny", "vocab_hash": "h"})
                stats += [{"uri": uri, "method": method, **s} for s in present]
        err = [{"uri": u, "stage": "decode", "error_type": "ValueError", "message": "bad", "run_id": run_id}
               for u in part if u in errors]
        tables = {"masks": pa.Table.from_pylist(masks, schema=SCHEMAS["masks"]),
                  "stats": pa.Table.from_pylist(stats, schema=SCHEMAS["stats"]),
                  "errors": pa.Table.from_pylist(err, schema=SCHEMAS["errors"])}
        unit_uris = tuple(sorted(part))
        write_unit(store, run_id, Unit(unit_id_of(unit_uris), unit_uris), tables)
    store.put_json("manifest.json", {"run_id": run_id, "status": "succeeded", "model": {"uri": "tiny"},
                                     "vocabulary": {"classes": VOCAB, "hash": "h"}})
    return str(root)


@pytest.fixture
def lake(tmp_path):
    images = {f"s3://lake/{folder}/{name}": label_map(i) for i, (folder, name) in enumerate(
        [("a", "cat.jpg"), ("b", "cat.jpg"), ("a", "dog.png"), ("a", "Sky.jpeg"), ("c", "x.y.jpg")])}
    # a big photo: the job stores its map at the argmax size, readers give it at the photo's size
    small = label_map(9, (16, 27))
    images["s3://lake/c/x.y.jpg"] = upscale_labels(small, 41, 67)
    output = write_run(tmp_path / "seg", images, errors=("s3://lake/a/broken.jpg",),
                       stored={"s3://lake/c/x.y.jpg": small})
    # debris of a killed run: a part file no marker lists must never be exported
    debris = pa.Table.from_pylist([{"uri": "s3://lake/ghost.jpg", "width": 2, "height": 2, "method": "seediff",
                                    "label_map_png": encode_label_png(np.ones((2, 2), np.uint8))}], schema=SCHEMAS["masks"])
    import pyarrow.parquet as pq
    pq.write_table(debris, str(tmp_path / "seg" / "masks" / "part-r1-deadbeefdeadbeef.parquet"))
    return output, images


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    return run_main(main, capsys, *argv)


def test_unique_stems_disambiguate_clashes_deterministically():
    uris = ["s3://l/a/cat.jpg", "s3://l/b/cat.jpg", "s3://l/a/dog.png", "s3://l/c/CAT.png", "gs://x/we ird#1.jpg"]
    stems = unique_stems(uris)
    assert stems["s3://l/a/dog.png"] == "dog" and stems["gs://x/we ird#1.jpg"] == "we_ird_1"
    cats = [stems[u] for u in uris if "cat" in u.lower()]
    assert len(set(cats)) == 3 and all(s.lower().startswith("cat-") and len(s) == 12 for s in cats)
    assert unique_stems(list(reversed(uris))) == stems  # the order of the listing never renames a file


def test_coco_annotations_decode_to_the_label_maps(lake, tmp_path, capsys):
    from pycocotools.coco import COCO

    output, images = lake
    code, out, _ = run_cli(capsys, output, "--format", "coco", tmp_path / "coco", "--method", "seediff")
    assert code == 0, out
    assert "exported 5 images" in out
    coco = COCO(str(tmp_path / "coco" / "instances.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == VOCAB
    assert len(coco.getImgIds()) == 5
    mismatches = 0
    for image in coco.loadImgs(coco.getImgIds()):
        labels = images[image["coco_url"]]
        assert (image["height"], image["width"]) == labels.shape
        rebuilt = np.zeros_like(labels)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            mask = coco.annToMask(ann)
            mismatches += int((mask.astype(bool) != (labels == ann["category_id"])).sum())
            assert ann["area"] == int(mask.sum()) and 0 <= ann["score"] <= 1
            rebuilt[mask.astype(bool)] = ann["category_id"]
        assert (rebuilt == labels).all()
    assert mismatches == 0
    names = sorted(i["file_name"] for i in coco.loadImgs(coco.getImgIds()))
    assert len(set(names)) == 5 and "dog.png" in names and "x.y.jpg" in names


def test_voc_palette_pngs_hold_the_ids_and_clashing_stems_both_survive(lake, tmp_path, capsys):
    output, images = lake
    dest = tmp_path / "voc"
    code, out, _ = run_cli(capsys, output, "--format", "voc", dest, "--method", "diffsegmenter")
    assert code == 0, out
    sources = dict(line.split("\t") for line in (dest / "sources.tsv").read_text().splitlines())
    assert sorted(sources.values()) == sorted(images)
    assert len(list((dest / "SegmentationClass").glob("*.png"))) == 5
    for stem, uri in sources.items():
        png = Image.open(dest / "SegmentationClass" / f"{stem}.png")
        assert png.mode == "P" and png.getpalette()[3:6] == [128, 0, 0]  # VOC colour of label 1
        assert (np.array(png) == images[uri]).all()
    assert (dest / "class_names.txt").read_text().split() == ["background", *VOCAB]
    assert (dest / "ImageSets/Segmentation/all.txt").read_text().split() == list(sources)
    # a second export into the same DEST is refused, then replaced with --overwrite
    code, _, err = run_cli(capsys, output, "--format", "voc", dest, "--method", "diffsegmenter")
    assert code == 2 and "--overwrite" in err
    code, out, _ = run_cli(capsys, output, "--format", "voc", dest, "--method", "seediff", "--overwrite")
    assert code == 0 and len(list((dest / "SegmentationClass").glob("*.png"))) == 5


def test_hf_folder_loads_with_datasets_offline(lake, tmp_path, capsys, monkeypatch):
    import datasets  # the test extra
    output, images = lake
    dest = tmp_path / "hf"
    code, out, _ = run_cli(capsys, output, "--format", "hf", dest, "--method", "seediff", "--shard-rows", "2",
                           "--no-images")
    assert code == 0, out
    assert sorted(p.name for p in (dest / "data").iterdir()) == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    ds = datasets.load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 5
    assert isinstance(ds.features["annotation"], datasets.Image)
    for row in ds:
        assert (np.array(row["annotation"]) == images[row["uri"]]).all()
        assert row["image"] is None
    card = (dest / "README.md").read_text()
    assert '"label2id"' in card and '"sky": 3' in card
    assert json.loads((dest / "label_map.json").read_text())["id2label"]["1"] == "cat"
    import pyarrow.parquet as pq

    shard = pq.read_schema(dest / "data" / "train-00000-of-00003.parquet")
    assert json.loads(shard.metadata[b"diffseg"]) == {"id2label": {"0": "background", "1": "cat", "2": "dog", "3": "sky"},
                                                      "method": "seediff", "run_id": "r1"}


def test_hf_with_images_embeds_the_originals_or_names_the_fix(tmp_path, capsys):
    import datasets  # the test extra
    photo = tmp_path / "lake" / "p.png"
    photo.parent.mkdir()
    Image.fromarray(np.full((24, 40, 3), 90, np.uint8)).save(photo)
    output = write_run(tmp_path / "seg", {str(photo): label_map(1), str(tmp_path / "lake/gone.png"): label_map(2)}, units=1)
    code, _, err = run_cli(capsys, output, "--format", "hf", tmp_path / "hf", "--method", "seediff")
    assert code == 1 and "gone.png" in err and "--no-images" in err
    (tmp_path / "lake/gone.png").write_bytes(photo.read_bytes())
    code, out, _ = run_cli(capsys, output, "--format", "hf", tmp_path / "hf", "--method", "seediff", "--overwrite")
    assert code == 0, out
    ds = datasets.load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "cache"))
    assert [np.array(r["image"])[0, 0].tolist() for r in ds] == [[90, 90, 90]] * 2


def load_brush_decoder():
    """label_studio_sdk.converter.brush, loaded from its file (the package's __init__ needs a web client)."""
    # `make install` installs it (--no-deps); a missing package fails the test, it never skips
    files = importlib.metadata.files("label-studio-sdk") or []
    path = next(f for f in files if str(f).endswith("converter/brush.py")).locate()
    spec = importlib.util.spec_from_file_location("ls_brush", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_labelstudio_predictions_decode_with_label_studios_decoder(lake, tmp_path, capsys):
    brush = load_brush_decoder()
    output, images = lake
    code, out, _ = run_cli(capsys, output, "--format", "labelstudio", tmp_path / "ls", "--method", "seediff")
    assert code == 0, out
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert sorted(t["data"]["image"] for t in tasks) == sorted(images)
    config = (tmp_path / "ls" / "label_config.xml").read_text()
    assert all(f'<Label value="{name}"/>' in config for name in VOCAB)
    for t in tasks:
        labels = images[t["data"]["uri"]]
        rebuilt = np.zeros_like(labels)
        for region in t["predictions"][0]["result"]:
            assert (region["original_height"], region["original_width"]) == labels.shape
            rgba = brush.decode_rle(region["value"]["rle"]).reshape(*labels.shape, 4)
            rebuilt[rgba[:, :, 3] > 0] = VOCAB.index(region["value"]["brushlabels"][0]) + 1
        assert (rebuilt == labels).all()


def test_selection_errors_name_the_fix(lake, tmp_path, capsys):
    output, _ = lake
    code, _, err = run_cli(capsys, output, "--format", "coco", tmp_path / "x", "--method", "nope")
    assert code == 2 and "diffsegmenter, seediff" in err
    code, _, err = run_cli(capsys, output, "--format", "coco", tmp_path / "x", "--run-id", "r9")
    assert code == 2 and "no run 'r9'" in err
    code, _, err = run_cli(capsys, tmp_path / "missing", "--format", "coco", tmp_path / "x")
    assert code == 2 and "no manifest.json" in err
    code, _, err = run_cli(capsys, output, "--format", "coco", tmp_path / "x", "--method", "maskdiffusion-unsupervised")
    assert code == 2 and "segments" in err
    code, _, err = run_cli(capsys, output, "--format", "tiff", tmp_path / "x")
    assert code == 2 and "invalid choice" in err


def test_a_run_of_several_methods_exports_one_folder_per_method(lake, tmp_path, capsys):
    output, images = lake
    dest = tmp_path / "all"
    code, out, err = run_cli(capsys, output, dest, "--format", "coco")
    assert code == 0, err
    assert "one folder each" in out and out.count("exported 5 images") == 2
    for method in METHODS:
        coco = json.loads((dest / method / "instances.json").read_text())
        assert len(coco["images"]) == 5 and {c["name"] for c in coco["categories"]} == set(VOCAB)
    assert sorted(p.name for p in dest.iterdir()) == sorted(METHODS)
    code, _, err = run_cli(capsys, output, dest, "--format", "coco")  # both folders hold one: refused, named
    assert code == 2 and all(f"{method} holds instances.json" in err for method in METHODS) and "--overwrite" in err
    code, out, _ = run_cli(capsys, output, dest, "--format", "coco", "--overwrite")
    assert code == 0 and out.count("exported 5 images") == 2


def test_labelstudio_image_urls_open_in_label_studio(tmp_path, capsys):
    from diffseg.export.labelstudio import image_url

    assert image_url("s3://lake/a b.jpg") == "s3://lake/a b.jpg"  # cloud storage presigns it
    assert image_url("/home/me/lake/a b.jpg") == "/data/local-files/?d=home/me/lake/a%20b.jpg"
    assert image_url("file:///home/me/lake/x.png") == "/data/local-files/?d=home/me/lake/x.png"
    mapping = [("/home/me/", "/data/local-files/?d="), ("s3://lake/", "https://cdn.example.com/")]
    assert image_url("file:///home/me/lake/x.png", mapping) == "/data/local-files/?d=lake/x.png"
    assert image_url("s3://lake/a/b c.jpg", mapping) == "https://cdn.example.com/a/b%20c.jpg"
    output = write_run(tmp_path / "seg", {str(tmp_path / "lake" / "p.png"): label_map(1)}, units=1)
    code, _, err = run_cli(capsys, output, tmp_path / "ls", "--format", "labelstudio", "--method", "seediff",
                           "--image-prefix", f"{tmp_path}/=/data/local-files/?d=")
    assert code == 0, err
    task = json.loads((tmp_path / "ls" / "tasks.json").read_text())[0]
    assert task["data"] == {"image": "/data/local-files/?d=lake/p.png", "uri": str(tmp_path / "lake" / "p.png")}
    code, _, err = run_cli(capsys, output, tmp_path / "ls", "--format", "labelstudio", "--method", "seediff",
                           "--overwrite")
    assert code == 0 and "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/" in err  # the default, and how to serve it
    code, _, err = run_cli(capsys, output, tmp_path / "x", "--format", "coco", "--image-prefix", "a=b")
    assert code == 2 and "labelstudio only" in err
    code, _, err = run_cli(capsys, output, tmp_path / "x", "--format", "labelstudio", "--image-prefix", "nothing")
    assert code == 2 and "FROM=TO" in err


def test_help_lists_formats_examples_and_exit_codes(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "exit codes" in out and "python -m jobs.export s3://lake/seg/ ./export/coco --format coco" in out
    assert all(name in out for name in ("coco", "voc", "hf", "labelstudio"))


def test_an_older_run_is_exported_with_its_own_manifest(lake):
    """--run-id of a run that is not the latest: its model comes from its own manifest (_history), not from
    manifest.json (which belongs to the latest run)."""
    from diffseg.export.source import select

    output, _ = lake
    store = OutputStore(output)
    old = {**store.get_json("manifest.json"), "model": {"uri": "s3://models/old"}}
    store.put_json("_history/r1/20261130T000000Z.json", old)
    store.put_json("_runs/r1.json", {"run_id": "r1", "identity": {"model": "s3://models/old"}, "classes": VOCAB})
    store.put_json("manifest.json", {"run_id": "r2", "status": "failed", "model": {"uri": "s3://models/new"},
                                     "vocabulary": {"classes": ["other"], "hash": "h2"}})
    chosen = select(output, "r1", "seediff")
    assert (chosen.run_id, chosen.model, chosen.vocabulary, len(chosen.uris)) == ("r1", "s3://models/old", VOCAB, 5)
    store.remove(["_history/r1/20261130T000000Z.json"])  # no manifest of r1 kept: no model rather than r2's
    assert select(output, "r1", "seediff").model == ""
