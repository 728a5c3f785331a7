"""Listing INPUT into full image URIs, and reading their bytes (the job's ``list`` and ``read`` stages).

INPUT is one of (checked in this order):

- a **manifest**: a ``.txt`` file with one URI or path per line (blank lines and ``#`` comments
  skipped) or a ``.parquet`` file with a ``uri`` (or ``path``) string column. Relative paths in a
  manifest are relative to the manifest's own folder.
- a **glob** (``*``, ``?`` or ``[`` in it): every matching *file*, whatever its extension (the pattern
  is the user's choice; a non-image file becomes a ``decode`` error row).
- a **folder or prefix**: every file below it, recursively, whose name ends with an image extension
  (:data:`diffseg.codecs.images.IMAGE_EXTENSIONS`, case-insensitive). A single image file is also accepted.

Anything fsspec opens works: local paths, ``file://``, ``s3://`` (S3-compatible stores through the
standard ``AWS_ENDPOINT_URL`` and AWS credential chain), ``gs://`` (needs gcsfs). URIs are returned
sorted, de-duplicated and *with their scheme* (``file:///abs/a.jpg``, ``s3://bucket/a.jpg``): they are
the keys of the output tables, the done set and the per-image noise seed, so the same file always gets
the same URI however INPUT was spelled.
"""

from __future__ import annotations

import io
import os
import time

import fsspec
from fsspec.core import url_to_fs

MANIFEST_SUFFIXES = (".txt", ".parquet")
READ_ATTEMPTS = 3  # tries per file for transient storage errors (not for missing files or permissions)


def has_magic(path: str) -> bool:
    """True when `path` holds glob characters (``*``, ``?``, ``[``)."""
    return any(c in path for c in "*?[")


class InputError(ValueError):
    """INPUT cannot be listed, does not exist, or holds no images."""


def image_extensions() -> tuple[str, ...]:
    """Lower-case image file extensions listed from folders (the library's list)."""
    from diffseg.codecs.images import IMAGE_EXTENSIONS

    return tuple(IMAGE_EXTENSIONS)


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The canonical URI (with scheme) of `path` on `fs`: ``file:///abs/x.jpg``, ``s3://bucket/x.jpg``."""
    if _is_local(fs):
        return "file://" + os.path.abspath(path)
    return fs.unstrip_protocol(path)


def list_inputs(spec: str) -> list[str]:
    """Sorted unique image URIs named by INPUT `spec` (see the module docstring). Raises InputError."""
    try:
        fs, path = url_to_fs(spec)
    except (ImportError, ValueError) as exc:
        raise InputError(f"INPUT {spec!r}: no filesystem for it ({exc})") from exc
    try:
        _invalidate(fs, path)
        if spec.lower().endswith(MANIFEST_SUFFIXES) and not has_magic(path):
            uris = _list_manifest(fs, path, spec)
        elif has_magic(path):
            uris = _list_glob(fs, path)
        else:
            uris = _list_folder(fs, path, spec)
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputError(f"INPUT {spec!r} does not exist ({exc})") from exc
    except Exception as exc:  # permissions, network, bad bucket
        raise InputError(f"INPUT {spec!r} cannot be listed: {type(exc).__name__}: {exc}") from exc
    if not uris:
        what = "matches no file" if has_magic(path) else (
            "lists no URI" if spec.lower().endswith(MANIFEST_SUFFIXES) else
            f"holds no image files (extensions {', '.join(image_extensions())}, any case)"
        )
        raise InputError(f"INPUT {spec!r} {what}")
    return sorted(set(uris))


def _list_folder(fs, path: str, spec: str) -> list[str]:
    exts = image_extensions()
    if fs.isfile(path):
        return [full_uri(fs, path)]
    if not fs.isdir(path):
        # An object-store key prefix that is not a "folder" (s3://bucket/images/2024-): list its parent.
        parent = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else path
        if spec.endswith("/") or parent == path or not fs.exists(parent):
            raise FileNotFoundError(path)
        found = [p for p in fs.find(parent) if p.startswith(path)]
        if not found:
            raise FileNotFoundError(path)
    else:
        found = fs.find(path)
    return [full_uri(fs, p) for p in found if p.lower().endswith(exts)]


def _list_glob(fs, path: str) -> list[str]:
    found = fs.glob(path, detail=True)
    return [full_uri(fs, p) for p, info in found.items() if info.get("type") == "file"]


def _list_manifest(fs, path: str, spec: str) -> list[str]:
    if not fs.isfile(path):
        raise FileNotFoundError(path)
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            table = pq.read_table(io.BytesIO(f.read()))
        names = [n for n in ("uri", "path") if n in table.column_names]
        if not names:
            strings = [f.name for f in table.schema if str(f.type) in ("string", "large_string")]
            if len(strings) != 1:
                raise InputError(
                    f"INPUT manifest {spec!r} needs a 'uri' (or 'path') string column; it has "
                    f"{', '.join(table.column_names) or 'no columns'}"
                )
            names = strings
        entries = [e for e in table.column(names[0]).to_pylist() if e]
    else:
        with fs.open(path, "rb") as f:
            text = f.read().decode("utf-8")
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        entries = [e for e in entries if e]
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    uris = []
    for entry in entries:
        uris.append(_resolve_entry(fs, base, entry))
    return uris


def _resolve_entry(fs, base: str, entry: str) -> str:
    """A manifest line as a canonical URI (relative paths are relative to the manifest's folder)."""
    if "://" in entry:
        efs, epath = url_to_fs(entry)
        return full_uri(efs, epath)
    if _is_local(fs):
        return full_uri(fs, entry if os.path.isabs(entry) else os.path.join(base, entry))
    return full_uri(fs, entry.lstrip("/") if entry.startswith("/") else f"{base}/{entry}")


def read_uris(uris: list[str]) -> dict[str, bytes | Exception]:
    """Bytes of every URI, or the exception that stopped its read (after retrying transient errors).

    URIs on the same filesystem are fetched together (``fs.cat_ranges``: concurrent on object stores,
    and file names are never expanded as globs). Missing files and permission errors are not retried;
    anything else is tried READ_ATTEMPTS times with a short backoff.
    """
    out: dict[str, bytes | Exception] = {}
    groups: dict[int, tuple[fsspec.AbstractFileSystem, dict[str, str]]] = {}
    for uri in uris:
        try:
            fs, path = url_to_fs(uri)
        except Exception as exc:
            out[uri] = exc
            continue
        groups.setdefault(id(fs), (fs, {}))[1][path] = uri
    for fs, paths in groups.values():
        pending = dict(paths)
        for attempt in range(READ_ATTEMPTS):
            keys = list(pending)
            try:
                got = fs.cat_ranges(keys, None, None, on_error="return")
            except Exception as exc:  # the whole call failed (e.g. connection refused)
                got = [exc] * len(keys)
            retry = {}
            for path, value in zip(keys, got):
                if isinstance(value, Exception) and _transient(value) and attempt + 1 < READ_ATTEMPTS:
                    retry[path] = pending[path]
                else:
                    out[pending[path]] = value
            if not retry:
                break
            time.sleep(0.2 * 2**attempt)
            pending = retry
    return out


def _transient(exc: Exception) -> bool:
    return not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError))


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _invalidate(fs, path: str) -> None:
    """Drops fsspec's cached listings, so a listing in a long-lived process sees new files."""
    try:
        fs.invalidate_cache()
    except Exception:
        pass
