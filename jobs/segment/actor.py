"""The job's two Ray Data stages: ``decode_batch`` (CPU tasks) and ``SegmentUDF`` (the actor class).

``decode_batch`` reads and decodes images and resizes them to the model's square input, so only
``resolution x resolution x 3`` uint8 arrays travel to the actors. ``SegmentUDF`` (a
jobs.common.actor.ModelActor: model loaded once per actor, inside ``__init__``) holds one Segmenter and
does the device work: VAE, U-Net under capture, the methods, the argmax. In the job
(``UdfConfig.encode_stage``) it returns compact outcomes (:func:`compact_segmentation`: the argmax-size
label maps, uint8 or uint16, and only the score channels of the classes present, which the statistics
read; every channel only with ``--save-scores``), and :class:`SegmentEncoder` in the pipeline's CPU tasks
(jobs.common.actor.encode_and_write) turns them into one :data:`diffseg.lake.schemas.RESULT_SCHEMA` row per
image: encoded label maps, optional quantised scores and per-class statistics, or an error row, byte for
byte what the actor would encode itself (tests/jobs/segment/test_encode_stage.py). No decoded image
travels back through the object store.

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


def compact_segmentation(seg, all_scores: bool = False) -> dict:
    """One method's result (a diffseg.segmenter.Segmentation) as it travels to the CPU stage: its labels
    (h, w) uint8/uint16 at the argmax size, ``size``, ``classes``, ``class_ids``, ``method``, and
    ``scores`` (n, hs, ws) float32: the channels ``channels`` (the labels present: ``class_ids``) of the
    (``n_channels``, hs, ws) scores, or all of them with `all_scores` (--save-scores stores them)."""
    present = seg.class_ids or [int(k) for k in np.unique(seg.labels) if k]  # class_ids: the Segmenter's counts
    channels = list(range(seg.scores.shape[0])) if all_scores else sorted(int(k) for k in present)
    return {"labels": seg.labels, "size": tuple(seg.size), "classes": list(seg.classes),
            "class_ids": list(seg.class_ids or []), "method": seg.method, "n_channels": int(seg.scores.shape[0]),
            "channels": channels, "scores": np.ascontiguousarray(seg.scores[channels])}


def expand_segmentation(compact: dict):
    """The Segmentation a :func:`compact_segmentation` dict stands for: scores of the channels it left out are
    NaN (the statistics read only the channels of the labels present; the scores PNG needs all of them)."""
    from diffseg.segmenter import Segmentation

    scores = compact["scores"]
    if len(compact["channels"]) != compact["n_channels"]:
        full = np.full((compact["n_channels"], *scores.shape[1:]), np.nan, np.float32)
        full[compact["channels"]] = scores
        scores = full
    return Segmentation(labels=compact["labels"], scores=scores, classes=compact["classes"], method=compact["method"],
                        class_ids=compact["class_ids"], size=compact["size"])


@dataclass(frozen=True)
class SegmentEncoder:
    """Encodes an image's results into its RESULT_SCHEMA row, and makes error rows: what SegmentUDF does in
    the actor, as a small picklable object for the pipeline's CPU tasks (no model)."""

    vocab_names: tuple[str, ...]
    save_scores: bool = False
    tables = SEGMENT_TABLES

    def error_row(self, item: dict, stage: str, exc: BaseException | str, error_type: str | None = None) -> dict:
        message = exc if isinstance(exc, str) else describe(exc)
        return error_result(item["uri"], item["unit_id"], stage, message, error_type=error_type or type(exc).__name__)

    def encode(self, item: dict, per_method: dict) -> dict:
        """Masks and stats items of one image for every method: the label map stored at the argmax size
        (``width``/``height``: the photo's; readers use diffseg.codecs.masks.decode_label_map), the
        statistics exact at the photo's size. `per_method`: {method: Segmentation or its compact dict}."""
        from diffseg.codecs.masks import encode_segmentation

        masks, stats = [], []
        for method, seg in per_method.items():
            seg = expand_segmentation(seg) if isinstance(seg, dict) else seg
            mask, rows = encode_segmentation(seg, list(self.vocab_names), self.save_scores, argmax_size=True)
            masks.append({**mask, "method": method})
            stats += [{"method": method, **row} for row in rows]
        return {"uri": item["uri"], "unit_id": item["unit_id"], "stage": None, "error_type": None, "message": None,
                "masks": masks, "stats": stats}


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

    def compact(self, item: dict, per_method: dict) -> dict:
        """{method: compact_segmentation} (all score channels only with --save-scores)."""
        return {m: compact_segmentation(seg, self.config.save_scores) for m, seg in per_method.items()}

    @classmethod
    def stage_encoder(cls, model_uri: str, vocab, config: UdfConfig) -> SegmentEncoder:
        from diffseg import Vocabulary

        vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary.from_spec(vocab)
        return SegmentEncoder(tuple(vocab.names), config.save_scores)

    def encoder(self) -> SegmentEncoder:
        return SegmentEncoder(tuple(self.vocab.names), self.config.save_scores)

    def error_row(self, item: dict, stage: str, exc: BaseException | str, error_type: str | None = None) -> dict:
        return self.encoder().error_row(item, stage, exc, error_type)

    def encode(self, item: dict, per_method: dict) -> dict:
        """SegmentEncoder.encode, in the actor (without encode_stage)."""
        return self.encoder().encode(item, per_method)
