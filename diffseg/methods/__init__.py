"""Segmentation methods: pure functions ``(maps, spans, params=None) -> scores (B, 1 + K, h, w)``.

``get(name)`` returns the function, ``needs(name)`` what it reads from the capture, and
``params_class(name)`` its frozen parameter dataclass (``None`` params = the documented defaults).
``namer(name)`` is None for methods whose channels are the vocabulary's classes; a method whose
channels are segments (``maskdiffusion-unsupervised``) has a namer
``(maps, spans, scores, class_names, params) -> per image, the names of channels 1..K``.
"""

from __future__ import annotations

import dataclasses

from diffseg.capture import Needs
from diffseg.methods import diffsegmenter as _diffsegmenter
from diffseg.methods import maskdiffusion as _maskdiffusion
from diffseg.methods import seediff as _seediff
from diffseg.methods import unsupervised as _unsupervised

_REGISTRY = {
    "diffsegmenter": (_diffsegmenter.diffsegmenter, _diffsegmenter.NEEDS, _diffsegmenter.DiffSegmenterParams),
    "seediff": (_seediff.seediff, _seediff.NEEDS, _seediff.SeeDiffParams),
    "maskdiffusion": (_maskdiffusion.maskdiffusion, _maskdiffusion.NEEDS, _maskdiffusion.MaskDiffusionParams),
    "maskdiffusion-unsupervised": (
        _unsupervised.maskdiffusion_unsupervised,
        _unsupervised.NEEDS,
        _unsupervised.UnsupervisedParams,
    ),
}
_NAMERS = {"maskdiffusion-unsupervised": _unsupervised.name_segments}


def register(name: str, fn, needs: Needs, params_cls, namer=None) -> None:
    """Adds a user-defined method under `name` (the built-in ones are in the table above), so that
    ``Segmenter(..., method=name)`` runs it; `namer` names its channels when they are segments."""
    _REGISTRY[name] = (fn, needs, params_cls)
    if namer is not None:
        _NAMERS[name] = namer


def available() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def get(name: str):
    return _entry(name)[0]


def needs(name: str) -> Needs:
    return _entry(name)[1]


def params_class(name: str):
    return _entry(name)[2]


def namer(name: str):
    """The segment-naming function of a method whose channels are segments, else None."""
    _entry(name)
    return _NAMERS.get(name)


# The parameter holding each method's background score (what jobs.evaluate fits as "tau").
BACKGROUND_FIELD = {"diffsegmenter": "tau", "seediff": "threshold", "maskdiffusion": "background"}


def make_params(name: str, values: dict | None = None):
    """The method's params dataclass with `values` (field -> value) over its defaults.

    The key "tau" is accepted for every method with a background score and sets that method's own
    field (tau, threshold or background). Unknown fields raise ValueError naming them.
    """
    cls = params_class(name)
    values = dict(values or {})
    if "tau" in values and name in BACKGROUND_FIELD and BACKGROUND_FIELD[name] != "tau":
        values[BACKGROUND_FIELD[name]] = values.pop("tau")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"method {name!r} has no parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)
