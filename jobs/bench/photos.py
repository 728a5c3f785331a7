"""Photo-like test images made with numpy and Pillow only (the benchmarks need no test extras).

A photo here is a smooth lit background (low-frequency waves), a few filled shapes with their own
colour, shading and texture, and sensor noise: JPEG-compressed at quality 90 it has the size and the
decode cost of an ordinary photo (about 1.5-3 bits per pixel), unlike a flat or a pure-noise image.
Deterministic for a seed.
"""

from __future__ import annotations

import io

import numpy as np

# the four sizes of the photographs the benchmarks used before (scikit-image's astronaut, coffee, chelsea,
# rocket): square and both orientations of non-square, as (height, width)
SIZES = ((512, 512), (400, 600), (300, 451), (427, 640))


def synth_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8 photo-like image (module docstring) for `seed`."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width
    base = np.zeros((height, width, 3), np.float32)
    for c in range(3):  # a few low-frequency waves per channel: sky, light falloff
        for _ in range(3):
            fy, fx, phase = rng.uniform(0.3, 2.5), rng.uniform(0.3, 2.5), rng.uniform(0, 2 * np.pi)
            base[..., c] += rng.uniform(20, 45) * np.sin(2 * np.pi * (fy * y + fx * x) + phase)
        base[..., c] += rng.uniform(70, 170)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 9))):  # objects: ellipses and polygons of one colour
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.3) * width, rng.uniform(0.05, 0.3) * height
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            draw.polygon([(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles], fill=colour)
    pixels = np.asarray(image, np.float32)
    shade = 0.75 + 0.5 * (x + y)[..., None] / 2  # one light direction over the whole scene
    texture = rng.normal(0, 1, (height // 4 + 1, width // 4 + 1, 1)).astype(np.float32)
    texture = np.kron(texture, np.ones((4, 4, 1), np.float32))[:height, :width]  # coarse grain
    noise = rng.normal(0, 4, (height, width, 3)).astype(np.float32)  # sensor noise
    return np.clip(pixels * shade + 6 * texture + noise, 0, 255).astype(np.uint8)


def sample_jpegs(n: int, sizes: tuple[tuple[int, int], ...] = SIZES, quality: int = 90) -> list[bytes]:
    """n JPEG files of :func:`synth_photo` images, cycling through `sizes` (a different seed each)."""
    from PIL import Image

    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        buf = io.BytesIO()
        Image.fromarray(synth_photo(h, w, seed=i)).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out
