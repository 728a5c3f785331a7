"""The job's two Ray Data stages: ``decode_batch`` (CPU tasks) and ``SegmentUDF`` (the actor class).

``decode_batch`` reads and decodes images and resizes them to the model's square input, so only
``resolution x resolution x 3`` uint8 arrays travel to the actors. ``SegmentUDF`` (a
jobs.common.actor.ModelActor: model loaded once per actor, inside ``__init__``) holds one Segmenter and
returns one :data:`diffseg.lake.schemas.RESULT_SCHEMA` row per image: encoded label maps, optional
quantised scores and per-class statistics, or an error row. No decoded image or dense float map ever
goes back through the object store.

Faults are per image: a read or decode failure becomes an error row in ``decode_batch``; if the model
fails on a batch, the images are retried one by one and those that still fail become ``model`` error
rows; an encoding failure of one image becomes an ``encode`` error row. One bad image never fails its
batch. (Errors the job cannot attribute to an image, such as a model that does not load, fail the run.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from diffseg.inputs import READ_MAX_BYTES, READ_TIMEOUT_S
from diffseg.lake.schemas import SEGMENT_TABLES, error_result
from jobs.common.actor import ActorConfig, ModelActor, describe

log = logging.getLogger("jobs.segment.actor")


@dataclass(frozen=True)
class UdfConfig(ActorConfig):
    """What a segment actor needs besides the model URI and the vocabulary."""

    methods: tuple[str, ...] = ("diffsegmenter",)  # one forward serves all of them
    resolution: int = 512  # model input side (square)
    save_scores: bool = False  # also encode per-class scores (uint8 tall PNG) into masks.scores_png
    method_params: Mapping[str, Mapping] = field(default_factory=dict)  # {method: {field: value}} over defaults
    recipe: Mapping[str, object] = field(default_factory=dict)  # Segmenter keyword options (JobConfig.recipe_kwargs())


def make_method_params(values: Mapping[str, Mapping], methods) -> dict | None:
    """{method: params dataclass} from {method: {field: value}} (ValueError names bad methods or fields)."""
    from diffseg.methods import make_params

    if not values:
        return None
    unknown = sorted(set(values) - set(methods))
    if unknown:
        raise ValueError(f"parameters given for methods not in --method: {', '.join(unknown)}")
    return {m: make_params(m, dict(v)) for m, v in values.items()}


def decode_batch(batch: dict[str, np.ndarray], resolution: int, max_pixels: int, max_read_bytes: int = READ_MAX_BYTES,
                 read_timeout: float = READ_TIMEOUT_S) -> dict[str, np.ndarray]:
    """Reads, decodes and resizes a batch of URIs (the ``read`` and ``decode`` stages; a CPU task).

    `max_read_bytes`/`read_timeout`: diffseg.inputs.read_uris's limits (default: its defaults); a file
    over them is a ``read`` error naming the limit, an escaped non-UTF-8 name a ``list`` error.

    In: ``uri``, ``unit_id`` (N,) strings (and ``pos``, ``unit_rows``, passed on). Out: the same plus
    ``image`` (N, r, r, 3) uint8 (zeros on error), ``height``/``width`` (N,) int32 original size, and
    ``stage``/``error_type``/``message`` strings ("" when the image is fine).
    """
    from diffseg.codecs.images import decode_for_model
    from diffseg.inputs import read_uris
    from diffseg.redact import describe_error

    uris = [str(u) for u in batch["uri"]]
    n = len(uris)
    images = np.zeros((n, resolution, resolution, 3), dtype=np.uint8)
    heights = np.zeros(n, dtype=np.int32)
    widths = np.zeros(n, dtype=np.int32)
    stage, etype, message = [""] * n, [""] * n, [""] * n
    data = read_uris(uris, max_bytes=max_read_bytes, timeout=read_timeout)
    for i, uri in enumerate(uris):
        value = data.get(uri)
        if isinstance(value, Exception) or value is None:
            stage[i], etype[i] = getattr(value, "stage", "read"), type(value).__name__
            message[i] = f"cannot read {uri!r}: " + (describe_error(value, [uri]) if value is not None else "no data")
            continue
        try:
            # a JPEG decodes at the DCT scale the square input needs (draft mode); the size is the photo's
            images[i], (heights[i], widths[i]) = decode_for_model(value, resolution, name=uri, max_pixels=max_pixels)
        except Exception as exc:  # ImageDecodeError and anything a codec raises (MemoryError...)
            stage[i], etype[i], message[i] = "decode", type(exc).__name__, str(exc) or repr(exc)
    return {
        "uri": np.array(uris, dtype=object),
        "unit_id": np.array([str(u) for u in batch["unit_id"]], dtype=object),
        "image": images,
        "height": heights,
        "width": widths,
        "stage": np.array(stage, dtype=object),
        "error_type": np.array(etype, dtype=object),
        "message": np.array(message, dtype=object),
        **{k: batch[k] for k in ("pos", "unit_rows") if k in batch},
    }


class SegmentUDF(ModelActor):
    """Ray Data callable class: one Segmenter per actor; batches of decoded images in, RESULT_SCHEMA rows out."""

    tables = SEGMENT_TABLES

    def __init__(self, model_uri: str, vocab, config: UdfConfig):
        super().__init__(model_uri, config)
        from diffseg import Segmenter, Vocabulary

        self.vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary.from_spec(vocab)
        self.segmenter = Segmenter(self.pipe, self.vocab, method=list(config.methods), resolution=config.resolution,
                                   params=make_method_params(config.method_params, config.methods), **config.recipe)
        log.info("actor ready: model %s on %s (%s), %d classes, methods %s, recipe %s", self.pipe.name,
                 self.pipe.device, self.pipe.dtype, len(self.vocab), ", ".join(config.methods), self.segmenter.recipe)

    def items(self, batch: dict[str, np.ndarray]) -> list[dict]:
        """Decoded batch (see decode_batch) -> one item per image; a read/decode failure is an item error."""
        return [
            {"uri": str(batch["uri"][i]), "unit_id": str(batch["unit_id"][i]), "image": batch["image"][i],
             "size": (int(batch["height"][i]), int(batch["width"][i])),
             "error": (str(batch["stage"][i]), str(batch["error_type"][i]), str(batch["message"][i]))
             if batch["stage"][i] else None}
            for i in range(len(batch["uri"]))
        ]

    def compute(self, items: list[dict]) -> list[dict]:
        """One forward for all `items`: per image {method: Segmentation}."""
        out = self.segmenter.segment([it["image"] for it in items], keys=[it["uri"] for it in items],
                                     sizes=[it["size"] for it in items])
        return [{m: out[m][j] for m in self.segmenter.methods} for j in range(len(items))]

    def error_row(self, item: dict, stage: str, exc: BaseException | str, error_type: str | None = None) -> dict:
        message = exc if isinstance(exc, str) else describe(exc)
        return error_result(item["uri"], item["unit_id"], stage, message, error_type=error_type or type(exc).__name__)

    def encode(self, item: dict, per_method: dict) -> dict:
        """Masks and stats items of one image for every method: the label map stored at the argmax size
        (``width``/``height``: the photo's; readers use diffseg.codecs.masks.decode_label_map), the
        statistics exact at the photo's size."""
        from diffseg.codecs.masks import encode_segmentation

        masks, stats = [], []
        for method, seg in per_method.items():
            mask, rows = encode_segmentation(seg, self.vocab.names, self.config.save_scores, argmax_size=True)
            masks.append({**mask, "method": method})
            stats += [{"method": method, **row} for row in rows]
        return {"uri": item["uri"], "unit_id": item["unit_id"], "stage": None, "error_type": None, "message": None,
                "masks": masks, "stats": stats}

