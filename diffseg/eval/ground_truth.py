"""Ground-truth label maps: a folder or prefix (any fsspec URL) of PNGs, matched to predictions by stem."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import numpy as np

from diffseg.codecs.masks import decode_label_png
from diffseg.eval.errors import EvaluationError

IGNORE_INDEX = 255  # PASCAL VOC: object borders and "difficult" regions


@dataclass(frozen=True)
class GroundTruth:
    """The PNG label maps below one prefix: ``paths`` maps stem -> path on ``fs``."""

    fs: object  # an fsspec filesystem
    paths: dict[str, str]

    def read(self, stem: str) -> np.ndarray:
        """(H, W) integer label map of `stem` (palette indices for palette PNGs)."""
        return read_ground_truth(self.fs, self.paths[stem])


def list_ground_truth(prefix: str) -> GroundTruth:
    """The PNG label maps below `prefix` (recursively); EvaluationError when there are none, or two
    share a stem (they could not be matched by stem)."""
    from fsspec.core import url_to_fs

    try:
        fs, root = url_to_fs(prefix)
        exists = fs.exists(root)
    except (ImportError, ValueError, OSError) as exc:
        raise EvaluationError(f"ground truth {prefix!r}: cannot open it ({exc})") from exc
    if not exists:
        raise EvaluationError(f"ground truth {prefix!r} does not exist")
    paths = sorted(p for p in fs.find(root) if p.lower().endswith(".png"))
    if not paths:
        raise EvaluationError(f"ground truth {prefix!r} holds no .png label maps")
    stems: dict[str, str] = {}
    for path in paths:
        stem = posixpath.splitext(posixpath.basename(path))[0]
        if stem in stems:
            raise EvaluationError(
                f"ground truth has two label maps with stem {stem!r}: {stems[stem]} and {path}"
            )
        stems[stem] = path
    return GroundTruth(fs, stems)


def read_ground_truth(fs, path: str) -> np.ndarray:
    """(H, W) integer label map of one ground-truth PNG (palette indices for palette PNGs)."""
    with fs.open(path, "rb") as handle:
        data = handle.read()
    try:
        return decode_label_png(data)
    except ValueError as exc:
        raise EvaluationError(
            f"ground truth {path}: {exc} (expected a grey or palette PNG of class ids)"
        ) from exc
