"""The gallery of ``jobs.report``: a deterministic sample of images, their originals, one overlay each."""

from __future__ import annotations

import base64
import hashlib
import io
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
from PIL import Image

from diffseg.codecs.images import load_image
from diffseg.codecs.masks import decode_label_map
from diffseg.codecs.overlay import blend_labels, palette
from diffseg.eval.metrics import resize_nearest
from jobs.report import html as H

PROBES = 3  # originals tried per storage scheme before giving up on that scheme


def sample_uris(uris, count: int, seed: int) -> list[str]:
    """`count` URIs with the smallest sha256(f"{seed}:{uri}"), returned in URI order."""
    ranked = sorted(set(uris), key=lambda u: hashlib.sha256(f"{seed}:{u}".encode()).digest())
    return sorted(ranked[:count])


def load_originals(uris: list[str], workers: int = 8) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({uri: (H, W, 3) uint8} of the readable originals, {scheme: reason} of the schemes given up on)."""
    by_scheme: dict[str, list[str]] = defaultdict(list)
    for uri in uris:
        by_scheme[uri.split("://", 1)[0] if "://" in uri else "file"].append(uri)
    images: dict[str, np.ndarray] = {}
    given_up: dict[str, str] = {}

    def load(uri):
        try:
            return uri, load_image(uri), None
        except Exception as exc:  # any storage or decode failure: show the label map alone
            return uri, None, f"{type(exc).__name__}: {exc}"

    rest = []
    for scheme, group in by_scheme.items():
        probes = [load(u) for u in group[:PROBES]]
        images.update({u: im for u, im, _ in probes if im is not None})
        if all(im is None for _, im, _ in probes):
            given_up[scheme] = probes[0][2]
        else:
            rest += group[PROBES:]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        images.update({u: im for u, im, _ in pool.map(load, rest) if im is not None})
    return images, given_up


def thumbnail(
    label: np.ndarray, image: np.ndarray | None, max_side: int, alpha: float
) -> tuple[str, int, int]:
    """(data URI, width, height) of one overlay: labels in class colours, blended with `image` if given."""
    h, w = label.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = resize_nearest(label, size).astype(np.int64)
    buffer = io.BytesIO()
    if image is not None:
        photo = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))
        Image.fromarray(blend_labels(photo, small, alpha)).save(buffer, format="JPEG", quality=85)
        mime = "image/jpeg"
    else:
        Image.fromarray(palette(int(small.max()) + 1)[small]).save(buffer, format="PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), size[1], size[0]


OTHER_COLOUR = (128, 128, 128)  # a class name the vocabulary does not hold


def class_colours(vocab: list[str], colours) -> dict:
    """{class name: its colour} (label k = vocab[k-1] has colours[k]); names not in it take OTHER_COLOUR."""
    return {name: colours[k] for k, name in enumerate(vocab, 1)}


def gallery_cards(masks: pa.Table, colour_of: dict, originals: dict, thumb: int, alpha: float) -> list[str]:
    """One card per URI of `masks`: an overlay per method (at most `thumb` px, class colours blended with
    weight `alpha` into the original when `originals` has it) and chips naming the classes present
    (`colour_of`: :func:`class_colours`)."""
    by_uri: dict[str, list[dict]] = defaultdict(list)
    for row in masks.to_pylist():
        by_uri[row["uri"]].append(row)
    cards = []
    for uri in sorted(by_uri):
        rows = sorted(by_uri[uri], key=lambda r: r["method"])
        figures = []
        for row in rows:
            label = decode_label_map(row["label_map_png"], row["width"], row["height"])
            src, w, h = thumbnail(label, originals.get(uri), thumb, alpha)
            chips = (
                " ".join(
                    H.chip(name, colour_of.get(name, OTHER_COLOUR))
                    for name in row["classes"] or []
                )
                or '<span class="note">no class</span>'
            )
            figures.append(H.figure(src, w, h, row["method"], chips, f"{row['method']} overlay of {uri}"))
        note = f"{rows[0]['width']}x{rows[0]['height']}" + (
            "" if uri in originals else " (original not readable here)"
        )
        cards.append(H.card(uri, note, figures))
    return cards
