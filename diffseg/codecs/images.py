"""Robust image decoding: bytes or URIs in, HxWx3 uint8 RGB arrays out.

Every input that cannot be turned into pixels raises :class:`ImageDecodeError` (a ``ValueError``) whose
message names the input and the reason, so a batch job can record it as one ``decode`` error row and go
on. A failure to *read* the bytes (missing file, no permission, network) is a different stage and is
raised by :func:`load_image` as an ``OSError`` naming the URI.

Decisions (what a user sees):

- **Size limit.** ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS` = 64,000,000, e.g. 8000x8000) is
  checked on the size read from the file header, before any pixel is decoded, so a small file claiming a
  huge size (a decompression bomb) costs nothing. Pillow has its own guard, ``PIL.Image.MAX_IMAGE_PIXELS``
  (about 89 M pixels: a warning above it, an error above twice it); this module never changes that global.
  Pillow's error is reported as an :class:`ImageDecodeError` too. To accept images above Pillow's limit,
  raise both ``max_pixels`` and ``PIL.Image.MAX_IMAGE_PIXELS``.
- **Orientation.** The EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``), so the array
  is the image as a viewer shows it. A malformed EXIF block is ignored (the stored orientation is kept)
  rather than losing the image.
- **Modes.** Grey (``L``, ``1``) is repeated into three channels. Transparency (``LA``, ``RGBA``, ``P``
  with a transparent index, ``PA``...) is composited onto white. ``CMYK`` and ``YCbCr`` use Pillow's
  conversion. 16-bit grey (``I;16*``) keeps its top byte (``v >> 8``: the full 16-bit range maps to the
  full 8-bit range, nothing is clipped). 32-bit integer (``I``) holding values in 0..65535 (how 16-bit
  PNG/TIFF often arrive) is treated as 16-bit; other ``I`` images and float (``F``) images outside
  [0, 1] are scaled linearly from their own min..max; float images within [0, 1] are scaled by 255.
  NaN and infinities become 0.
- **Animation.** Animated GIF/WebP/APNG give their first frame.
- **Truncation.** Files are fully decoded, and Pillow's ``LOAD_TRUNCATED_IMAGES`` is never enabled, so a
  truncated file is an error, not a grey-padded image.
- 1x1 images are valid.
- **Decoding for the model.** :func:`decode_for_model` gives the model's square input and the photo's
  upright size without decoding every pixel: a JPEG is decoded at the smallest DCT scale (1/8, 1/4, 1/2)
  that keeps both sides at least the model's side (Pillow's draft mode), then resized (bicubic) to the
  square, as :func:`resize_square` does. The size comes from the header (swapped for EXIF rotations).
  The input differs from decoding in full and resizing only by the DCT's own downscaling (measured in
  docs/benchmarks.md: about 1 grey level on average); other formats decode in full.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest accepted width x height (64 megapixels, e.g. 8000x8000): a decoded RGB image of that size
takes 192 MB, and the job decodes several at a time per CPU. Pass ``max_pixels`` to change it."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")
"""Lower-case file name extensions listed as images (compare with ``name.lower().endswith(...)``)."""

_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")  # not "LAB": its "A" band is a colour axis


class ImageDecodeError(ValueError):
    """The input bytes are not a decodable image (empty, not an image, truncated, too large, ...)."""


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes into an (H, W, 3) uint8 RGB array, upright per its EXIF orientation.

    ``name`` (a URI or file name) only appears in error messages. Raises :class:`ImageDecodeError` for
    empty input, unknown formats, truncated or corrupt files, and images with more than ``max_pixels``
    pixels (checked from the header before decoding).
    """
    with _open_checked(data, name, max_pixels) as image:
        return _decode_upright(image, name, max_pixels)[0]


def decode_for_model(
    data: bytes, side: int, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode image bytes straight to the model's (side, side, 3) uint8 input; also the photo's (H, W).

    Equal to ``resize_square(decode_image(data), side)`` and ``decode_image(data).shape[:2]``, except that
    a JPEG is decoded at a reduced DCT scale first (module docstring: within the DCT's rounding of the
    full decode). The same errors as :func:`decode_image`.
    """
    if not isinstance(side, (int, np.integer)) or side < 1:
        raise ValueError(f"side must be a positive integer, got {side!r}")
    with _open_checked(data, name, max_pixels) as image:
        width, height = image.size
        if image.format == "JPEG":
            image.draft(image.mode, (int(side), int(side)))  # the square needs side px on both axes
        upright, rotated = _decode_upright(image, name, max_pixels)
    return resize_square(upright, side), ((width, height) if rotated else (height, width))


def _open_checked(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open image bytes (nothing decoded yet) and check the header's size against ``max_pixels``."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive pixel count, got {max_pixels!r}")
    if data is None or len(data) == 0:
        raise ImageDecodeError(f"cannot decode image {name!r}: the input is empty (zero bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(_describe_bomb(name, exc, max_pixels)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"cannot decode image {name!r}: not a recognised image format ({len(data)} bytes; "
            f"starts with {bytes(data[:8])!r})"
        ) from exc
    except Exception as exc:  # a corrupt header can raise anything from a plugin
        raise ImageDecodeError(
            f"cannot decode image {name!r}: corrupt header ({type(exc).__name__}: {exc})"
        ) from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageDecodeError(
            f"cannot decode image {name!r}: {width}x{height} = {width * height:,} pixels is over the "
            f"limit of {max_pixels:,} pixels; pass a larger max_pixels (and, above Pillow's own "
            f"limit of {Image.MAX_IMAGE_PIXELS or 0:,}, raise PIL.Image.MAX_IMAGE_PIXELS) to accept it"
        )
    if width < 1 or height < 1:
        image.close()
        raise ImageDecodeError(f"cannot decode image {name!r}: empty size {width}x{height}")
    return image


def _decode_upright(image: Image.Image, name: str, max_pixels: int) -> tuple[np.ndarray, bool]:
    """Decode an opened image: ((H, W, 3) uint8 upright per EXIF, whether a 90-degree rotation was applied)."""
    width, height = image.size
    try:
        image.load()  # first frame of animations; raises on truncated data
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(_describe_bomb(name, exc, max_pixels)) from exc
    except Exception as exc:
        raise ImageDecodeError(
            f"cannot decode image {name!r} ({image.format or 'unknown format'} {width}x{height}): "
            f"truncated or corrupt pixel data ({type(exc).__name__}: {exc})"
        ) from exc
    upright, orientation = _apply_exif_orientation(image)
    rotated = orientation in (5, 6, 7, 8)  # transposes: width and height swap
    try:
        return _pil_to_rgb(upright), rotated
    except ValueError as exc:
        raise ImageDecodeError(f"cannot decode image {name!r}: {exc}") from exc


def load_image(
    uri: str, max_pixels: int = DEFAULT_MAX_PIXELS, storage_options: dict | None = None
) -> np.ndarray:
    """Read an image from a local path or fsspec URL (``file://``, ``s3://``, ``gs://``...) as (H, W, 3) uint8.

    A read failure raises ``OSError`` (``FileNotFoundError``/``PermissionError`` when that is the cause)
    naming the URI; undecodable bytes raise :class:`ImageDecodeError`. ``storage_options`` is passed to
    ``fsspec.open`` (e.g. ``{"client_kwargs": {"endpoint_url": ...}}`` for an S3-compatible server).
    """
    data = read_bytes(uri, storage_options)
    return decode_image(data, name=uri, max_pixels=max_pixels)


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    """Return the whole content of ``uri`` (local path or fsspec URL) as bytes; errors as ``OSError``."""
    from diffseg.inputs.uri import open_exact  # `uri` names one object: no "::" URL chaining

    try:
        with open_exact(uri, **(storage_options or {})) as handle:
            return handle.read()
    except Exception as exc:
        if isinstance(exc, FileNotFoundError):
            cls: type[OSError] = FileNotFoundError
        elif isinstance(exc, PermissionError):
            cls = PermissionError
        else:
            cls = OSError
        raise cls(f"cannot read image {uri!r}: {type(exc).__name__}: {exc}") from exc


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Convert a PIL image (any mode) or a numpy array into an (H, W, 3) uint8 RGB array.

    Arrays may be (H, W) or (H, W, 1) grey, (H, W, 2) grey+alpha, (H, W, 3) RGB or (H, W, 4) RGBA, of
    dtype uint8, bool, uint16 (``>> 8``) or float (within [0, 1]: times 255; otherwise min..max of the
    array); alpha is composited onto white. PIL images go through the same conversion as
    :func:`decode_image` (without EXIF handling: apply ``ImageOps.exif_transpose`` first if needed).
    An (H, W, 3) uint8 array is returned as is (not copied). Raises ``ValueError`` naming the shape and
    dtype of anything else.
    """
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    array = np.asarray(image)
    if (
        array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] not in (1, 2, 3, 4))
        or array.size == 0
    ):
        raise ValueError(
            f"expected an image array of shape (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4), "
            f"got shape {array.shape} dtype {array.dtype}"
        )
    array8 = _scale_to_uint8(array)
    if array8.ndim == 2:
        array8 = array8[:, :, None]
    channels = array8.shape[2]
    if channels == 1:
        return np.repeat(array8, 3, axis=2)
    if channels == 2:
        return _composite_on_white(np.repeat(array8[:, :, :1], 3, axis=2), array8[:, :, 1])
    if channels == 4:
        return _composite_on_white(array8[:, :, :3], array8[:, :, 3])
    return array8


def resize_square(image: np.ndarray, side: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to (side, side, 3) uint8 with bicubic interpolation (PIL).

    The aspect ratio is not kept (the papers' protocol: the whole image fills the model's square input).
    An image already ``side`` x ``side`` is returned as is, without a copy.
    """
    if not isinstance(side, (int, np.integer)) or side < 1:
        raise ValueError(f"side must be a positive integer, got {side!r}")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"resize_square expects an (H, W, 3) uint8 image, got shape {array.shape} dtype {array.dtype}; "
            "convert it with to_rgb_array first"
        )
    if array.shape[0] == side and array.shape[1] == side:
        return array
    resized = Image.fromarray(array).resize((int(side), int(side)), Image.Resampling.BICUBIC)
    return np.asarray(resized)


def _describe_bomb(name: str, exc: Exception, max_pixels: int) -> str:
    """Message for Pillow's DecompressionBombError, with the pixel count it reports when it does."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "its size"
    if found and int(found.group(1)) <= max_pixels:
        return (
            f"cannot decode image {name!r}: {size} is within max_pixels={max_pixels:,} but over Pillow's "
            f"own decompression-bomb limit; raise PIL.Image.MAX_IMAGE_PIXELS (now "
            f"{Image.MAX_IMAGE_PIXELS or 0:,}; Pillow refuses twice that) to accept it"
        )
    return (
        f"cannot decode image {name!r}: {size} is over the limit of {max_pixels:,} pixels (Pillow refused "
        f"it as a possible decompression bomb); pass a larger max_pixels and raise "
        f"PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS or 0:,}) to accept it"
    )


def _apply_exif_orientation(image: Image.Image) -> tuple[Image.Image, int]:
    """The image rotated/flipped per its EXIF orientation tag, and the orientation applied (1: none;
    malformed EXIF is ignored)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(image), orientation
    except Exception:  # malformed EXIF: keep the stored orientation rather than lose the image
        pass
    return image, 1


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from a loaded PIL image of any mode (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image)  # np.array, not asarray: callers get a writable array
    if mode in ("L", "1"):
        return np.repeat(np.asarray(image.convert("L"))[:, :, None], 3, axis=2)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return np.repeat(_scale_to_uint8(np.asarray(image))[:, :, None], 3, axis=2)
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    try:
        if has_alpha:
            rgba = np.asarray(image.convert("RGBA"))
            return _composite_on_white(rgba[:, :, :3], rgba[:, :, 3])
        return np.array(image.convert("RGB"))
    except ValueError as exc:
        raise ValueError(f"unsupported image mode {mode!r} ({exc})") from exc


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map an integer/bool/float array to uint8 by its type's range (float: [0, 1] or its min..max)."""
    dtype = array.dtype
    if dtype == np.uint8:
        return array
    if dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if dtype.kind == "u" and dtype.itemsize == 2:
        return (array >> 8).astype(np.uint8)
    if dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high <= 0xFFFF:  # 16-bit data in a wider integer type (Pillow mode "I")
            return (array >> 8).astype(np.uint8)
        return _stretch(array.astype(np.float64), low, high)
    if dtype.kind == "f":
        values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            return np.rint(values * 255.0).astype(np.uint8)
        return _stretch(values, low, high)
    raise ValueError(
        f"unsupported image dtype {dtype} for an array of shape {array.shape}; "
        "use uint8, uint16, bool or float"
    )


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map [low, high] to [0, 255] (a constant image maps to 0)."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite (H, W, 3) uint8 colours with (H, W) uint8 alpha onto a white background."""
    a = alpha.astype(np.uint32)[:, :, None]
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)
