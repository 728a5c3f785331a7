"""fitted.json: the background thresholds ``jobs.evaluate --fit tau`` writes, and the ONE reader of it.

A fitted.json maps method -> record ``{"tau": x, ...}`` (fit mIoU, fit stems and the vocabulary hash are
provenance); an older flat record ``{"method": m, "tau": x}`` is accepted too. Both the single-image
command (``python -m diffseg --fitted``) and the job (``jobs.segment --fitted``) turn ``--tau`` /
``--fitted`` into per-method values with :func:`background_values`, so they always agree.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping

from diffseg.methods import BACKGROUND_FIELD

# The scale each method's background threshold lives on: one bare --tau serves only methods of one scale.
BACKGROUND_SCALE = {
    "diffsegmenter": "min-max normalised scores in [0, 1]",
    "seediff": "min-max normalised scores in [0, 1]",
    "maskdiffusion": "cosines rescaled per image, relative to the image's best class, in [0, 1]",
}
# The values a background threshold may take on each method's scale (checked before a job starts).
BACKGROUND_RANGE = {method: (0.0, 1.0) for method in BACKGROUND_SCALE}


def tau_option(text: str) -> tuple[str | None, float]:
    """argparse type of ``--tau``: ``METHOD=X`` (one method's threshold) or a bare ``X`` -> (method or
    None, X); a value that is not a finite number is a usage error naming it."""
    from diffseg.argtypes import finite_float

    method, sep, value = text.rpartition("=")
    method = method.strip().lower() if sep else None
    if sep and method not in BACKGROUND_FIELD:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {method!r} has no background threshold; methods with one: {', '.join(sorted(BACKGROUND_FIELD))}")
    return method, finite_float(value.strip())


def read_fitted(uri: str) -> dict[str, dict]:
    """method -> fitted record from the fitted.json at `uri` (local path or fsspec URL).

    Raises ValueError naming `uri` when it cannot be read or is not a fitted.json.
    """
    from fsspec.core import url_to_fs

    from diffseg.model import redact_uri

    try:
        fs, path = url_to_fs(uri)
        with fs.open(path, "rt") as handle:
            data = json.load(handle)
    except Exception as exc:  # OSError, bad JSON, and object-store client errors (botocore's are no OSError)
        from diffseg.redact import describe_error

        raise ValueError(f"cannot read fitted values {redact_uri(uri)!r}: {describe_error(exc, [uri])}") from exc
    if isinstance(data, dict) and "method" in data:
        data = {data["method"]: data}
    if not isinstance(data, dict) or not data or not all(
        isinstance(v, dict) and isinstance(v.get("tau"), (int, float)) and math.isfinite(v["tau"])
        for v in data.values()
    ):
        raise ValueError(f"{redact_uri(uri)!r} is not a fitted.json written by `python -m jobs.evaluate --fit tau`")
    return data


def tau_values(methods, tau) -> dict[str, dict]:
    """method -> ``{"tau": x}`` from `tau`: a number for every method of `methods` with a background
    score, a mapping method -> number, or ``--tau`` options as :func:`tau_option` parses them
    ([(method or None, x)]: a bare value serves the methods not named).

    Raises ValueError when a bare value would serve methods whose thresholds live on different scales
    (:data:`BACKGROUND_SCALE`; the message names them and the per-method form), or when a method named
    is not among `methods`.
    """
    if isinstance(tau, Mapping):
        pairs = list(tau.items())
    elif isinstance(tau, (int, float)):
        pairs = [(None, tau)]
    else:
        pairs = list(tau)
    thresholded = [m for m in methods if m in BACKGROUND_FIELD]
    named = {m: float(v) for m, v in pairs if m is not None}
    unused = sorted(set(named) - set(thresholded))
    if unused:
        raise ValueError(f"--tau {unused[0]}=...: method {unused[0]} is not in use; thresholds apply to "
                         f"{', '.join(thresholded) or 'no method in use'}")
    bare = [float(v) for m, v in pairs if m is None]
    if len(bare) > 1:
        raise ValueError(f"--tau given {len(bare)} bare values ({', '.join(map(str, bare))}); give one, or one "
                         "METHOD=X per method")
    rest = [m for m in thresholded if m not in named]
    scales = {BACKGROUND_SCALE.get(m, m) for m in rest}
    if bare and len(scales) > 1:
        listed = "; ".join(f"{BACKGROUND_SCALE.get(m, 'its own scale')} for method {m}" for m in rest)
        raise ValueError(f"--tau {bare[0]:g} would set thresholds on different scales ({listed}); give one per "
                         f"method instead, e.g. " + " ".join(f"--tau {m}=X" for m in rest))
    return {m: {"tau": named[m] if m in named else bare[0]} for m in thresholded if m in named or bare}


def background_values(methods, tau=None, fitted_uri: str | None = None) -> dict[str, dict]:
    """method -> ``{"tau": x}`` for the methods in `methods` that have a background score, from `tau`
    (:func:`tau_values`: a number, a per-method mapping or parsed ``--tau`` options) or a fitted.json
    (`fitted_uri`); ``{}`` when neither is given.

    Raises ValueError when both are given, when a bare threshold would serve methods of different
    scales, or when the fitted.json holds none of `methods`.
    """
    if tau is not None and not isinstance(tau, (int, float)) and not tau:
        tau = None
    if tau is not None and fitted_uri:
        raise ValueError("give --tau or --fitted, not both")
    if tau is not None:
        return tau_values(methods, tau)
    if not fitted_uri:
        return {}
    fitted = read_fitted(fitted_uri)
    values = {m: {"tau": float(fitted[m]["tau"])} for m in methods if m in fitted and m in BACKGROUND_FIELD}
    if not values:
        from diffseg.model import redact_uri

        raise ValueError(f"--fitted {redact_uri(fitted_uri)!r} has no fitted threshold for {', '.join(methods)} "
                         f"(it holds {', '.join(sorted(fitted))})")
    return values
