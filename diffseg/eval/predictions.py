"""A run's committed predictions, matched by stem to ground truth: what evaluation reads from OUTPUT.

:func:`index_masks` lists which images each method has; :func:`load_predictions` reads one method's
matched mask rows (label map, saved scores) and turns them into label maps in ground-truth ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from diffseg.codecs.masks import decode_label_map, decode_scores_png
from diffseg.eval.errors import EvaluationError
from diffseg.eval.ground_truth import GroundTruth
from diffseg.eval.metrics import foreground_from_scores, resize_nearest
from diffseg.lake.read import read_table, stem_of


def names_segments(method: str) -> bool:
    """True for a method whose label k is the k-th segment of each image (maskdiffusion-unsupervised), not a
    vocabulary class: no class list fits it, so it is neither evaluated nor exported. A method this version
    does not know: False (its labels are classes)."""
    from diffseg import methods

    try:
        return methods.namer(method) is not None
    except (KeyError, ValueError):
        return False


def segment_naming_methods() -> list[str]:
    """The known methods that name their own segments (:func:`names_segments`), sorted."""
    from diffseg import methods

    return [m for m in methods.available() if names_segments(m)]


@dataclass(frozen=True)
class MaskIndex:
    """Which images each method of one run has committed masks for."""

    uris_by_method: dict[str, set[str]]
    vocab_hashes: list[str]  # sorted; one per vocabulary among the rows
    model: str | None


def index_masks(output: str, run_id: str | None) -> MaskIndex:
    """The committed mask rows of `run_id` in OUTPUT, without their images; EvaluationError when none."""
    index = read_table(output, "masks", ["uri", "method", "vocab_hash", "model"], run_id=run_id)
    if index.num_rows == 0:
        raise EvaluationError(f"OUTPUT {output!r} has no committed masks (run {run_id!r})")
    uris_by_method: dict[str, set[str]] = {}
    for uri, method in zip(index["uri"].to_pylist(), index["method"].to_pylist()):
        uris_by_method.setdefault(method, set()).add(uri)
    return MaskIndex(uris_by_method, sorted(set(index["vocab_hash"].to_pylist())), index["model"][0].as_py())


def stems_to_uris(uris) -> dict[str, str]:
    """{stem: uri}; EvaluationError when two different URIs share a stem (they cannot be matched by stem)."""
    out: dict[str, str] = {}
    for uri in sorted(uris):
        stem = stem_of(uri)
        if stem in out:
            raise EvaluationError(
                f"two images share the stem {stem!r} ({out[stem]}, {uri}): cannot match by stem"
            )
        out[stem] = uri
    return out


@dataclass
class Predictions:
    """One method's matched mask rows and the ground truth each is scored against."""

    method: str
    table: pa.Table  # columns uri, width, height, label_map_png, scores_png
    row_of: dict[str, int]  # stem -> row of `table`
    gt: GroundTruth
    lut: np.ndarray  # (1 + K,) prediction label -> ground-truth id

    def pairs(self, stems: set[str]) -> Iterator[tuple[np.ndarray, dict]]:
        """(ground truth (H, W), mask row dict) of each stem, in stem order."""
        for stem in sorted(stems):
            i = self.row_of[stem]
            row = {name: self.table[name][i].as_py() for name in self.table.column_names}
            yield self.gt.read(stem), row

    def scored(self, stems: set[str]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(fg_score, fg_label, gt) of each stem, in stem order: what :func:`diffseg.eval.protocol.sweep`
        takes."""
        for gt, row in self.pairs(stems):
            yield (*self.foreground(row, gt.shape), gt)

    def job_labels(self, row: dict, size: tuple[int, int]) -> np.ndarray:
        """(H, W) int64: the job's label map at the photo's size (decode_label_map), in ground-truth ids,
        resized (nearest) to `size`."""
        label = decode_label_map(row["label_map_png"], row["width"], row["height"])
        if label.size and int(label.max()) >= len(self.lut):
            raise EvaluationError(
                f"{row['uri']}: label {int(label.max())} is beyond the vocabulary ({len(self.lut) - 1} classes)"
            )
        return self.lut[resize_nearest(label, size)]

    def foreground(self, row: dict, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(best class score (H, W) float32, best class label (H, W) int32 in 1..K) at `size`, from the
        saved scores; EvaluationError when the row has none."""
        if row.get("scores_png") is None:
            raise EvaluationError(
                f"method {self.method!r}: {row['uri']} has no saved scores (scores_png), which refitting or "
                "applying a threshold needs; re-run the job with --save-scores"
            )
        try:
            scores = decode_scores_png(row["scores_png"])
        except ValueError as exc:
            raise EvaluationError(f"{row['uri']}: unreadable saved scores ({exc})") from exc
        if scores.shape[0] != len(self.lut):
            raise EvaluationError(
                f"{row['uri']}: scores hold {scores.shape[0]} channels, the vocabulary needs {len(self.lut)} (1 + K)"
            )
        return foreground_from_scores(scores, size)


def load_predictions(
    output: str, run_id: str | None, method: str, uri_of: dict[str, str], gt: GroundTruth, lut: np.ndarray
) -> Predictions:
    """`method`'s committed mask rows for the stems of `uri_of` ({stem: uri}) that `gt` has.

    The first committed row of a URI wins. EvaluationError when no stem matches the ground truth.
    """
    matched = set(uri_of) & set(gt.paths)
    if not matched:
        raise EvaluationError(
            f"no prediction of {method!r} matches a ground-truth file by stem: predictions like "
            f"{sorted(uri_of)[:3]}, ground truth like {sorted(gt.paths)[:3]}"
        )
    columns = ["uri", "width", "height", "label_map_png", "scores_png"]
    table = read_table(output, "masks", columns, run_id, [method], uris={uri_of[s] for s in matched})
    first_row = {uri: i for i, uri in reversed(list(enumerate(table["uri"].to_pylist())))}
    return Predictions(method, table, {s: first_row[uri_of[s]] for s in matched}, gt, lut)
