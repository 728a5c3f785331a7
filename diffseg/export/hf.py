"""A Hugging Face dataset folder: Parquet shards with ``Image()`` features and a dataset card.

Layout of DEST::

    README.md                         dataset card: YAML header (configs, dataset_info features,
                                      id2label/label2id) and a description of the columns
    data/train-00000-of-0000N.parquet shards of at most ``shard_rows`` rows

Columns (one row per image of the chosen method): ``image`` (Image: the original file's bytes as stored,
read from its URI; ``None`` with ``include_images=False``), ``annotation`` (Image: the label map PNG,
pixel value = label id, 0 background), ``uri`` (string), ``width``, ``height`` (int32), ``classes``
(list of class names present). Image columns are ``{"bytes", "path"}`` structs and the features are in
each file's ``huggingface`` key-value metadata, which is how ``datasets`` recognises an ``Image()``
column in Parquet; ``datasets.load_dataset(DEST)`` (or ``load_dataset("parquet", data_dir=DEST)``) reads
it offline. ``id2label`` / ``label2id`` are in the card, in ``label_map.json`` and in every shard's
``diffseg`` metadata key (with the method and run id).
"""

from __future__ import annotations

import io
import json
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from diffseg.codecs.images import read_bytes
from diffseg.codecs.masks import encode_label_png
from diffseg.export.source import Selection, iter_images

_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema([("image", _IMAGE), ("annotation", _IMAGE), ("uri", pa.string()), ("width", pa.int32()),
                    ("height", pa.int32()), ("classes", pa.list_(pa.string()))])
FEATURES = {
    "image": {"_type": "Image"},
    "annotation": {"_type": "Image"},
    "uri": {"dtype": "string", "_type": "Value"},
    "width": {"dtype": "int32", "_type": "Value"},
    "height": {"dtype": "int32", "_type": "Value"},
    "classes": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
}
"""``datasets`` feature dicts of the columns (``List`` needs datasets >= 4; older releases name it Sequence)."""


def label_maps(vocabulary: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    """(id2label, label2id) with string ids, as transformers' configs hold them; 0 is "background"."""
    id2label = {str(k): name for k, name in enumerate(["background", *vocabulary])}
    return id2label, {name: int(k) for k, name in id2label.items()}


def schema_with_features(selection: Selection) -> pa.Schema:
    """SCHEMA plus key-value metadata: ``huggingface`` (the features, which make ``datasets`` decode the
    Image columns) and ``diffseg`` (id2label, method, run id), so a copied shard keeps its class list."""
    id2label, _ = label_maps(selection.vocabulary)
    return SCHEMA.with_metadata({
        "huggingface": json.dumps({"info": {"features": FEATURES}}),
        "diffseg": json.dumps({"id2label": id2label, "method": selection.method, "run_id": selection.run_id}),
    })


def dataset_card(selection: Selection, rows: int, shards: int) -> str:
    """README.md: YAML header that ``datasets`` reads (configs, features) plus a human description."""
    id2label, label2id = label_maps(selection.vocabulary)
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
        "dataset_info": {
            "features": [{"name": "image", "dtype": "image"}, {"name": "annotation", "dtype": "image"},
                         {"name": "uri", "dtype": "string"}, {"name": "width", "dtype": "int32"},
                         {"name": "height", "dtype": "int32"}, {"name": "classes", "list": "string"}],
            "splits": [{"name": "train", "num_examples": rows}],
        },
        "task_categories": ["image-segmentation"],
        "tags": ["semantic-segmentation", "diffseg"],
        "id2label": id2label,
        "label2id": label2id,
    }
    classes = "\n".join(f"| {k} | {name} |" for k, name in id2label.items())
    return (
        "---\n" + json.dumps(header, indent=1) + "\n---\n\n"  # JSON is valid YAML
        f"# diffseg masks ({selection.method})\n\n"
        f"Semantic segmentation masks made without training by diffseg (method `{selection.method}`, run "
        f"`{selection.run_id}`, model `{selection.model}`) from a frozen Stable Diffusion U-Net's attention. "
        f"{rows} images in {shards} Parquet shard(s) under `data/`.\n\n"
        "Columns: `image` (the original image), `annotation` (label map PNG: pixel value = label id, 0 = "
        "background), `uri` (where the image came from), `width`, `height`, `classes` (names present).\n\n"
        "```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/this/folder\", split=\"train\")\n```\n\n"
        "| id | label |\n|---|---|\n" + classes + "\n"
    )


def _read_original(uri: str) -> bytes:
    """The original's bytes, its URI read exactly as listed (no "::" URL chaining; read_bytes)."""
    try:
        return read_bytes(uri)
    except OSError as exc:
        cause = exc.__cause__ or exc  # read_bytes's OSError wraps what the filesystem raised
        raise OSError(f"cannot read the image {uri} ({type(cause).__name__}: {cause}); give this machine access to "
                      "the INPUT storage, or pass --no-images to export the label maps alone") from cause


def write_hf(selection: Selection, fs, dest: str, shard_rows: int = 1000, include_images: bool = True) -> dict:
    """Writes the folder described in the module docstring; returns counts for the summary line."""
    if shard_rows < 1:
        raise ValueError(f"shard rows must be at least 1, got {shard_rows}")
    schema = schema_with_features(selection)
    data_dir = posixpath.join(dest, "data")
    fs.makedirs(data_dir, exist_ok=True)
    shards: list[str] = []
    rows: list[dict] = []
    total = 0

    def flush() -> None:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, compression="zstd")
        name = f".part-{len(shards):05d}.parquet"  # hidden until renamed: a cut-short export is never read
        fs.pipe_file(posixpath.join(data_dir, name), buffer.getvalue())
        shards.append(name)
        rows.clear()

    for image in iter_images(selection, with_stats=False):
        original = _read_original(image.uri) if include_images else None
        rows.append({
            "image": None if original is None else {"bytes": original, "path": posixpath.basename(image.uri)},
            "annotation": {"bytes": encode_label_png(image.label_map), "path": None},
            "uri": image.uri, "width": image.width, "height": image.height, "classes": image.classes,
        })
        total += 1
        if len(rows) >= shard_rows:
            flush()
    if rows or not shards:
        flush()
    final = []
    for index, name in enumerate(shards):
        target = f"train-{index:05d}-of-{len(shards):05d}.parquet"
        fs.mv(posixpath.join(data_dir, name), posixpath.join(data_dir, target))
        final.append(f"data/{target}")
    id2label, label2id = label_maps(selection.vocabulary)
    fs.pipe_file(posixpath.join(dest, "label_map.json"),
                 json.dumps({"id2label": id2label, "label2id": label2id}, indent=1).encode())
    fs.pipe_file(posixpath.join(dest, "README.md"), dataset_card(selection, total, len(shards)).encode())
    return {"images": total, "files": ["README.md", "label_map.json", *final]}
