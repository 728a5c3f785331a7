"""The job's two Ray Data stages: ``decode_batch`` (CPU tasks) and ``SegmentUDF`` (the actor class).

``decode_batch`` reads and decodes images and resizes them to the model's square input, so only
``resolution x resolution x 3`` uint8 arrays travel to the actors. ``SegmentUDF`` holds one Segmenter
(model loaded once per actor, inside ``__init__``) and returns one :data:`diffseg.lake.schemas.RESULT_SCHEMA` row
per image: encoded label maps, optional quantised scores and per-class statistics, or an error row. No
decoded image or dense float map ever goes back through the object store.

Faults are per image: a read or decode failure becomes an error row in ``decode_batch``; if the model
fails on a batch, the images are retried one by one and those that still fail become ``model`` error
rows; an encoding failure of one image becomes an ``encode`` error row. One bad image never fails its
batch. (Errors the job cannot attribute to an image, such as a model that does not load, fail the run.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from diffseg.lake.schemas import error_result, results_to_table

log = logging.getLogger("jobs.segment.actor")


@dataclass(frozen=True)
class UdfConfig:
    """What an actor needs besides the model URI and the vocabulary."""

    methods: tuple[str, ...] = ("diffsegmenter",)  # one forward serves all of them
    resolution: int = 512  # model input side (square)
    dtype: str = "auto"  # auto = fp16 on CUDA, fp32 on CPU
    device: str = "cpu"  # "cuda" when the actor holds a GPU
    save_scores: bool = False  # also encode per-class scores (uint8 tall PNG) into masks.scores_png
    torch_threads: int = 1  # intra-op threads of this actor (its CPU share)
    method_params: str = ""  # JSON {method: {field: value}} over the methods' defaults


def parse_method_params(text: str, methods) -> dict | None:
    """{method: params dataclass} from the JSON of JobConfig.method_params (ValueError names bad fields)."""
    import json

    from diffseg.methods import make_params

    if not text:
        return None
    values = json.loads(text)
    unknown = sorted(set(values) - set(methods))
    if unknown:
        raise ValueError(f"parameters given for methods not in --method: {', '.join(unknown)}")
    return {m: make_params(m, v) for m, v in values.items()}


def decode_batch(batch: dict[str, np.ndarray], resolution: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Reads, decodes and resizes a batch of URIs (the ``read`` and ``decode`` stages; a CPU task).

    In: ``uri``, ``unit_id`` (N,) strings. Out: the same plus ``image`` (N, r, r, 3) uint8 (zeros on
    error), ``height``/``width`` (N,) int32 original size, and ``stage``/``error_type``/``message``
    strings ("" when the image is fine).
    """
    from diffseg.codecs.images import decode_image, resize_square
    from diffseg.lake.inputs import read_uris

    uris = [str(u) for u in batch["uri"]]
    n = len(uris)
    images = np.zeros((n, resolution, resolution, 3), dtype=np.uint8)
    heights = np.zeros(n, dtype=np.int32)
    widths = np.zeros(n, dtype=np.int32)
    stage, etype, message = [""] * n, [""] * n, [""] * n
    data = read_uris(uris)
    for i, uri in enumerate(uris):
        value = data.get(uri)
        if isinstance(value, Exception) or value is None:
            stage[i], etype[i] = "read", type(value).__name__
            message[i] = f"cannot read {uri!r}: {type(value).__name__}: {value}"
            continue
        try:
            image = decode_image(value, name=uri, max_pixels=max_pixels)
            heights[i], widths[i] = image.shape[:2]
            images[i] = resize_square(image, resolution)
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
    }


class SegmentUDF:
    """Ray Data callable class: one Segmenter per actor; batches of decoded images in, result rows out."""

    def __init__(self, model_uri: str, vocab, config: UdfConfig):
        import torch  # heavy imports stay in the actor, the driver never loads the model

        from diffseg import Segmenter, Vocabulary, load_pipeline

        torch.set_num_threads(max(1, int(config.torch_threads)))
        self.config = config
        self.vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary.from_spec(vocab)
        self.pipe = load_pipeline(model_uri, dtype=config.dtype, device=config.device)
        self.segmenter = Segmenter(self.pipe, self.vocab, method=list(config.methods), resolution=config.resolution,
                                   params=parse_method_params(config.method_params, config.methods))
        log.info("actor ready: model %s on %s (%s), %d classes, methods %s", self.pipe.name, self.pipe.device,
                 self.pipe.dtype, len(self.vocab), ", ".join(config.methods))

    def __call__(self, batch: dict[str, np.ndarray]):
        """Decoded batch (see decode_batch) -> pyarrow Table of RESULT_SCHEMA rows, one per image."""
        n = len(batch["uri"])
        rows: list[dict | None] = [None] * n
        ok = []
        for i in range(n):
            uri, unit = str(batch["uri"][i]), str(batch["unit_id"][i])
            if batch["stage"][i]:
                rows[i] = error_result(uri, unit, str(batch["stage"][i]), str(batch["message"][i]),
                                       error_type=str(batch["error_type"][i]))
            else:
                ok.append(i)
        for i, result in zip(ok, self._segment([batch["image"][i] for i in ok],
                                               [str(batch["uri"][i]) for i in ok],
                                               [(int(batch["height"][i]), int(batch["width"][i])) for i in ok])):
            uri, unit = str(batch["uri"][i]), str(batch["unit_id"][i])
            if isinstance(result, Exception):
                rows[i] = error_result(uri, unit, "model", _describe(result), error_type=type(result).__name__)
            else:
                rows[i] = self._encode(uri, unit, result)
        return results_to_table(rows)

    def _segment(self, images: list[np.ndarray], keys: list[str], sizes: list[tuple[int, int]]) -> list:
        """Per image: {method: Segmentation}, or the exception of that image (batch first, then one by one)."""
        if not images:
            return []
        try:
            out = self.segmenter.segment(images, keys=keys, sizes=sizes)
            return [{m: out[m][j] for m in self.segmenter.methods} for j in range(len(images))]
        except Exception as exc:
            log.warning("model failed on a batch of %d (%s); retrying its images one by one", len(images),
                        _describe(exc))
            self._free_memory()
        results = []
        for image, key, size in zip(images, keys, sizes):
            try:
                out = self.segmenter.segment([image], keys=[key], sizes=[size])
                results.append({m: out[m][0] for m in self.segmenter.methods})
            except Exception as exc:
                self._free_memory()
                results.append(exc)
        return results

    def _encode(self, uri: str, unit: str, per_method: dict) -> dict:
        """Masks and stats items of one image for every method, or an ``encode`` error row."""
        from diffseg.codecs.masks import compute_class_stats, encode_label_png, encode_scores_png

        try:
            masks, stats = [], []
            for method, seg in per_method.items():
                height, width = seg.label_map.shape
                masks.append(
                    {
                        "width": int(width),
                        "height": int(height),
                        "method": method,
                        "label_map_png": encode_label_png(seg.label_map),
                        "classes": list(seg.classes),
                        "scores_png": encode_scores_png(seg.scores) if self.config.save_scores else None,
                    }
                )
                names = _class_names(self.vocab.names, seg)
                for item in compute_class_stats(seg.label_map, names, scores=seg.scores):
                    stats.append({"method": method, **item})
            return {"uri": uri, "unit_id": unit, "stage": None, "error_type": None, "message": None,
                    "masks": masks, "stats": stats}
        except Exception as exc:
            return error_result(uri, unit, "encode", _describe(exc), error_type=type(exc).__name__)

    def _free_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _class_names(vocab_names: list[str], seg) -> list[str]:
    """Names of label ids 1..K: the vocabulary, overridden by what the Segmentation says it found
    (methods without a vocabulary, such as unsupervised clustering, name their own segments)."""
    names = list(vocab_names)
    for cid, name in zip(getattr(seg, "class_ids", []) or [], seg.classes):
        if cid > len(names):
            names += [f"segment {j}" for j in range(len(names) + 1, cid + 1)]
        names[cid - 1] = name
    return names


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
