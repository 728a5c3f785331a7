"""Class maps: vocabulary class name -> ground-truth id, and the lookup table that applies one.

A class map is JSON (``{"cat": 8, ...}``, or a list of names whose positions are the ids) or text lines
``cat: 8`` (``#`` comments). Several names may share an id (aliases). Every vocabulary class must be
mapped (to the background id to count it as background); a name not in the vocabulary is an error.
"""

from __future__ import annotations

import json

import numpy as np

from diffseg.eval.errors import EvaluationError
from diffseg.eval.ground_truth import IGNORE_INDEX


def load_class_map(path: str) -> dict[str, int]:
    """Class name -> ground-truth id from the class map file at `path` (local path or fsspec URL)."""
    from fsspec.core import url_to_fs

    try:
        fs, p = url_to_fs(path)
        with fs.open(p, "rt") as handle:
            text = handle.read()
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"cannot read the class map {path!r}: {exc}") from exc
    return parse_class_map(text, path)


def parse_class_map(text: str, source: str = "<text>") -> dict[str, int]:
    """Class name -> ground-truth id from a JSON object, a JSON list (position = id) or `name: id` lines.

    `source` names the map in error messages. Ids must be >= 0 and not IGNORE_INDEX.
    """
    mapping: dict[str, int] = {}
    try:
        data = json.loads(text)
    except ValueError:
        data = None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, sep, value = line.rpartition(":")
            if not sep or not name.strip() or not value.strip().lstrip("-").isdigit():
                raise EvaluationError(
                    f"class map {source}:{number}: expected `name: id`, got {line!r}"
                ) from None
            mapping[name.strip()] = int(value)
    if isinstance(data, dict):
        for name, value in data.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise EvaluationError(f"class map {source}: id of {name!r} must be an integer, got {value!r}")
            mapping[name.strip()] = value
    elif isinstance(data, list):
        mapping = {str(name).strip(): i for i, name in enumerate(data) if name is not None}
    elif data is not None:
        raise EvaluationError(
            f"class map {source}: expected a JSON object or list, got {type(data).__name__}"
        )
    if not mapping:
        raise EvaluationError(f"class map {source} maps no class")
    bad = {n: i for n, i in mapping.items() if i < 0 or i == IGNORE_INDEX}
    if bad:
        raise EvaluationError(
            f"class map {source}: ids must be >= 0 and not the ignore id {IGNORE_INDEX}: {bad}"
        )
    return mapping


def build_lut(vocabulary: list[str], class_map: dict[str, int]) -> tuple[np.ndarray, dict[int, str]]:
    """(lut, names) of a run's vocabulary under a class map (names matched case-insensitively).

    lut: (1 + K,) int64, lut[k] = ground-truth id of prediction label k (label 0 = background -> the id
    of ``background`` in the map, else 0). names: ground-truth id -> display name (aliases joined by
    " / "). EvaluationError when a map name is not in the vocabulary or a vocabulary class is unmapped.
    """
    norm = {name.casefold(): name for name in vocabulary}
    unknown = [n for n in class_map if n.casefold() not in norm and n.casefold() != "background"]
    if unknown:
        raise EvaluationError(
            f"class map names {unknown} are not in the run's vocabulary {vocabulary} "
            "(names are matched case-insensitively)"
        )
    by_name = {n.casefold(): i for n, i in class_map.items()}
    missing = [v for v in vocabulary if v.casefold() not in by_name]
    if missing:
        raise EvaluationError(
            f"vocabulary classes {missing} have no ground-truth id in the class map; "
            "map each one (to the background id to count it as background)"
        )
    background = by_name.get("background", 0)
    lut = np.array([background] + [by_name[v.casefold()] for v in vocabulary], dtype=np.int64)
    names: dict[int, list[str]] = {background: ["background"]}
    for name, gid in class_map.items():
        if name.casefold() != "background" and name.casefold() in norm:
            names.setdefault(gid, []).append(norm[name.casefold()])
    for name, gid in class_map.items():  # ids only named by a list map entry that is not in the vocabulary
        names.setdefault(gid, [name])
    return lut, {gid: " / ".join(ns) for gid, ns in names.items()}


def lut_for(spec: str, vocabulary: list[str]) -> tuple[np.ndarray, dict[int, str]]:
    """(lut, names) as :func:`build_lut` gives them, for a class map file or a built-in benchmark name.

    `spec`: a built-in benchmark (``voc21``, ``context60``, ``coco_object``; see
    :mod:`diffseg.eval.benchmarks`) unless a local file of that name exists, else a class map file. A
    built-in map names every ground-truth id of its dataset (the official names).
    """
    import os

    from diffseg.eval.benchmarks import builtin_class_map, builtin_names

    builtin = None if os.path.exists(spec) else builtin_class_map(spec, vocabulary)
    if builtin is None:
        return build_lut(vocabulary, load_class_map(spec))
    lut, names = build_lut(vocabulary, builtin)
    for gid, official in builtin_names(spec).items():
        names.setdefault(gid, official)
    return lut, names
