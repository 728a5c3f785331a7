"""diffseg.codecs.images: decoding real encoded files of every awkward kind, and the errors for bad ones."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from diffseg.codecs.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    decode_for_model,
    decode_image,
    load_image,
    resize_square,
    to_rgb_array,
)

NAME = "s3://lake/photos/odd-one.jpg"


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def noise_image(width: int = 64, height: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height 8-bit RGB, with one empty IDAT and IEND."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


# --- bad inputs: one error type, naming the input ---------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["zero-bytes", "random-bytes", "text", "truncated-jpeg", "truncated-png", "huge-header", "over-limit"],
)
def test_bad_inputs_raise_image_decode_error_naming_the_input(kind):
    max_pixels = DEFAULT_MAX_PIXELS
    if kind == "zero-bytes":
        data, reason = b"", "empty"
    elif kind == "random-bytes":
        data, reason = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "format"
    elif kind == "text":
        data, reason = b"<html>404 not found</html>", "format"
    elif kind == "truncated-jpeg":
        full = encode(noise_image(), "JPEG", quality=95)
        data, reason = full[: len(full) // 2], "truncated"
    elif kind == "truncated-png":
        full = encode(noise_image(), "PNG")
        data, reason = full[: len(full) // 2], "truncated"
    elif kind == "huge-header":  # 100000 x 100000 claimed by a ~60-byte file
        data, reason = png_header_only(100_000, 100_000), "10,000,000,000 pixels"
    else:
        data, reason = encode(noise_image(300, 200), "PNG"), "300x200 = 60,000 pixels"
        max_pixels = 1000
    for decode in (decode_image, lambda *a, **k: decode_for_model(a[0], 64, *a[1:], **k)):
        with pytest.raises(ImageDecodeError) as info:
            decode(data, name=NAME, max_pixels=max_pixels)
        message = str(info.value)
        assert NAME in message
        assert reason in message
        assert isinstance(info.value, ValueError)


def test_over_limit_message_says_how_to_raise_it():
    with pytest.raises(ImageDecodeError, match="max_pixels") as info:
        decode_image(encode(noise_image(300, 200), "PNG"), name="a.png", max_pixels=59_999)
    assert "59,999" in str(info.value)
    # exactly at the limit is accepted
    assert decode_image(encode(noise_image(300, 200), "PNG"), max_pixels=60_000).shape == (200, 300, 3)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_header_over_default_limit_is_refused_before_decoding():
    data = png_header_only(10_000, 10_000)  # 100 M pixels > 64 M default; no pixel data at all
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(data, name="bomb.png")


def test_pillow_bomb_guard_above_max_pixels_is_reported_as_decode_error():
    data = png_header_only(20_000, 20_000)  # 400 M pixels: Pillow's own guard refuses it at open
    with pytest.raises(ImageDecodeError, match="PIL.Image.MAX_IMAGE_PIXELS") as info:
        decode_image(data, name="big.png", max_pixels=10**9)
    assert "within max_pixels" in str(info.value) and "400,000,000" in str(info.value)


def test_truncated_file_is_not_silently_padded():
    from PIL import ImageFile

    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    full = encode(noise_image(256, 256), "JPEG")
    with pytest.raises(ImageDecodeError, match="bomb-free.jpg"):
        decode_image(full[: len(full) - 200], name="bomb-free.jpg")
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


# --- good inputs of every mode -----------------------------------------------------------------------


def test_rgb_jpeg_and_png_decode_to_uint8_rgb():
    image = noise_image(37, 21)
    png = decode_image(encode(image, "PNG"))
    assert png.shape == (21, 37, 3) and png.dtype == np.uint8
    np.testing.assert_array_equal(png, np.asarray(image))
    jpeg = decode_image(encode(image, "JPEG", quality=95))
    assert jpeg.shape == (21, 37, 3) and jpeg.dtype == np.uint8
    assert png.flags.writeable


def test_one_by_one_image_is_valid():
    out = decode_image(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert out.shape == (1, 1, 3)
    assert out[0, 0].tolist() == [10, 20, 30]


def test_16_bit_grey_png_keeps_the_top_byte():
    values = np.array([[0, 256, 65535, 0x1234, 0x80FF]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(values), "PNG"))
    assert out.shape == (1, 5, 3)
    expected = [0, 1, 255, 0x12, 0x80]
    for channel in range(3):
        assert out[0, :, channel].tolist() == expected


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red
    out = decode_image(data)
    assert out.shape == (16, 16, 3)
    assert np.abs(out[8, 8].astype(int) - [255, 0, 0]).max() <= 8


def test_palette_png_with_transparency_composites_onto_white():
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 0)  # transparent index
    image.putpixel((1, 0), 1)  # opaque red
    out = decode_image(encode(image, "PNG", transparency=0))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [255, 0, 0]


def test_la_png_grey_with_alpha():
    image = Image.new("LA", (3, 1))
    image.putpixel((0, 0), (100, 255))  # opaque grey
    image.putpixel((1, 0), (0, 0))  # fully transparent black -> white
    image.putpixel((2, 0), (0, 128))  # half transparent black -> mid grey
    out = decode_image(encode(image, "PNG"))
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert abs(int(out[0, 2, 0]) - 127) <= 1


def test_rgba_transparent_pixel_becomes_white():
    image = Image.new("RGBA", (2, 1))
    image.putpixel((0, 0), (0, 0, 255, 0))
    image.putpixel((1, 0), (0, 0, 255, 255))
    out = decode_image(encode(image, "PNG"))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 255]


def test_one_bit_image():
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    out = decode_image(encode(image, "PNG"))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_image_gives_its_first_frame(fmt):
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = encode(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True
    )
    out = decode_image(data)
    assert out.shape == (8, 8, 3)
    assert np.abs(out[4, 4].astype(int) - [255, 0, 0]).max() <= 4


def test_exif_orientation_6_rotates_the_image_upright():
    # stored 40 wide x 20 tall; a red block in the stored top-left corner, the rest blue
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :] = (0, 0, 255)
    stored[:10, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data)
    assert out.shape == (40, 20, 3)  # transposed
    assert out[2, -3, 0] > 200 and out[2, -3, 2] < 60  # stored top-left is now top-right
    assert out[2, 2, 0] < 60 and out[-3, -3, 0] < 60


# --- load_image, to_rgb_array, resize_square --------------------------------------------------------


def test_load_image_from_path_and_file_url(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (5, 4), (1, 2, 3)), "PNG"))
    assert load_image(str(path)).shape == (4, 5, 3)
    assert load_image(path.as_uri())[0, 0].tolist() == [1, 2, 3]


def test_load_image_read_failure_is_oserror_naming_the_uri(tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(OSError, match="nope.jpg") as info:
        load_image(missing)
    assert not isinstance(info.value, ImageDecodeError)


def test_load_image_decode_failure_names_the_uri(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.jpg"):
        load_image(str(path))


def test_to_rgb_array_from_arrays_and_pil():
    grey = np.array([[0, 128]], dtype=np.uint8)
    assert to_rgb_array(grey)[0, 1].tolist() == [128, 128, 128]
    assert to_rgb_array(np.array([[0, 65535]], dtype=np.uint16))[0, 1].tolist() == [255] * 3
    assert to_rgb_array(np.array([[0.0, 1.0]], dtype=np.float32))[0, 1].tolist() == [255] * 3
    rgba = np.zeros((1, 1, 4), dtype=np.uint8)
    assert to_rgb_array(rgba)[0, 0].tolist() == [255, 255, 255]
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    assert to_rgb_array(rgb) is rgb
    assert to_rgb_array(Image.new("L", (3, 2), 7)).shape == (2, 3, 3)
    assert to_rgb_array(Image.new("CMYK", (1, 1), (0, 0, 0, 0)))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 2, 5), np.uint8), np.zeros((2,), np.uint8), np.zeros((2, 2), np.complex64)]
)
def test_to_rgb_array_rejects_bad_shapes_and_dtypes(bad):
    with pytest.raises(ValueError, match=str(bad.dtype)):
        to_rgb_array(bad)


def test_resize_square():
    image = np.asarray(noise_image(30, 10))
    out = resize_square(image, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    same = np.zeros((16, 16, 3), np.uint8)
    assert resize_square(same, 16) is same
    with pytest.raises(ValueError, match="side"):
        resize_square(image, 0)


def test_image_extensions_are_lower_case_with_dots():
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)
    assert ".jpg" in IMAGE_EXTENSIONS and ".webp" in IMAGE_EXTENSIONS


# --- decode_for_model: the model's square input straight from the bytes -----------------------------


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients, a few flat shapes with hard edges and a little sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.stack([120 + 80 * np.sin(3 * x + c) * np.cos(2 * y - c) for c in (0.0, 1.0, 2.0)], axis=-1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.05, 0.2) * width
        disc = (np.mgrid[0:height, 0:width][0] - cy) ** 2 + (np.mgrid[0:height, 0:width][1] - cx) ** 2 < r * r
        image[disc] = rng.uniform(0, 255, 3)
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def test_a_jpeg_decodes_to_the_model_input_within_the_dct_scalings_rounding():
    photo = photo_like(1000, 700)
    data = encode(Image.fromarray(photo), "JPEG", quality=90)
    image, size = decode_for_model(data, 128, name=NAME)
    reference = resize_square(decode_image(data), 128)  # decoded in full, then resized
    assert size == (700, 1000) and image.shape == (128, 128, 3) and image.dtype == np.uint8
    difference = np.abs(image.astype(int) - reference.astype(int))
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 8, (difference.mean(), difference.max())


def test_decode_for_model_keeps_the_exif_orientation_and_the_upright_size():
    photo = photo_like(600, 360, seed=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: the upright photo is 360 wide x 600 tall
    data = encode(Image.fromarray(photo), "JPEG", quality=90, exif=exif.tobytes())
    image, size = decode_for_model(data, 64)
    assert size == (600, 360)
    reference = resize_square(decode_image(data), 64)
    assert np.abs(image.astype(int) - reference.astype(int)).mean() < 1.5
    unrotated = resize_square(photo, 64)
    assert np.abs(image.astype(int) - unrotated.astype(int)).mean() > 10  # the rotation did happen


def test_other_formats_decode_for_the_model_exactly_as_before():
    photo = photo_like(300, 200, seed=2)
    data = encode(Image.fromarray(photo), "PNG")
    image, size = decode_for_model(data, 64)
    assert size == (200, 300) and np.array_equal(image, resize_square(photo, 64))
    with pytest.raises(ValueError, match="side must be a positive integer"):
        decode_for_model(data, 0)
