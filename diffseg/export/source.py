"""What every exporter reads: one run's committed masks (and stats) of one method, unit by unit.

:func:`select` resolves the run and method (and says what to pass when the choice is ambiguous);
:func:`iter_images` yields one :class:`ExportImage` per segmented image, holding its decoded label map
and its ``stats/`` rows, one unit in memory at a time; :func:`unique_stems` names the files.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from diffseg.codecs.masks import decode_label_map
from diffseg.eval.predictions import names_segments
from diffseg.lake.read import OutputError, iter_unit_tables, model_uri, read_table, resolve_run, stem_of

MASK_COLUMNS = ["uri", "width", "height", "method", "label_map_png", "classes"]
STAT_COLUMNS = ["uri", "method", "class_id", "class_name", "pixel_count", "bbox_xywh", "score_mean",
                "score_max", "components", "rle_counts", "rle_size"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class Selection:
    """One run and one method of an OUTPUT: what an export reads."""

    output: str
    run_id: str | None
    method: str
    vocabulary: list[str]  # label k names vocabulary[k-1]
    model: str  # the manifest's model URI (redacted), or "" when unknown
    uris: list[str]  # committed, segmented image URIs of this method, sorted


@dataclass
class ExportImage:
    """One segmented image: ``label_map`` (H, W) uint8/uint16 (0 = background) and its stats rows."""

    uri: str
    width: int
    height: int
    label_map: np.ndarray
    classes: list[str]
    stats: list[dict] = field(default_factory=list)  # STAT_COLUMNS dicts, by increasing class_id


def select(output: str, run_id: str | None = None, method: str | None = None) -> Selection:
    """Resolves the run (default: the latest) and the method (default: the run's only one).

    Raises OutputError naming the fix: no such OUTPUT or run, a method the run does not hold, several
    methods and none chosen, or a method whose labels are segments rather than vocabulary classes."""
    run, vocabulary, manifest = resolve_run(output, run_id)
    masks = read_table(output, "masks", ["uri", "method"], run)
    methods = sorted(set(masks["method"].to_pylist()))
    if method is None:
        if len(methods) > 1:
            raise OutputError(f"run {run!r} holds masks of several methods ({', '.join(methods)}): "
                              "pass --method with one of them")
        method = methods[0] if methods else _configured_method(manifest)
    if names_segments(method):
        raise OutputError(f"--method {method}: its labels are segments named per image, not the run's vocabulary "
                          "classes, so no class list fits them; export another method")
    if methods and method not in methods:
        raise OutputError(f"--method {method!r}: run {run!r} has no masks of it; it has {', '.join(methods)}")
    keep = pc.equal(masks["method"], pa.scalar(method, pa.string()))
    uris = sorted(set(masks.filter(keep)["uri"].to_pylist()))
    return Selection(output, run, method, vocabulary, model_uri(manifest), uris)


def exportable_methods(output: str, run_id: str | None = None) -> list[str]:
    """The methods with masks in the run (default: the latest), sorted, less those whose labels are
    segments named per image (:func:`select` refuses them); raises OutputError like select."""
    run, _, _ = resolve_run(output, run_id)
    methods = sorted(set(read_table(output, "masks", ["method"], run)["method"].to_pylist()))
    return [m for m in methods if not names_segments(m)]


def _configured_method(manifest: dict) -> str:
    configured = (manifest.get("config") or {}).get("methods") or ["diffsegmenter"]
    return configured[0] if isinstance(configured, list) else str(configured)


def iter_images(selection: Selection, with_stats: bool = True) -> Iterator[ExportImage]:
    """The selection's images, unit by unit (one replay of the run's log: a unit's masks and stats come from
    the same commit), rows in file order."""
    output, run, method = selection.output, selection.run_id, selection.method
    columns = {"masks": MASK_COLUMNS, **({"stats": STAT_COLUMNS} if with_stats else {})}
    wanted = pa.scalar(method, pa.string())
    for unit in iter_unit_tables(output, columns, run):
        stats_by_uri: dict[str, list[dict]] = defaultdict(list)
        if with_stats:
            unit_stats = unit["stats"]
            for row in unit_stats.filter(pc.equal(unit_stats["method"], wanted)).to_pylist():
                stats_by_uri[row["uri"]].append(row)
        masks = unit["masks"]
        for row in masks.filter(pc.equal(masks["method"], wanted)).to_pylist():
            label_map = decode_label_map(row["label_map_png"], row["width"], row["height"])  # the photo's size
            stats = sorted(stats_by_uri.get(row["uri"], []), key=lambda s: s["class_id"])
            yield ExportImage(row["uri"], int(row["width"]), int(row["height"]), label_map,
                              list(row["classes"] or []), stats)


def unique_stems(uris: list[str]) -> dict[str, str]:
    """URI -> a file stem unique among `uris`: the URI's own stem (``s3://b/x/cat.jpg`` -> ``cat``) when no
    other URI has it (ignoring case), else the stem plus ``-`` and 8 hex digits of sha256(URI), for every URI of the
    clash. Deterministic: a URI's name depends only on itself and on whether its stem clashes.
    Characters other than letters, digits, ``._+-`` become ``_``."""
    stems = {uri: _UNSAFE.sub("_", stem_of(uri)) or "image" for uri in uris}
    counts: dict[str, int] = defaultdict(int)
    for stem in stems.values():
        counts[stem.lower()] += 1  # cat.jpg and CAT.png clash on case-insensitive file systems
    return {uri: stem if counts[stem.lower()] == 1 else f"{stem}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"
            for uri, stem in stems.items()}
