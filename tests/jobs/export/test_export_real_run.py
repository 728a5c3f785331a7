"""A real tiny-model run of jobs.segment (local Ray) exported and checked, and jobs.status through the
case of issue 13 item 3: a run that ended with too many errors is retried, the retry has nothing to do
(exit 0), and jobs.status still says 3."""

from __future__ import annotations

import numpy as np
import pytest
from jobtest_utils import MAX_PIXELS, RESOLUTION, put_files

from diffseg.codecs.masks import decode_label_map
from diffseg.lake.units import read_committed
from jobs.common.config import JobConfig
from jobs.export.cli import main as export_main
from jobs.segment.run import run
from jobs.status.cli import main as status_main

pytestmark = pytest.mark.slow


def test_real_run_exports_exactly_and_status_survives_a_retry(ray_local, tmp_path, lake_files, capsys):
    files, good, bad = lake_files
    put_files(str(tmp_path / "images"), files)
    output = str(tmp_path / "seg")
    config = JobConfig(input=str(tmp_path / "images"), output=output, vocab="cat, person, rocket", model="tiny",
                       resolution=RESOLUTION, batch_size=4, unit_size=6, max_pixels=MAX_PIXELS)
    assert run(config) == 3  # the bad inputs are more than 5% of the lake
    # what a RayJob retry sees: nothing to do, and the run's own outcome again (not a success)
    assert run(config) == 3 and "nothing to do" in capsys.readouterr().out
    assert status_main([output]) == 3
    assert "TOO MANY ERRORS" in capsys.readouterr().out

    masks = {r["uri"]: decode_label_map(r["label_map_png"], r["width"], r["height"])
             for r in read_committed(output, "masks").to_pylist()}
    assert len(masks) == len(good)
    assert export_main([output, "--format", "coco", str(tmp_path / "coco")]) == 0
    from pycocotools.coco import COCO

    coco = COCO(str(tmp_path / "coco" / "instances.json"))
    assert len(coco.getImgIds()) == len(good)
    for image in coco.loadImgs(coco.getImgIds()):
        labels = masks[image["coco_url"]]
        rebuilt = np.zeros_like(labels)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            rebuilt[coco.annToMask(ann).astype(bool)] = ann["category_id"]
        assert (rebuilt == labels).all(), image["coco_url"]

    import datasets  # the test extra
    assert export_main([output, "--format", "hf", str(tmp_path / "hf")]) == 0  # originals are local: embedded
    ds = datasets.load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == len(good)
    for row in ds:
        assert (np.array(row["annotation"]) == masks[row["uri"]]).all()
        # datasets applies the EXIF orientation on decoding, as the job did: image and mask line up
        assert row["image"].size == (row["width"], row["height"]), row["uri"]
