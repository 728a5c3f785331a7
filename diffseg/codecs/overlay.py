"""Human-readable overlays: an image blended with its label map's class colours, plus a legend.

Decisions:

- **Palette.** :func:`palette` is the PASCAL VOC colour map (bit-interleaved RGB): index 0 is black, every
  index below 2**24 gets a distinct colour, and a label PNG viewed with this palette looks like a VOC mask.
- **Blending.** Background pixels (label 0) keep the image's colour; a pixel of class k becomes
  ``round((1 - alpha) * image + alpha * palette[k])``.
- **Legend.** One entry per class present (colour swatch, then ``"<id> <name>"``), by increasing id; with
  no class present the legend says so. It goes to the right of the image when the image is at least as
  tall as wide, below it otherwise, wrapping into more columns (right) or rows (below) when needed. The
  canvas grows to fit the legend and the optional title line on top, so a 1x1 image still gives a
  readable picture; the image itself is never scaled. Text uses Pillow's default font at a size that
  follows the image's size (sqrt(H * W) / 32, kept within 12 to 48 px), so a thin strip gets small
  text and a large photo large text.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_MIN_FONT, _MAX_FONT = 12, 48
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours: index 0 black, then the PASCAL VOC colour map (distinct for n <= 2**24)."""
    if n < 0:
        raise ValueError(f"palette size must be >= 0, got {n}")
    index = np.arange(n, dtype=np.int64)
    colours = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):  # bit 3*j+c of the index sets bit (7 - j) of channel c
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            colours[:, channel] |= bit << (7 - shift)
    return colours.astype(np.uint8)


def render_overlay(
    image: np.ndarray,
    label_map: np.ndarray,
    class_names: list[str],
    alpha: float = 0.5,
    title: str | None = None,
) -> Image.Image:
    """Blend an (H, W, 3) uint8 image with the colours of an (H, W) integer label map; add a legend.

    ``class_names[k - 1]`` names label k. Returns an RGB PIL image at least H x W, the blended image at
    its original size in the top-left corner (below the title line when ``title`` is given).
    """
    rgb = np.asarray(image)
    labels = np.asarray(label_map)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    if labels.shape != rgb.shape[:2] or labels.dtype.kind not in "iu":
        raise ValueError(
            f"label_map must be an integer array of the image's shape {rgb.shape[:2]}, got shape "
            f"{labels.shape} dtype {labels.dtype}; resize it (nearest) to the image first"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    present = [int(k) for k in np.unique(labels) if k > 0]
    if present and present[-1] > len(class_names):
        raise ValueError(f"label map holds class id {present[-1]} but only {len(class_names)} class names")
    blended = blend_labels(rgb, labels, alpha)
    return _compose_canvas(blended, present, class_names, title)


def blend_labels(image: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8: the image with each labelled pixel moved ``alpha`` of the way to its class colour."""
    labels = label_map.astype(np.int64, copy=False)
    colours = palette(int(labels.max()) + 1).astype(np.float32)
    out = image.copy()
    fg = labels > 0
    mixed = (1.0 - alpha) * image[fg].astype(np.float32) + alpha * colours[labels[fg]]
    out[fg] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def _load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` px (its fixed-size bitmap font when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _printable(text: str, font) -> str:
    """Text the font can draw: the bitmap fallback font only encodes Latin-1."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return max(0, right - min(left, 0)), max(0, bottom - min(top, 0))


def _compose_canvas(blended: np.ndarray, present: list[int], class_names: list[str], title: str | None):
    """Place the blended image, the legend (right or below) and the title on one white canvas."""
    height, width = blended.shape[:2]
    size = int(np.clip(round(np.sqrt(height * width) / 32), _MIN_FONT, _MAX_FONT))
    font = _load_font(size)
    pad = max(2, size // 3)
    swatch = size
    line = size + pad
    colours = palette(max(present, default=0) + 1)
    if present:
        entries = [
            (_printable(f"{k} {class_names[k - 1]}", font), tuple(int(c) for c in colours[k]))
            for k in present
        ]
    else:
        entries = [(_printable("no class present", font), None)]
    entry_widths = [
        swatch * (colour is not None) + pad + _text_size(font, text)[0] for text, colour in entries
    ]
    cell = max(entry_widths) + 2 * pad
    title_text = _printable(title, font) if title else None
    title_h = line + pad if title_text else 0
    title_w = _text_size(font, title_text)[0] + 2 * pad if title_text else 0

    if height >= width:  # legend on the right, in columns of at most `per_column` entries
        per_column = max(1, (height - pad) // line)
        columns = -(-len(entries) // per_column)
        legend_w, legend_h = columns * cell + pad, min(len(entries), per_column) * line + pad
        origin = (width, title_h)
        positions = [
            (origin[0] + (i // per_column) * cell + pad, origin[1] + pad + (i % per_column) * line)
            for i in range(len(entries))
        ]
        canvas_w, canvas_h = width + legend_w, title_h + max(height, legend_h)
    else:  # legend below, in rows of at most `per_row` entries
        per_row = max(1, (width - pad) // cell)
        rows = -(-len(entries) // per_row)
        legend_w, legend_h = min(len(entries), per_row) * cell + pad, rows * line + pad
        origin = (0, title_h + height)
        positions = [
            (origin[0] + pad + (i % per_row) * cell, origin[1] + pad + (i // per_row) * line)
            for i in range(len(entries))
        ]
        canvas_w, canvas_h = max(width, legend_w), title_h + height + legend_h
    canvas_w = max(canvas_w, title_w)

    canvas = Image.new("RGB", (canvas_w, canvas_h), _BACKGROUND)
    canvas.paste(Image.fromarray(blended), (0, title_h))
    draw = ImageDraw.Draw(canvas)
    if title_text:
        draw.text((pad, pad), title_text, fill=_TEXT, font=font)
    for (text, colour), (x, y) in zip(entries, positions):
        text_x = x
        if colour is not None:
            draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=colour, outline=_TEXT)
            text_x = x + swatch + pad
        draw.text((text_x, y), text, fill=_TEXT, font=font)
    return canvas
