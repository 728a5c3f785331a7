"""Label Studio tasks with the masks as pre-annotations (``predictions``) in brush RLE.

Why brush RLE and not polygons: it is exact (decoding gives back every pixel of the label map, which a
test checks with Label Studio's own decoder, ``label_studio_sdk.converter.brush.decode_rle``), and needs
no contour tracing; polygons would lose thin and holed regions. A FiftyOne importer would need its
MongoDB server, and checking a Label Studio import needs only its file format.

DEST gets ``tasks.json`` (import it in a project: Data Import, or ``POST /api/projects/ID/import``) and
``label_config.xml`` (the project's labelling interface: an ``Image`` named ``image`` and
``BrushLabels`` named ``label`` with one ``Label`` per vocabulary class). One task per image::

    {"data": {"image": URL Label Studio opens (image_url), "uri": the image's URI in the run},
     "predictions": [{"model_version": "diffseg-METHOD-RUN", "score": mean class score,
                      "result": [{"id", "from_name": "label", "to_name": "image", "type": "brushlabels",
                                  "original_width": W, "original_height": H, "image_rotation": 0,
                                  "score": class score,
                                  "value": {"format": "rle", "rle": [...], "brushlabels": [CLASS]}}]}]}

Label Studio shows ``data.image`` by URL (:func:`image_url`): ``s3://``, ``gs://`` and ``http(s)://`` URIs
are kept (connect the bucket as the project's cloud storage, Settings > Cloud Storage, so Label Studio can
presign them); a local path or ``file://`` URI, which a browser cannot open, becomes a Label Studio
local-files URL, ``/data/local-files/?d=PATH`` with PATH relative to ``/`` (start Label Studio with
``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/``), unless a
prefix mapping ``FROM=TO`` (``--image-prefix``) rewrites it first: ``/home/me/lake/=/data/local-files/?d=lake/``
for a document root of ``/home/me``, or ``s3://lake/=https://cdn.example.com/`` for a public mirror.

The brush RLE is the bit-packed run-length format of thi.ng's ``rle-pack`` (what Label Studio's
front end uses), over the mask as an RGBA image flattened in row order (H * W * 4 bytes), the mask's
pixels 255 in all four channels, others 0.
"""

from __future__ import annotations

import json
import math
import posixpath
import urllib.parse
from xml.sax.saxutils import quoteattr

import numpy as np

from diffseg.export.source import Selection, iter_images

LOCAL_FILES_URL = "/data/local-files/?d="  # Label Studio's local-files view (document root: its env)

RLE_SIZES = (3, 4, 8, 16)  # bits of a run length, selected by a 2-bit index before each run
WORD_BITS = 8


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE of an (H, W) boolean mask: a list of byte values (see the module docstring)."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {array.shape}")
    values = np.repeat(np.where(array.reshape(-1), 255, 0).astype(np.uint8), 4)
    bits = [f"{values.size:032b}", f"{WORD_BITS - 1:05b}", "".join(f"{s - 1:04b}" for s in RLE_SIZES)]
    if values.size:
        change = np.flatnonzero(values[1:] != values[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [values.size]]))
        for start, length in zip(starts.tolist(), lengths.tolist()):
            word = f"{int(values[start]):08b}"
            while length > 0:
                chunk = min(length, 1 << RLE_SIZES[-1])
                index = next(i for i, size in enumerate(RLE_SIZES) if chunk <= 1 << size)
                # a run of 1 is a literal ("0"), longer ones repeat one word ("1"); both store length - 1
                bits.append(("1" if chunk > 1 else "0") + f"{index:02b}"
                            + f"{chunk - 1:0{RLE_SIZES[index]}b}" + word)
                length -= chunk
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return list(int(stream[i : i + 8], 2).to_bytes(1, "big")[0] for i in range(0, len(stream), 8))


def label_config(vocabulary: list[str]) -> str:
    """The project's labelling interface (XML) matching the tasks' ``from_name``/``to_name``."""
    labels = "\n".join(f"    <Label value={quoteattr(name)}/>" for name in vocabulary)
    return (f'<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
            f'  <BrushLabels name="label" toName="image">\n{labels}\n  </BrushLabels>\n</View>\n')


def parse_prefix(text: str) -> tuple[str, str]:
    """``FROM=TO`` (``--image-prefix``) as a pair; ValueError naming the form when there is no ``=`` or
    FROM is empty. The first ``=`` splits (TO may hold one: ``/data/local-files/?d=``)."""
    source, sep, target = text.partition("=")
    if not sep or not source:
        raise ValueError(f"{text!r}: expected FROM=TO, e.g. /home/me/lake/=/data/local-files/?d=lake/")
    return source, target


def image_url(uri: str, prefixes: list[tuple[str, str]] = ()) -> str:
    """The URL Label Studio opens for the image at `uri` (see the module docstring): the first mapping
    ``(FROM, TO)`` of `prefixes` whose FROM starts `uri` (or its local path) rewrites it; otherwise cloud
    and web URIs are kept and local paths become local-files URLs relative to ``/``. The rest of a
    rewritten path is percent-encoded when TO is a web URL (``/...`` or ``http(s)://``)."""
    mapped = _mapping(uri, prefixes)
    if mapped is not None:
        rest, target = mapped
        web = target.startswith(("/", "http://", "https://"))
        return target + (urllib.parse.quote(rest, safe="/") if web else rest)
    if not is_local(uri):
        return uri
    return LOCAL_FILES_URL + urllib.parse.quote(_local_path(uri).lstrip("/"), safe="/")


def is_local(uri: str) -> bool:
    """Whether `uri` is a local path or ``file://`` URI (a browser cannot open it from Label Studio)."""
    return "://" not in _local_path(uri)


def unmapped_local(uri: str, prefixes: list[tuple[str, str]] = ()) -> bool:
    """A local image that no mapping of `prefixes` rewrites (it gets the default local-files URL)."""
    return is_local(uri) and _mapping(uri, prefixes) is None


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _mapping(uri: str, prefixes) -> tuple[str, str] | None:
    """(the rest of `uri` after FROM, TO) of the first mapping that applies to `uri` or its local path."""
    for candidate in dict.fromkeys((uri, _local_path(uri))):
        for source, target in prefixes:
            if candidate.startswith(source):
                return candidate[len(source):], target
    return None


def task(image, vocabulary: list[str], model_version: str, prefixes: list[tuple[str, str]] = ()) -> dict:
    """One task with one prediction holding a brush region per class present in ``image.label_map``."""
    scores = {int(s["class_id"]): s["score_mean"] for s in image.stats}
    result = []
    for class_id in (int(k) for k in np.unique(image.label_map) if k > 0):
        region = {
            "id": f"c{class_id}", "from_name": "label", "to_name": "image", "type": "brushlabels",
            "original_width": image.width, "original_height": image.height, "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_brush_rle(image.label_map == class_id),
                      "brushlabels": [vocabulary[class_id - 1]]},
        }
        score = scores.get(class_id)
        if score is not None and math.isfinite(score):
            region["score"] = round(float(score), 6)
        result.append(region)
    finite = [r["score"] for r in result if "score" in r]
    prediction = {"model_version": model_version, "result": result}
    if finite:
        prediction["score"] = round(sum(finite) / len(finite), 6)
    return {"data": {"image": image_url(image.uri, prefixes), "uri": image.uri}, "predictions": [prediction]}


def write_labelstudio(selection: Selection, fs, dest: str, prefixes: list[tuple[str, str]] = ()) -> dict:
    """Writes ``tasks.json`` and ``label_config.xml``; returns counts for the summary line (``local``:
    how many images became local-files URLs without a mapping, for the command's note)."""
    version = f"diffseg-{selection.method}-{selection.run_id}"
    tasks = [task(image, selection.vocabulary, version, prefixes) for image in iter_images(selection)]
    with fs.open(posixpath.join(dest, "tasks.json"), "w") as handle:
        json.dump(tasks, handle)
    fs.pipe_file(posixpath.join(dest, "label_config.xml"), label_config(selection.vocabulary).encode())
    regions = sum(len(t["predictions"][0]["result"]) for t in tasks)
    local = sum(1 for t in tasks if unmapped_local(t["data"]["uri"], prefixes))
    return {"images": len(tasks), "annotations": regions, "files": ["tasks.json", "label_config.xml"], "local": local}
