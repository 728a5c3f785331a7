"""A VOC-style folder: palette PNG label maps plus the class list.

Layout of DEST::

    SegmentationClass/STEM.png       (H, W) palette PNG: pixel value = label id (0 background, k class k)
    ImageSets/Segmentation/all.txt   the stems, one per line
    class_names.txt                  "background" then the vocabulary, one per line (line k = label k)
    labelmap.txt                     CVAT/VOC-style "name:r,g,b::" lines, in label order
    sources.tsv                      stem <TAB> image URI (which image each file belongs to)

The palette is PASCAL VOC's (:func:`diffseg.codecs.overlay.palette`), so tools that read VOC show the same
colours. Stems come from :func:`diffseg.export.source.unique_stems` (a clash gets a hash suffix, never an overwrite).
PNG palettes hold 256 entries: a label map with ids above 255 cannot be written (export COCO or HF).
"""

from __future__ import annotations

import io
import posixpath

import numpy as np
from PIL import Image

from diffseg.codecs.overlay import palette
from diffseg.export.source import Selection, iter_images, unique_stems

_PALETTE = palette(256).tobytes()  # every PNG's 256 entries, built once


def encode_palette_png(label_map: np.ndarray) -> bytes:
    """An (H, W) integer label map with ids 0..255 as a palette PNG whose indices are the ids."""
    array = np.asarray(label_map)
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise ValueError(f"a label map must be an (H, W) integer array, got shape {array.shape} dtype {array.dtype}")
    if array.size and int(array.max()) > 255:
        raise ValueError(f"label id {int(array.max())} does not fit a palette PNG (ids 0..255): export this run "
                         "as --format coco or --format hf instead")
    image = Image.fromarray(array.astype(np.uint8))
    image.putpalette(_PALETTE)  # an "L" image with a palette becomes "P", its pixel values the indices
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_voc(selection: Selection, fs, dest: str) -> dict:
    """Writes the folder described in the module docstring; returns counts for the summary line."""
    stems = unique_stems(selection.uris)
    names = ["background", *selection.vocabulary]
    colours = palette(max(256, len(names)))
    fs.makedirs(posixpath.join(dest, "SegmentationClass"), exist_ok=True)
    fs.makedirs(posixpath.join(dest, "ImageSets", "Segmentation"), exist_ok=True)
    written = []
    for image in iter_images(selection, with_stats=False):
        stem = stems[image.uri]
        fs.pipe_file(posixpath.join(dest, "SegmentationClass", f"{stem}.png"), encode_palette_png(image.label_map))
        written.append((stem, image.uri))
    texts = {
        "ImageSets/Segmentation/all.txt": "".join(f"{stem}\n" for stem, _ in written),
        "class_names.txt": "".join(f"{name}\n" for name in names),
        "labelmap.txt": "# label:color_rgb:parts:actions\n"
        + "".join(f"{name}:{','.join(str(int(c)) for c in colours[k])}::\n" for k, name in enumerate(names)),
        "sources.tsv": "".join(f"{stem}\t{uri}\n" for stem, uri in written),
    }
    for rel, text in texts.items():
        fs.pipe_file(posixpath.join(dest, rel), text.encode())
    return {"images": len(written), "files": [f"SegmentationClass/ ({len(written)} PNGs)", *texts]}
