"""Output encodings: label maps and scores as PNG (the ``masks/`` table of DESIGN.md), and
:func:`encode_segmentation`, one result as the rows of the ``masks/`` and ``stats/`` tables (the
statistics themselves: diffseg.codecs.stats).

- Label maps travel as PNG: uint8 as 8-bit grey, uint16 (more than 255 classes) as 16-bit grey;
  :func:`decode_label_png` gives back the same dtype and values. The PNGs are standard (any PNG reader
  decodes them): one IDAT chunk, rows unfiltered, deflated with zlib's Z_RLE strategy (runs of equal
  bytes), which on label maps is 4-5x faster than Pillow's default and about as small or smaller
  (docs/benchmarks.md compares the settings).
- **Stored size.** The job stores the map at the argmax size (at most ``max_label_side``, 1024 px, on
  the long side; diffseg.segmenter), with the photo's size in the ``width``/``height`` columns. Readers
  get masks at the photo's size from :func:`decode_label_map`, the nearest upscale the Segmenter's
  ``label_map`` is (diffseg.codecs.upscale); the statistics of the ``stats/`` table are those of that
  full-size map, exactly (diffseg.codecs.stats). A map stored at the photo's size (photos of at most
  1024 px, or older runs) decodes unchanged.
- Scores (1 + K, h, w) travel as one tall 16-bit grey PNG of shape ((1 + K) * h, w): channel c occupies
  rows ``c*h .. (c+1)*h - 1``. Each channel has its own linear scale, kept in the PNG text chunk
  ``diffseg-scores`` as JSON ``{"version": 2, "offset": [...], "scale": [...]}`` (one float per
  channel); code 0 is -inf (a class removed by the category filter), code q >= 1 is
  ``offset[c] + scale[c] * (q - 1)``. Without diffseg (Pillow + numpy)::

      im = PIL.Image.open(io.BytesIO(png)); meta = json.loads(im.text["diffseg-scores"])
      q = np.asarray(im).astype(np.float64).reshape(len(meta["offset"]), -1, im.width)
      off, sc = (np.asarray(meta[k])[:, None, None] for k in ("offset", "scale"))
      scores = np.where(q == 0, -np.inf, off + sc * (q - 1))

  Older runs wrote 8-bit PNGs (``round(clip(x, 0, 1) * 255)``, -inf as 0); they still decode.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from diffseg.codecs.stats import compute_class_stats
from diffseg.codecs.upscale import upscale_labels

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_NO_FILTER = 0  # rows as they are: Z_RLE finds the runs of equal labels directly


def encode_label_png(label_map: np.ndarray) -> bytes:
    """Encode an (H, W) uint8 label map as an 8-bit grey PNG, or an (H, W) uint16 one as 16-bit grey.

    Rows are unfiltered and the stream uses zlib's Z_RLE strategy (module docstring); any PNG reader
    (Pillow, OpenCV, browsers) decodes the bytes to the same values.
    """
    array = np.asarray(label_map)
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16) or array.size == 0:
        raise ValueError(
            f"a label map must be a non-empty (H, W) uint8 or uint16 array, got shape {array.shape} dtype "
            f"{array.dtype}; cast it with .astype(np.uint8) (up to 255 classes) or np.uint16"
        )
    height, width = array.shape
    depth = 8 * array.dtype.itemsize
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).view(np.uint8)  # PNG: big-endian
    rows = np.empty((height, 1 + raw.shape[1]), dtype=np.uint8)
    rows[:, 0] = _PNG_NO_FILTER  # each row starts with its filter type
    rows[:, 1:] = raw
    compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = compressor.compress(rows.data) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)  # grey, deflate, adaptive, no interlace
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC-32 of type + payload."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(payload, zlib.crc32(kind)))


def decode_label_png(data: bytes) -> np.ndarray:
    """Decode a label-map PNG into (H, W) uint8 (8-bit PNG) or uint16 (16-bit PNG), values unchanged.

    Palette PNGs (as in PASCAL VOC) give their palette indices.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        mode = image.mode
        if mode in ("L", "P"):
            return np.array(image, dtype=np.uint8)
        if mode.startswith("I;16") or mode == "I":
            array = np.asarray(image)
            if array.size and (array.min() < 0 or array.max() > 0xFFFF):
                raise ValueError(f"label PNG holds values outside 0..65535 (mode {mode!r})")
            return array.astype(np.uint16)
    raise ValueError(f"a label-map PNG must be single-channel grey or palette, got mode {mode!r}")


def decode_label_map(data: bytes, width: int, height: int) -> np.ndarray:
    """A ``masks`` row's label map at the photo's size: (height, width) uint8 (uint16 beyond 255 classes).

    ``data``: its ``label_map_png``; ``width``, ``height``: its ``width`` and ``height`` columns. The PNG
    holds the map at the argmax size (module docstring); it is resized (nearest) exactly as the Segmenter
    resizes its ``label_map``, so the result equals the ``label_map`` the job computed. A PNG already at
    the photo's size is returned as decoded.
    """
    labels = decode_label_png(data)
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"a label map's photo size must be positive, got width={width} height={height}")
    return upscale_labels(labels, int(height), int(width))


SCORES_KEY = "diffseg-scores"
"""The PNG text chunk of a 16-bit scores PNG: JSON ``{"version": 2, "offset": [C floats], "scale":
[C floats]}`` (module docstring)."""

_SCORE_LEVELS = 65534  # finite values take codes 1..65535; code 0 is -inf


def encode_scores_png(scores: np.ndarray) -> bytes:
    """Encode (C, h, w) float scores as one tall (C*h, w) 16-bit grey PNG, each channel on its own scale.

    Channel c's finite values are mapped linearly from [min_c, max_c] onto codes 1..65535
    (``code = 1 + round((x - offset_c) / scale_c)``, ``scale_c = (max_c - min_c) / 65534``, 0 for a
    constant channel, which is then exact); -inf and NaN are code 0; +inf is the channel's top code.
    Offsets and scales go into the PNG text chunk :data:`SCORES_KEY`. The error of a value is at most
    scale_c / 2, i.e. 1/131068 of its channel's range.
    """
    array = np.asarray(scores)
    if array.ndim != 3 or array.size == 0 or array.dtype.kind not in "fiu":
        raise ValueError(
            f"scores must be a non-empty (C, h, w) float array, got shape {array.shape} dtype {array.dtype}"
        )
    values = array.astype(np.float64)
    channels, height, width = values.shape
    finite = np.isfinite(values)
    codes = np.zeros(values.shape, dtype=np.uint16)
    offsets, scales = [], []
    for c in range(channels):
        kept = values[c][finite[c]]
        lo = float(kept.min()) if kept.size else 0.0
        hi = float(kept.max()) if kept.size else 0.0
        scale = (hi - lo) / _SCORE_LEVELS if hi > lo else 0.0
        level = np.rint((values[c] - lo) / scale) if scale else np.zeros((height, width))
        level = np.where(values[c] == np.inf, _SCORE_LEVELS, level)
        codes[c] = np.where(finite[c] | (values[c] == np.inf), 1 + np.clip(level, 0, _SCORE_LEVELS), 0)
        offsets.append(lo)
        scales.append(scale)
    info = PngInfo()
    info.add_text(SCORES_KEY, json.dumps({"version": 2, "offset": offsets, "scale": scales}))
    image = Image.fromarray(np.ascontiguousarray(codes.reshape(channels * height, width), dtype="<u2"))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def decode_scores_png(data: bytes, channels: int | None = None) -> np.ndarray:
    """Decode a scores PNG into (C, h, w) float32 scores.

    A 16-bit PNG from :func:`encode_scores_png` gives the scores back to within half a step of each
    channel's scale, with -inf where they were -inf (or NaN); its channel count is read from the text
    chunk. An older 8-bit PNG (values ``round(clip(x, 0, 1) * 255)``, -inf stored as 0) gives values in
    [0, 1]; its maps are assumed square (``C = height // width``) unless ``channels`` is passed.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, text, stacked = image.mode, dict(getattr(image, "text", {}) or {}), np.asarray(image)
    except OSError as exc:  # not an image, truncated
        raise ValueError(f"scores are not a readable PNG: {exc}") from exc
    if mode == "L":
        return _split_channels(stacked, channels).astype(np.float32) / np.float32(255.0)
    if SCORES_KEY not in text or not (mode.startswith("I;16") or mode == "I"):
        raise ValueError(
            f"a scores PNG must be 16-bit grey with a {SCORES_KEY!r} text chunk (or 8-bit grey), got mode "
            f"{mode!r} and text keys {sorted(text)}"
        )
    try:
        meta = json.loads(text[SCORES_KEY])
        offset = np.asarray(meta["offset"], dtype=np.float64)
        scale = np.asarray(meta["scale"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the {SCORES_KEY!r} text chunk of a scores PNG is unreadable: {exc}") from exc
    if channels is not None and channels != len(offset):
        raise ValueError(f"this scores PNG holds {len(offset)} channels, not channels={channels}")
    codes = _split_channels(stacked, len(offset)).astype(np.float64)
    values = offset[:, None, None] + scale[:, None, None] * (codes - 1)
    return np.where(codes == 0, -np.inf, values).astype(np.float32)


def _split_channels(stacked: np.ndarray, channels: int | None) -> np.ndarray:
    """A tall (C*h, w) array -> (C, h, w); C = height // width when None (square maps)."""
    height, width = stacked.shape
    if channels is None:
        if height % width:
            raise ValueError(
                f"cannot infer the channel count of a {width}x{height} scores PNG: its height is not a "
                "multiple of its width (the maps are not square); pass channels="
            )
        channels = height // width
    if channels < 1 or height % channels:
        raise ValueError(f"a scores PNG of height {height} cannot hold channels={channels} equal maps")
    return stacked.reshape(channels, height // channels, width)


def encode_segmentation(
    seg, vocab_names: list[str], save_scores: bool = False, argmax_size: bool = False
) -> tuple[dict, list[dict]]:
    """One image's result for one method (a diffseg.segmenter.Segmentation) as what the tables store: the
    masks row (``width``, ``height``: the photo's size, ``method``, ``label_map_png``, ``classes``,
    ``scores_png``: None without `save_scores`) and its :func:`compute_class_stats` rows at the photo's
    size (class names: the vocabulary's, or the result's own for methods that name their segments).

    ``label_map_png`` holds ``seg.label_map`` (the photo's size), or with `argmax_size` (the job)
    ``seg.labels``, the argmax-size map that :func:`decode_label_map` brings back to the photo's size.
    The statistics are computed from ``seg.labels`` either way (the same numbers, without the full map).
    """
    height, width = seg.size
    stored = seg.labels if argmax_size else seg.label_map
    mask = {"width": int(width), "height": int(height), "method": seg.method,
            "label_map_png": encode_label_png(stored), "classes": list(seg.classes),
            "scores_png": encode_scores_png(seg.scores) if save_scores else None}
    return mask, compute_class_stats(seg.labels, seg.label_names(vocab_names), scores=seg.scores,
                                     size=(height, width))
