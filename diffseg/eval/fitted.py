"""fitted.json: the background thresholds ``jobs.evaluate --fit tau`` writes, and the ONE reader of it.

A fitted.json maps method -> record ``{"tau": x, ...}`` (fit mIoU, fit stems and the vocabulary hash are
provenance); an older flat record ``{"method": m, "tau": x}`` is accepted too. Both the single-image
command (``python -m diffseg --fitted``) and the job (``jobs.segment --fitted``) turn ``--tau`` /
``--fitted`` into per-method values with :func:`background_values`, so they always agree.
"""

from __future__ import annotations

import json
import math

from diffseg.methods import BACKGROUND_FIELD


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


def background_values(methods, tau: float | None = None, fitted_uri: str | None = None) -> dict[str, dict]:
    """method -> ``{"tau": x}`` for the methods in `methods` that have a background score, from a
    threshold for all (`tau`) or a fitted.json (`fitted_uri`); ``{}`` when neither is given.

    Raises ValueError when both are given, or when the fitted.json holds none of `methods`.
    """
    if tau is not None and fitted_uri:
        raise ValueError("give --tau or --fitted, not both")
    if tau is not None:
        return {m: {"tau": float(tau)} for m in methods if m in BACKGROUND_FIELD}
    if not fitted_uri:
        return {}
    fitted = read_fitted(fitted_uri)
    values = {m: {"tau": float(fitted[m]["tau"])} for m in methods if m in fitted and m in BACKGROUND_FIELD}
    if not values:
        from diffseg.model import redact_uri

        raise ValueError(f"--fitted {redact_uri(fitted_uri)!r} has no fitted threshold for {', '.join(methods)} "
                         f"(it holds {', '.join(sorted(fitted))})")
    return values
