"""``python -m jobs.bench.postproc``: the job's per-image CPU work around the model, BEFORE and AFTER issue 21.

On one CPU thread (torch and numpy single-threaded), per image and method, median CPU time
(``time.process_time``) over repeats, at a 512x512 and a 2048x1382 (2.8 MP) photo:

- label ids: ``np.unique`` of the full-size map (before) / ``torch.bincount`` of the argmax map (after);
- casts: the label map off the device into uint8 numpy (before: full size from int64; after: argmax size);
- PNG: Pillow's default PNG of the full map (before) / diffseg's Z_RLE PNG of the argmax map (after);
- stats+RLE: ``compute_class_stats`` on the full map (before) / on the argmax map with the photo's size;
- decode+resize of a photo-like JPEG to the model's side: in full then resized (before) / draft mode.

The model's scores are synthetic (20 classes, 5-10 present in blobs, at 64x64), the JPEGs synthetic
photos (gradients, hard-edged shapes, texture; 100-600 KB). The old code lives in
jobs.bench.postproc_legacy; both give the same masks and statistics (checked here on every image).
No scikit-image, no model: runs in seconds on any CPU.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from functools import partial

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIZES = {"512x512": (512, 512), "2048x1382": (1382, 2048)}  # (H, W)
CLASSES = 20


def photo_jpeg(height: int, width: int, seed: int, quality: int | None = None) -> bytes:
    """A photo-like JPEG: smooth colour gradients, hard-edged shapes, fine texture and sensor noise.

    quality None: 95 below 1 MP, 85 above (about 110 KB at 512x512, 525 KB at 2048x1382)."""
    quality = quality or (95 if height * width < 1_000_000 else 85)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(height, width)
    image = np.stack([110 + 70 * np.sin(4 * xx + c) * np.cos(3 * yy - 2 * c) for c in (0.0, 1.3, 2.1)], -1)
    for _ in range(12):
        cy, cx = rng.uniform(0, 1, 2) * (height, width)
        radius = rng.uniform(0.03, 0.25) * max(height, width)
        inside = (yy * max(height, width) - cy) ** 2 + (xx * max(height, width) - cx) ** 2 < radius**2
        image[inside] = rng.uniform(0, 255, 3) * (0.8 + 0.2 * np.sin(40 * xx[inside]))[:, None]
    texture = rng.normal(0, 1, (height // 4 + 1, width // 4 + 1, 1)).repeat(4, 0).repeat(4, 1)[:height, :width]
    image += 10 * texture + rng.normal(0, 4, image.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def synthetic_scores(seed: int, side: int = 64):
    """(1 + CLASSES, side, side) float32 torch scores: 5-10 classes as noisy blobs over a 0 background."""
    import torch

    rng = np.random.default_rng(seed)
    scores = np.full((CLASSES + 1, side, side), -5.0, np.float32)
    yy, xx = np.mgrid[0:side, 0:side]
    for k in rng.choice(np.arange(1, CLASSES + 1), int(rng.integers(5, 11)), replace=False):
        cy, cx, r = rng.uniform(0, side, 2).tolist() + [rng.uniform(0.08, 0.4) * side]
        scores[k] = 1 - np.hypot(yy - cy, xx - cx) / r + rng.normal(0, 0.1, (side, side))
    scores[0] = 0.0
    return torch.from_numpy(scores)


def cpu_ms(fn, repeats: int) -> float:
    """Median CPU milliseconds of `fn()` over `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def argmax_map(scores, size: tuple[int, int], max_side: int = 1024):
    """The device's part (not timed): the argmax at <= max_side, as an int64 tensor (what .cpu() copies)."""
    import torch.nn.functional as F

    h, w = size
    f = min(1.0, max_side / max(h, w))
    up = F.interpolate(scores[None], size=(max(1, round(h * f)), max(1, round(w * f))), mode="bilinear",
                       align_corners=False)[0]
    return up.argmax(0)


def bincount(labels, classes: int) -> np.ndarray:
    """The Segmenter's label counts: torch.bincount of the argmax map cast to uint8 (on the device in the
    job; the cast is timed under "casts")."""
    import torch

    return torch.bincount(labels.flatten(), minlength=classes).numpy()


def to_uint8(labels) -> np.ndarray:
    """The Segmenter's cast of the argmax map: to uint8 on the device, then copied off it."""
    import torch

    return labels.to(torch.uint8).cpu().numpy()


def measure_postproc(size: tuple[int, int], images: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{stage: (before ms, after ms)} per image and method at `size` (medians over images), checking equality."""
    import torch
    import torch.nn.functional as F

    from diffseg.codecs.masks import decode_label_map, encode_label_png
    from diffseg.codecs.stats import compute_class_stats
    from jobs.bench import postproc_legacy as legacy

    names = [f"class {k}" for k in range(1, CLASSES + 1)]
    per_stage: dict[str, list[tuple[float, float]]] = {}
    sizes = {"png bytes": []}
    for seed in range(images):
        scores = synthetic_scores(seed)
        score_array = scores.numpy()
        argmax = argmax_map(scores, size)
        full_long = F.interpolate(argmax[None, None].float(), size=size, mode="nearest")[0, 0].long()  # device
        full = full_long.numpy().astype(np.uint8)
        small = argmax.to(torch.uint8).numpy()
        stages = {
            "label ids": (partial(legacy.label_ids, full), partial(bincount, argmax.to(torch.uint8), CLASSES + 1)),
            "casts": (partial(legacy.to_uint8, full_long), partial(to_uint8, argmax)),
            "PNG": (partial(legacy.encode_label_png, full), partial(encode_label_png, small)),
            "stats+RLE": (partial(legacy.compute_class_stats, full, names, scores=score_array),
                          partial(compute_class_stats, small, names, score_array, size=size)),
        }
        for stage, (before, after) in stages.items():
            per_stage.setdefault(stage, []).append((cpu_ms(before, repeats), cpu_ms(after, repeats)))
        # the same results, or the benchmark is measuring different work
        png = encode_label_png(small)
        sizes["png bytes"].append((len(legacy.encode_label_png(full)), len(png)))
        assert np.array_equal(decode_label_map(png, size[1], size[0]), full)
        assert compute_class_stats(small, names, score_array, size=size) == legacy.compute_class_stats(
            full, names, scores=score_array)
    table = {stage: tuple(statistics.median(v[i] for v in runs) for i in (0, 1)) for stage, runs in per_stage.items()}
    table["total"] = tuple(sum(table[s][i] for s in per_stage) for i in (0, 1))
    table["png bytes"] = tuple(statistics.median(v[i] for v in sizes["png bytes"]) for i in (0, 1))
    return table


def measure_decode(size: tuple[int, int], side: int, images: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Decode + resize to `side` of photo-like JPEGs at `size`: {figure: (before, after)}."""
    from diffseg.codecs.images import decode_for_model
    from jobs.bench import postproc_legacy as legacy

    times, kb, diffs = [], [], []
    for seed in range(images):
        data = photo_jpeg(*size, seed=100 + seed)
        kb.append(len(data) / 1024)
        times.append((cpu_ms(partial(legacy.decode_and_resize, data, side), repeats),
                      cpu_ms(partial(decode_for_model, data, side), repeats)))
        (old, old_size), (new, new_size) = legacy.decode_and_resize(data, side), decode_for_model(data, side)
        assert tuple(old_size) == tuple(new_size)
        diffs.append(np.abs(old.astype(np.int16) - new.astype(np.int16)))
    diff = np.concatenate([d.ravel() for d in diffs])
    return {"decode+resize ms": tuple(statistics.median(t[i] for t in times) for i in (0, 1)),
            "jpeg KB": (statistics.median(kb),) * 2,
            "input |diff| mean / p99 / max": (0.0, float(diff.mean()), float(np.percentile(diff, 99)),
                                              float(diff.max()))}


def png_variant(labels: np.ndarray, row_filter: int, level: int, strategy: int) -> bytes:
    """An 8-bit grey PNG of `labels` with one PNG filter for every row (0 None, 2 Up) and zlib's settings."""
    import struct
    import zlib

    rows = np.empty((labels.shape[0], labels.shape[1] + 1), np.uint8)
    rows[:, 0] = row_filter
    rows[:, 1:] = labels
    if row_filter == 2:
        np.subtract(labels[1:], labels[:-1], out=rows[1:, 1:])
    packer = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    data = packer.compress(rows.data) + packer.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", labels.shape[1], labels.shape[0], 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def png_options(size: tuple[int, int], images: int, repeats: int) -> None:
    """Prints CPU ms and bytes of PNG settings for the argmax map of a photo of `size` (the choice's basis)."""
    import zlib

    import torch

    from jobs.bench import postproc_legacy as legacy

    def pillow(labels, level):
        buffer = io.BytesIO()
        Image.fromarray(labels).save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    options = {
        "Pillow, level 6 (before)": lambda m: legacy.encode_label_png(m),
        "Pillow, level 1": lambda m: pillow(m, 1),
        "None filter, level 1": lambda m: png_variant(m, 0, 1, zlib.Z_DEFAULT_STRATEGY),
        "None filter, Z_RLE (chosen)": lambda m: png_variant(m, 0, 6, zlib.Z_RLE),
        "Up filter, level 1": lambda m: png_variant(m, 2, 1, zlib.Z_DEFAULT_STRATEGY),
        "Up filter, Z_RLE": lambda m: png_variant(m, 2, 6, zlib.Z_RLE),
    }
    maps = [argmax_map(synthetic_scores(seed), size).to(torch.uint8).numpy() for seed in range(images)]
    print(f"\nPNG settings, {maps[0].shape[1]}x{maps[0].shape[0]} argmax map (photo {size[1]}x{size[0]})")
    for name, encode in options.items():
        for labels in maps:
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode(labels)))), labels), name
        ms = statistics.median(cpu_ms(partial(encode, m), repeats) for m in maps)
        kb = statistics.median(len(encode(m)) / 1024 for m in maps)
        print(f"  {name:<28}{ms:>8.2f} ms{kb:>8.1f} KB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench.postproc", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4, help="synthetic images per size (default 4)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per stage and image (default 15)")
    parser.add_argument("--resolution", type=int, default=512, help="the model's input side for decoding")
    parser.add_argument("--png-options", action="store_true", help="also compare PNG settings (size vs time)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    print(f"per image and method, one CPU thread, median CPU ms (time.process_time); {os.cpu_count()} CPUs here")
    for label, size in SIZES.items():
        table = measure_postproc(size, args.images, args.repeats)
        decode = measure_decode(size, args.resolution, args.images, max(3, args.repeats // 3))
        print(f"\n{label} photo (argmax map {tuple(argmax_map(synthetic_scores(0), size).shape)})")
        print(f"  {'stage':<18}{'before':>10}{'after':>10}")
        for stage, (before, after) in table.items():
            fmt = "{:>10.0f}" if stage == "png bytes" else "{:>10.2f}"
            print(f"  {stage:<18}" + fmt.format(before) + fmt.format(after))
        before, after = decode["decode+resize ms"]
        print(f"  {'decode+resize':<18}{before:>10.2f}{after:>10.2f}   (JPEG {decode['jpeg KB'][0]:.0f} KB, "
              f"to {args.resolution}x{args.resolution}; after = draft mode)")
        _, mean, p99, top = decode["input |diff| mean / p99 / max"]
        print(f"  model input, draft vs full decode: |diff| mean {mean:.2f}, p99 {p99:.0f}, max {top:.0f} levels")
    if args.png_options:
        for size in SIZES.values():
            png_options(size, args.images, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
