"""The run manifest (``OUTPUT/manifest.json``) and the run identity check (``OUTPUT/_runs/<run_id>.json``).

The manifest describes the latest invocation (earlier ones are kept under ``_history/<run_id>/``): status, resolved configuration, package versions, model,
vocabulary and its hash, counts, timings and the run's committed units. It is written when the run
starts (``status: running``) and rewritten when it ends. URLs are written without any ``user:password@``
part and no environment variable is ever recorded, so it never holds credentials.

A run's identity is what changes its masks: model, vocabulary hash, methods, resolution, and the method
parameters and recipe options given over their defaults (a tuned tau, ``--timesteps``, ``--context``...). It is
recorded when the run's first unit is committed; a later job under the same OUTPUT and run id with
another identity is refused (:class:`RunConflictError`) unless it names a new ``--run-id``. A run that
committed nothing (its first invocation failed before any commit) may be redefined.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

from diffseg.lake.store import OutputStore
from diffseg.model import redact_uri

log = logging.getLogger("diffseg.lake.manifest")

MANIFEST = "manifest.json"
RUNS = "_runs"
HISTORY = "_history"  # _history/<run_id>/<started_at>-<invocation>.json: finished invocations' manifests
HISTORY_KEEP = 100  # manifests kept per run in _history (the log keeps every invocation's begin and finish)
MANIFESTS = "_manifests"  # _manifests/<run_id>.json: the manifest of each run's latest invocation
PACKAGES = ("diffseg", "torch", "diffusers", "transformers", "ray", "pyarrow", "numpy", "Pillow", "fsspec",
            "s3fs", "pycocotools")


class RunConflictError(ValueError):
    """OUTPUT already holds the run id with another model, vocabulary, method set or resolution."""


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the outputs (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_identity(model: str, vocab_hash: str, methods: list[str] | tuple[str, ...], resolution: int,
                 method_params: Mapping[str, Mapping] | None = None, recipe: Mapping | None = None) -> dict:
    """The settings that make masks comparable; two jobs with equal identities may share a run id.

    `method_params` ({method: {field: value}}) and `recipe` (the recipe options given over the methods'
    own: {"timesteps": [...], "context": "per_class", ...}) are stored as canonical JSON (sorted keys),
    each only when given, so a run recorded before either existed is still the same run."""
    identity = {"model": redact_uri(model), "vocab_hash": vocab_hash, "methods": sorted(methods),
                "resolution": int(resolution)}
    if method_params:
        identity["method_params"] = json.dumps(method_params, sort_keys=True)
    if recipe:
        identity["recipe"] = json.dumps(recipe, sort_keys=True)
    return identity


def check_run_identity(store: OutputStore, run_id: str, identity: dict, has_commits: bool = True) -> bool:
    """Checks the run's identity against the recorded one. Returns True when the run is new (nothing
    recorded, or a recorded identity that no committed unit uses yet: it may be redefined).

    Raises RunConflictError naming every difference when the run id already exists with another one and
    has committed units. Nothing is written: :func:`record_run_identity` records it at the first commit.
    """
    rel = f"{RUNS}/{run_id}.json"
    if not store.exists(rel):
        return True
    recorded = store.get_json(rel)
    old = recorded.get("identity", {})
    diffs = [f"{key}: {old.get(key)!r} there, {identity[key]!r} now" for key in identity if old.get(key) != identity[key]]
    if not diffs:
        return False
    if not has_commits:
        log.info("run %r was recorded with other settings but committed nothing: it is redefined (%s)", run_id,
                 "; ".join(diffs))
        return True
    classes = recorded.get("classes")
    hint = f" (its classes: {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''})" if classes else ""
    raise RunConflictError(
        f"OUTPUT {redact_uri(store.output)!r} already holds run {run_id!r} made with other settings"
        f"{hint}: {'; '.join(diffs)}. Masks of different settings must not mix in one run: pass "
        f"--run-id NEW_ID to start a new run in this OUTPUT (rows carry their run_id), or use "
        f"another OUTPUT."
    )


def record_run_identity(store: OutputStore, run_id: str, identity: dict, vocab_names: list[str]) -> None:
    """Records what the run is (``_runs/<run_id>.json``): called before its first unit is committed."""
    store.put_json(f"{RUNS}/{run_id}.json", {"run_id": run_id, "identity": identity, "classes": list(vocab_names),
                                             "created_at": utc_stamp()})


def utc_stamp(t: float | None = None) -> str:
    """`t` (seconds since the epoch; now when None) as the lake's UTC timestamp: ``2026-01-31T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def redact_config(config: dict) -> dict:
    """The config with every URL-valued option stripped of credentials."""
    out = {}
    for key, value in config.items():
        out[key] = redact_uri(value) if isinstance(value, str) and "://" in value else value
    return out


@dataclass(frozen=True)
class RunInfo:
    """What an invocation was asked to do: the part of its manifest that does not change while it runs."""

    run_id: str
    output: str  # OUTPUT as given (written without credentials)
    config: dict  # the resolved configuration (URL-valued options are redacted when written)
    model: str  # model URI as given
    vocab: object  # diffseg.Vocabulary: classes, aliases, template
    vocab_spec: str  # the vocabulary option as given
    vocab_hash: str  # the rows' vocab_hash
    started_at: str  # UTC, ISO 8601


def build_manifest(run: RunInfo, status: str, counts: dict, timings: dict, committed_units: int,
                   resources: dict | None = None, error: str | None = None) -> dict:
    """The manifest.json object (see the module docstring)."""
    vocab, vocab_spec = run.vocab, run.vocab_spec
    manifest = {
        "format": 1,
        "status": status,
        "run_id": run.run_id,
        "output": redact_uri(run.output),
        "started_at": run.started_at,
        "finished_at": None if status == "running" else utc_stamp(),
        "config": redact_config(run.config),
        "resources": resources,
        "versions": package_versions(),
        "model": {"uri": redact_uri(run.model), "random_weights": run.model in ("tiny", "sd15-random", "sd21-random")},
        "vocabulary": {
            "spec": redact_uri(vocab_spec) if "://" in vocab_spec else vocab_spec,
            "classes": list(vocab.names),
            "aliases": {k: list(v) for k, v in vocab.aliases.items() if v},
            "template": vocab.template,
            "hash": run.vocab_hash,
        },
        "counts": counts,
        "timings": timings,
        "units": {"committed": committed_units},
    }
    if error:
        manifest["error"] = error
    return manifest


def run_manifest_path(run_id: str) -> str:
    """Where the manifest of a run's latest invocation is kept (runs never overwrite each other's)."""
    return f"{MANIFESTS}/{run_id}.json"


def write_manifest(store: OutputStore, manifest: dict) -> None:
    """Writes the run's manifest (``_manifests/<run_id>.json``) and ``manifest.json`` (the latest invocation of
    any run); a finished invocation's manifest is also kept under ``_history/<run_id>/`` (the newest
    :data:`HISTORY_KEEP` per run). The caller writes it only after a fenced log entry (diffseg.lake.log)."""
    run_id = manifest["run_id"]
    store.put_json(run_manifest_path(run_id), manifest)
    store.put_json(MANIFEST, manifest)
    if manifest["status"] != "running":
        stamp = manifest["started_at"].replace(":", "").replace("-", "")
        name = f"{stamp}-{manifest['invocation']}" if manifest.get("invocation") else stamp
        store.put_json(f"{HISTORY}/{run_id}/{name}.json", manifest)
        kept = sorted(r for r in store.list(f"{HISTORY}/{run_id}") if r.endswith(".json"))
        store.remove(kept[:-HISTORY_KEEP])
