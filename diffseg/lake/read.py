"""Reading a segment job's OUTPUT: manifest, runs, committed tables, stems (no Ray needed).

The one read path of evaluation (:mod:`diffseg.eval.predictions`), ``jobs.report`` and exports.

OUTPUT is a local path or any fsspec URL (``s3://``, ``gs://``, ``file://``). Tables are read from the
files the runs' commit logs name (:func:`diffseg.lake.units.committed_files`), so rows of a run still in
flight (or debris of a killed one) are never counted twice or half, and a commit record that cannot be read
is an error, never fewer rows.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
from fsspec.core import url_to_fs

from diffseg.codecs.images import IMAGE_EXTENSIONS
from diffseg.lake.manifest import HISTORY, MANIFEST, RUNS


class OutputError(ValueError):
    """OUTPUT is missing, incomplete or not a segment job's output."""


def read_manifest(output: str) -> dict:
    """The run manifest (``OUTPUT/manifest.json``) as a dict; OutputError when absent or unreadable."""
    fs, root = url_to_fs(output)
    path = posixpath.join(root, "manifest.json")
    if not fs.exists(path):
        hint = "" if fs.exists(root) else " (the folder does not exist)"
        raise OutputError(
            f"{output!r} has no manifest.json{hint}: is it the OUTPUT of `python -m jobs.segment`?"
        )
    try:
        with fs.open(path, "rb") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot read {output}/manifest.json: {exc}") from exc


def vocabulary_of(manifest: dict) -> list[str]:
    """The run's class names in label order (label k = names[k-1]); OutputError when the manifest has none."""
    vocab = manifest.get("vocabulary", manifest.get("classes"))  # manifest.json, or _runs/<run_id>.json
    if isinstance(vocab, dict):  # {"classes": [...], "aliases": ..., "hash": ...}
        vocab = vocab.get("classes")
    if not isinstance(vocab, list) or not vocab:
        raise OutputError("the manifest names no vocabulary (expected a 'vocabulary' list of class names)")
    return [v if isinstance(v, str) else str(v.get("name")) for v in vocab]


def run_manifest(output: str, run_id: str, latest: dict | None = None) -> dict | None:
    """The manifest of run `run_id`'s latest invocation in OUTPUT: ``_manifests/<run_id>.json``; for outputs
    written before it existed, ``manifest.json`` when it is that run's, else the newest
    ``_history/<run_id>/*.json``; else None (no manifest of it kept, or no such run).

    ``latest``: ``manifest.json`` when the caller has read it already (read here otherwise; {} when absent).
    """
    from diffseg.lake.manifest import run_manifest_path
    from diffseg.lake.store import OutputStore

    store = OutputStore(output)
    if store.exists(run_manifest_path(run_id)):
        return store.get_json(run_manifest_path(run_id))
    if latest is None:
        latest = store.get_json(MANIFEST) if store.exists(MANIFEST) else {}
    if latest.get("run_id") == run_id:
        return latest
    history = [r for r in store.list(posixpath.join(HISTORY, run_id)) if r.endswith(".json")]
    return store.get_json(sorted(history)[-1]) if history else None


def model_uri(manifest: dict | None, missing: str = "") -> str:
    """The model URI (redacted when written) a run's manifest records; `missing` when it records none."""
    model = (manifest or {}).get("model")
    if model is None:
        return missing
    return model.get("uri", missing) if isinstance(model, dict) else str(model)


def resolve_run(output: str, run_id: str | None = None) -> tuple[str | None, list[str], dict]:
    """(run_id, vocabulary, manifest) of the run to read from OUTPUT.

    Several runs may share an OUTPUT (each run has one vocabulary). Default: the run of the latest
    invocation (``manifest.json``'s ``run_id``). Another run's vocabulary comes from ``_runs/<run_id>.json``
    and its manifest from :func:`run_manifest` ({} when none of it is kept).
    """
    manifest = read_manifest(output)
    latest = manifest.get("run_id")
    chosen = run_id or latest
    if chosen is None or chosen == latest:
        return chosen, vocabulary_of(manifest), manifest
    fs, root = url_to_fs(output)
    path = posixpath.join(root, RUNS, f"{chosen}.json")
    if not fs.exists(path):
        raise OutputError(
            f"OUTPUT {output!r} has no run {chosen!r} (no _runs/{chosen}.json); latest run: {latest!r}"
        )
    with fs.open(path, "rb") as handle:
        info = json.load(handle)
    try:
        vocabulary = vocabulary_of(info)
    except OutputError as exc:
        raise OutputError(f"run {chosen!r}: {exc}") from exc
    return chosen, vocabulary, run_manifest(output, chosen, manifest) or {}


def iter_committed(output: str, name: str, columns: list[str] | None = None, run_id: str | None = None):
    """The committed rows of table ``name`` ("masks", "stats" or "errors"), one pyarrow Table per unit file.

    Memory stays at one unit's rows (a few hundred images). Rows of units still being written, or left
    half-written by a killed run, are never included (:func:`diffseg.lake.units.committed_files`).
    """
    from diffseg.lake.schemas import SCHEMAS
    from diffseg.lake.store import OutputStore
    from diffseg.lake.units import committed_state, read_file

    store = OutputStore(output)
    for done in committed_state(output, run_id).values():
        for rel in done.files(name):
            yield read_file(store, rel, SCHEMAS[name], columns)


def iter_unit_tables(output: str, columns: dict[str, list[str] | None], run_id: str | None = None):
    """Per committed unit, {table: its rows} for the tables of `columns` ({table: columns or None}), all read
    from ONE replay of the log, so the masks and stats of a unit always come from the same commit (a
    unit committed meanwhile is either wholly in or wholly out)."""
    from diffseg.lake.schemas import SCHEMAS
    from diffseg.lake.store import OutputStore
    from diffseg.lake.units import committed_state, read_file

    store = OutputStore(output)
    for done in committed_state(output, run_id).values():
        for _, unit in sorted(done.units.items()):
            yield {t: read_file(store, unit["files"][t]["path"], SCHEMAS[t], cols) for t, cols in columns.items()}


def read_table(
    output: str,
    name: str,
    columns: list[str] | None = None,
    run_id: str | None = None,
    methods: list[str] | None = None,
    uris: set[str] | None = None,
) -> pa.Table:
    """The committed rows of table ``name`` of OUTPUT (one run, or all runs when ``run_id`` is None).

    ``columns`` selects columns; ``methods`` and ``uris`` keep only those rows (filtered file by file,
    so reading a sample of a large table holds only the sample).
    """
    from diffseg.lake.schemas import SCHEMAS

    wanted = list(columns or SCHEMAS[name].names)
    extra = [c for c, f in (("method", methods), ("uri", uris)) if f is not None and c not in wanted]
    parts = []
    for part in iter_committed(output, name, wanted + extra, run_id):
        if methods is not None:
            part = part.filter(pc.is_in(part["method"], value_set=pa.array(methods, pa.string())))
        if uris is not None:
            part = part.filter(pc.is_in(part["uri"], value_set=pa.array(sorted(uris), pa.string())))
        parts.append(part.select(wanted))
    if not parts:
        return pa.schema([SCHEMAS[name].field(c) for c in wanted]).empty_table()
    return pa.concat_tables(parts)


def stem_of(name: str) -> str:
    """File stem of a URI, path or bare name: ``s3://b/x/2007_000032.jpg`` -> ``2007_000032``.

    A URI or path loses its last suffix, whatever it is; a bare name (a line of a split file) only a known
    image suffix, so a stem with dots (``img.v2``) is kept whole.
    """
    path = name.rstrip("/").replace("\\", "/")
    base = posixpath.basename(path)
    root, ext = posixpath.splitext(base)
    if "/" in path or ext.lower() in IMAGE_EXTENSIONS:
        return root
    return base
