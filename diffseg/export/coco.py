"""COCO instances JSON from a run's masks: one annotation per (image, class present).

``segmentation`` is the class's compressed RLE from the ``stats/`` table (``{"size": [H, W], "counts":
str}``), so ``pycocotools.coco.COCO(path).annToMask(ann)`` equals ``label_map == class_id``; ``bbox`` is
``[x, y, w, h]`` (as ``pycocotools.mask.toBbox``), ``area`` the pixel count, ``score`` the class's mean
score over its pixels (``score_mean``; left out when the run saved none), ``iscrowd`` 0. Category ids are
the label ids (1..K, the run's vocabulary in order; 0, background, is not a category). Images are
numbered 1..N in the order they are read; ``file_name`` is the unique stem plus the URI's extension and
``coco_url`` the image's URI.
"""

from __future__ import annotations

import json
import math
import posixpath

from diffseg.export.source import ExportImage, Selection, iter_images, unique_stems


def categories(vocabulary: list[str]) -> list[dict]:
    """COCO categories: ``{"id": k, "name": vocabulary[k-1], "supercategory": "object"}`` for k = 1..K."""
    return [{"id": k, "name": name, "supercategory": "object"} for k, name in enumerate(vocabulary, start=1)]


def image_entry(image_id: int, image: ExportImage, stem: str) -> dict:
    """The ``images`` entry of one image (``file_name`` = unique stem + the URI's extension)."""
    ext = posixpath.splitext(image.uri.rstrip("/"))[1]
    return {"id": image_id, "file_name": stem + ext, "width": image.width, "height": image.height,
            "coco_url": image.uri}


def annotation(ann_id: int, image_id: int, stat: dict) -> dict:
    """One COCO annotation from a ``stats/`` row (class_id, pixel_count, bbox_xywh, score_mean, rle_*)."""
    ann = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(stat["class_id"]),
        "segmentation": {"size": [int(v) for v in stat["rle_size"]], "counts": stat["rle_counts"]},
        "area": int(stat["pixel_count"]),
        "bbox": [int(v) for v in stat["bbox_xywh"]],
        "iscrowd": 0,
    }
    score = stat.get("score_mean")
    if score is not None and math.isfinite(score):
        ann["score"] = round(float(score), 6)
    return ann


def build_coco(selection: Selection) -> dict:
    """The whole COCO dict of a selection (annotations are small: RLE strings, not pixels)."""
    stems = unique_stems(selection.uris)
    images, annotations = [], []
    for image_id, image in enumerate(iter_images(selection), start=1):
        images.append(image_entry(image_id, image, stems[image.uri]))
        for stat in image.stats:
            annotations.append(annotation(len(annotations) + 1, image_id, stat))
    return {
        "info": {"description": f"diffseg masks: method {selection.method}, run {selection.run_id}",
                 "version": "1.0", "contributor": "diffseg", "model": selection.model},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(selection.vocabulary),
    }


def write_coco(selection: Selection, fs, dest: str) -> dict:
    """Writes ``DEST/instances.json``; returns counts for the summary line."""
    coco = build_coco(selection)
    with fs.open(posixpath.join(dest, "instances.json"), "w") as handle:
        json.dump(coco, handle)
    return {"images": len(coco["images"]), "annotations": len(coco["annotations"]), "files": ["instances.json"]}
