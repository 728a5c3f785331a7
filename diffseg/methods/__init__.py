"""Segmentation methods: pure functions ``(maps, spans, params=None) -> scores (B, 1 + K, h, w)``.

``get(name)`` returns the function, ``needs(name)`` what it reads from the capture, and
``params_class(name)`` its frozen parameter dataclass (``None`` params = the documented defaults).
"""

from __future__ import annotations

from diffseg.capture import Needs
from diffseg.methods import diffsegmenter as _diffsegmenter

_REGISTRY = {
    "diffsegmenter": (_diffsegmenter.diffsegmenter, _diffsegmenter.NEEDS, _diffsegmenter.DiffSegmenterParams),
}


def register(name: str, fn, needs: Needs, params_cls) -> None:
    """Adds a method under `name` (used by the method modules)."""
    _REGISTRY[name] = (fn, needs, params_cls)


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
