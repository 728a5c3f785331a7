"""What a run was segmented with, read back from OUTPUT, so a comparison can say what differed.

A run's settings come from the manifest of its latest invocation: ``manifest.json`` when it is the
OUTPUT's latest run, else the newest ``_history/<run_id>/*.json``, else the identity recorded in
``_runs/<run_id>.json`` (model, vocabulary hash, methods, resolution, method parameters). They are
flattened to ``{"key": value}`` (nested keys joined with "."), leaving out what only says how the job
ran (input, sizing, Ray options), not what it computed.
"""

from __future__ import annotations

import json
import posixpath

from fsspec.core import url_to_fs

from diffseg.lake.manifest import MANIFEST, RUNS

# config keys that say how a job ran, not what it computed: never a "setting" of a run
OPERATIONAL = frozenset({
    "input", "output", "run_id", "batch_size", "actors", "gpus_per_actor", "cpus_per_actor", "unit_size",
    "limit", "max_error_fraction", "address", "num_cpus", "object_store_mb", "save_scores", "max_pixels",
})
# settings shown first when they differ (the ones a user tunes); the rest follow alphabetically
FIRST = ("methods", "context", "filter_ratio", "timesteps", "template", "separator", "resolution", "model", "vocab")


def _read_json(fs, path: str) -> dict | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        return json.load(handle)


def run_manifest(output: str, run_id: str | None) -> dict:
    """The manifest of `run_id`'s latest invocation in OUTPUT (the latest run when None;
    :func:`diffseg.lake.read.run_manifest`), or ``{"identity": ...}`` from ``_runs/<run_id>.json`` when no
    manifest of it is kept; {} when neither."""
    from diffseg.lake.read import run_manifest as invocation_manifest

    fs, root = url_to_fs(output)
    manifest = _read_json(fs, posixpath.join(root, MANIFEST)) or {}
    if run_id is None or manifest.get("run_id") == run_id:
        return manifest
    found = invocation_manifest(output, run_id, manifest)
    if found is not None:
        return found
    return _read_json(fs, posixpath.join(root, RUNS, f"{run_id}.json")) or {}


def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def settings_of(manifest: dict) -> dict[str, object]:
    """{setting: value} of a run from its manifest (or ``_runs`` record); nested keys joined by "."."""
    out: dict[str, object] = {}
    identity = dict(manifest.get("identity") or {})
    if isinstance(identity.get("method_params"), str):  # stored as canonical JSON
        identity["method_params"] = json.loads(identity["method_params"])
    _flatten({k: v for k, v in identity.items() if k != "vocab_hash"}, "", out)
    config = {k: v for k, v in (manifest.get("config") or {}).items() if k not in OPERATIONAL}
    _flatten(config, "", out)
    vocabulary = manifest.get("vocabulary")
    if isinstance(vocabulary, dict) and vocabulary.get("template"):
        out.setdefault("template", vocabulary["template"])
    if isinstance(manifest.get("model"), dict) and manifest["model"].get("uri"):
        out["model"] = manifest["model"]["uri"]
    return out


def run_settings(output: str, run_id: str | None) -> dict[str, object]:
    """{setting: value} of `run_id` in OUTPUT (see the module docstring); {} when nothing is recorded."""
    return settings_of(run_manifest(output, run_id))


def differing(settings: list[dict[str, object]]) -> list[str]:
    """The keys whose values are not the same in every one of `settings` (a missing key counts as None),
    the usually tuned ones (FIRST) first, then alphabetically."""
    keys = {k for s in settings for k in s}
    diff = {k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1}
    first = [k for k in FIRST if k in diff]
    return first + sorted(diff - set(first))


def show(value) -> str:
    """A setting's value as table text: lists joined by ",", None as "–"."""
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ",".join(show(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)
