"""A Ray Data stage users drop into their own pipelines: :class:`SegmentStage`.

::

    import ray
    from jobs.stage import SegmentStage

    ds = ray.data.read_images("s3://lake/photos/", include_paths=True)        # any sizes, per row
    masks = ds.map_batches(
        SegmentStage,
        fn_constructor_kwargs={"model": "s3://models/sd15/", "vocab": "person, car, road"},
        concurrency=2, batch_size=8, num_gpus=1,                            # one model per actor
    )
    masks.drop_columns(["image"]).write_parquet("s3://lake/masks/")

Unlike ``jobs.segment`` (which lists a lake, writes Parquet under OUTPUT itself, commits exactly once and
resumes), the stage writes nothing: it adds columns to the batch and leaves the rest of the pipeline to
you. The model is loaded once per actor in ``__init__`` (pass a model URI, never a loaded pipeline).
docs/stage.md has the columns and options.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from diffseg.lake.schemas import RUN_COLUMNS, STATS_SCHEMA

log = logging.getLogger("jobs.stage")

# per-class statistics of one (image, method): the stats table's columns without the row's identity
STAT_STRUCT = pa.struct([f for f in STATS_SCHEMA if f.name not in ("uri", "method", *RUN_COLUMNS)])
# the columns the stage adds (after the batch's own), one row per (image, method)
OUTPUT_FIELDS = [
    pa.field("method", pa.string()),
    pa.field("width", pa.int32()),  # of the label map = of the input image
    pa.field("height", pa.int32()),
    pa.field("label_map_png", pa.binary()),  # uint8 PNG (uint16 beyond 255 classes): 0 background, k class k
    pa.field("classes", pa.list_(pa.string())),  # names of the classes present
    pa.field("stats", pa.list_(STAT_STRUCT)),  # one struct per class present (diffseg.codecs.masks stats)
    pa.field("error", pa.string()),  # null, or why this image has no mask (the other columns are null)
]


class SegmentStage:
    """Ray Data callable class: batches of images in, one row per (image, method) out: the batch's columns
    plus :data:`OUTPUT_FIELDS`. With the default single method, one row per image.

    model: a model URI (``tiny``, a folder, ``s3://...`` of a diffusers SD checkpoint; see
    diffseg.load_pipeline); vocab: a comma-separated class list, a class file path/URL, a list of names or
    a diffseg.Vocabulary; methods: one forward serves all of them; resolution: the model's square input
    side; dtype/device: as diffseg.runtime.choose_runtime (default: bf16 with channels_last on a GPU
    the actor holds, else fp32 on CPU; the job's and the benchmark's settings);
    params: {method: {parameter: value}} over each method's defaults (e.g. {"diffsegmenter": {"tau": 0.5}});
    image_column: (H, W, 3) arrays (also grey or RGBA; rows may differ in size), as read_images gives;
    key_column: the column that seeds each image's noise (its path: the same image gives the same mask in
    any batch; missing: a hash of its pixels); keep_image: False drops the image column from the output;
    torch_threads: intra-op threads of this actor (default: torch's own).
    """

    def __init__(self, model: str, vocab, methods: str | Sequence[str] = ("diffsegmenter",), resolution: int = 512,
                 dtype: str = "auto", device: str | None = None, params: Mapping[str, Mapping] | None = None,
                 image_column: str = "image", key_column: str = "path", keep_image: bool = True,
                 torch_threads: int | None = None):
        import torch

        from diffseg import Segmenter, Vocabulary
        from diffseg.methods import make_params
        from diffseg.runtime import choose_runtime, load_runtime_pipeline

        if not isinstance(model, str):
            raise TypeError(f"model must be a URI string (loaded in each actor), got {type(model).__name__}; "
                            "pass e.g. 'tiny', a folder or 's3://models/sd15/'")
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        methods = [methods] if isinstance(methods, str) else list(methods)
        if isinstance(vocab, str):
            vocab = Vocabulary.from_spec(vocab)
        elif not isinstance(vocab, Vocabulary):
            vocab = Vocabulary(list(vocab))
        self.vocab, self.image_column, self.key_column, self.keep_image = vocab, image_column, key_column, keep_image
        self.pipe = load_runtime_pipeline(model, choose_runtime(device, dtype))
        method_params = {m: make_params(m, dict(v)) for m, v in (params or {}).items()}
        self.segmenter = Segmenter(self.pipe, vocab, method=methods, resolution=resolution,
                                   params=method_params or None)
        if self.pipe.is_random:
            log.warning("model %r has RANDOM weights: its masks are meaningless", model)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """`batch`: Ray Data's numpy format (``batch_format="numpy"``, the default), with `image_column`
        (N,) arrays and any other columns. Returns a pyarrow Table: each input row repeated per method
        (image-major), with the :data:`OUTPUT_FIELDS` columns added."""
        from diffseg.codecs.images import to_rgb_array

        if self.image_column not in batch:
            raise KeyError(f"the batch has no {self.image_column!r} column (it has {', '.join(batch)}); pass "
                           "image_column= or read with ray.data.read_images(..., include_paths=True)")
        clash = sorted(set(batch) & {f.name for f in OUTPUT_FIELDS})
        if clash:
            raise ValueError(f"the batch already has column(s) {', '.join(clash)} that the stage adds; rename or "
                             "drop them before the stage")
        images = batch[self.image_column]
        keys = [str(k) for k in batch[self.key_column]] if self.key_column in batch else None
        arrays: dict[int, np.ndarray] = {}
        errors: dict[int, str] = {}
        for i, image in enumerate(images):
            try:
                arrays[i] = to_rgb_array(image)
            except ValueError as exc:
                errors[i] = f"not an image: {exc}"
        ok = sorted(arrays)
        results = self.segmenter.segment([arrays[i] for i in ok], keys=[keys[i] for i in ok] if keys else None)
        per_image = {i: {m: results[m][j] for m in self.segmenter.methods} for j, i in enumerate(ok)}
        rows = [self._row(per_image[i][m] if i in per_image else None, m, errors.get(i))
                for i in range(len(images)) for m in self.segmenter.methods]
        return self._table(batch, rows)

    def _row(self, seg, method: str, error: str | None) -> dict:
        from diffseg.codecs.masks import encode_segmentation

        if seg is None:
            return {"method": method, "error": error or "not segmented"}
        mask, stats = encode_segmentation(seg, self.vocab.names)
        return {"method": method, "width": mask["width"], "height": mask["height"],
                "label_map_png": mask["label_map_png"], "classes": mask["classes"],
                "stats": [{k: s[k] for k in STAT_STRUCT.names} for s in stats], "error": None}

    def _table(self, batch: dict[str, np.ndarray], rows: list[dict]) -> pa.Table:
        from ray.data.block import BlockAccessor

        added = pa.table([pa.array([r.get(f.name) for r in rows], type=f.type) for f in OUTPUT_FIELDS],
                         schema=pa.schema(OUTPUT_FIELDS))
        columns = {k: v for k, v in batch.items() if self.keep_image or k != self.image_column}
        if not columns:
            return added
        take = np.repeat(np.arange(len(next(iter(columns.values())))), len(self.segmenter.methods))
        table = BlockAccessor.batch_to_block(columns).take(pa.array(take, type=pa.int64()))
        for field, column in zip(OUTPUT_FIELDS, added.columns):
            table = table.append_column(field, column)
        return table
