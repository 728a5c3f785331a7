"""Loose image files: a folder or prefix, a glob, a single file, or a manifest of URIs (the ``files`` form).

INPUT is one of (checked in this order):

- a **manifest**: a ``.txt`` file with one URI or path per line (blank lines skipped; a line whose first
  non-blank character is ``#`` is a comment, and a ``#`` anywhere else is part of the path) or a
  ``.parquet`` file with a ``uri`` (or ``path``) string column. Relative paths in a manifest are relative
  to the manifest's own folder.
- a **glob** (``*``, ``?`` or ``[`` in it): every matching regular *file*, whatever its extension (the
  pattern is the user's choice; a non-image file becomes a ``decode`` error row).
- a **folder or prefix**: every regular file below it, recursively, whose name ends with an image
  extension (:data:`diffseg.codecs.images.IMAGE_EXTENSIONS`, case-insensitive). A single image file is
  also accepted.

URIs are returned sorted, de-duplicated and *with their scheme* (``file:///abs/a.jpg``,
``s3://bucket/a.jpg``): a loose file's URI is its identity (the key of the output tables, the done set
and the per-image noise seed), so the same file always gets the same URI however INPUT was spelled.

Hostile names and files (issue 14):

- Every URI names one exact object: ``::`` is part of a name, never fsspec's URL chaining
  (:func:`~diffseg.inputs.uri.exact_fs`); ``colon::x.png`` is the file of that name.
- FIFOs, devices and sockets (also through symlinks) are skipped when a folder or glob is listed, with
  a warning: reading them could block forever or never end. A manifest naming one gets a ``read``
  error row (:class:`~diffseg.inputs.errors.NotRegularFileError`).
- A local file name that is not valid UTF-8 cannot be a key of the output tables. It is listed under a
  reversible escape (``escape_name``: each byte that is not UTF-8 becomes ``%XX`` and ``%`` becomes
  ``%25``; ``unescape_name`` gives the bytes back), and reading that URI gives a ``NonUtf8NameError``
  whose ``stage`` is ``"list"``: one error row, and the rest of the lake runs.
"""

from __future__ import annotations

import io
import logging
import os

from diffseg.codecs.images import IMAGE_EXTENSIONS
from diffseg.inputs.errors import InputError
from diffseg.inputs.read import is_regular
from diffseg.inputs.uri import (
    escape_name,
    exact_fs,
    full_uri,
    has_magic,
    invalidate,
    is_escaped_name,
    is_local,
    redact,
)

MANIFEST_SUFFIXES = (".txt", ".parquet")

log = logging.getLogger("diffseg.inputs")


def image_extensions() -> tuple[str, ...]:
    """Lower-case image file extensions listed from folders (the library's list)."""
    return tuple(IMAGE_EXTENSIONS)


def list_inputs(spec: str) -> list[str]:
    """Sorted unique image URIs named by INPUT `spec` (see the module docstring). Raises InputError.

    Names that are not UTF-8 are listed escaped (they become ``list`` error rows when read); FIFOs,
    devices and sockets under a folder or glob are left out with a warning."""
    return sorted(set(listed(spec)))


def list_inputs_array(spec: str, uris: list[str] | None = None):
    """:func:`list_inputs` as a ``pyarrow.StringArray`` (same URIs, same order): what planning holds at
    lake scale, about a third of the memory of a Python list of ten million URIs. The listing's Python
    strings are dropped before the array is sorted (UTF-8 byte order is code point order, so the order
    is Python's). `uris`: an unsorted listing already made (a Python list or an Arrow array: a form that
    lists loose files, such as an inventory), instead of listing `spec`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if uris is None:
        uris = listed(spec)
    array = uris.cast(pa.string()) if isinstance(uris, (pa.Array, pa.ChunkedArray)) else pa.array(uris, pa.string())
    array = pc.unique(array)
    return array.take(pc.sort_indices(array))


def listed(spec: str, found: dict[str, dict] | None = None) -> list[str]:
    """The image URIs named by INPUT `spec`, unsorted, possibly repeated (see list_inputs). `found`: a
    detailed listing of the folder `spec` already made (by format detection), so it is not listed twice."""
    try:
        fs, path = exact_fs(spec)
    except (ImportError, ValueError) as exc:
        raise InputError(f"INPUT {redact(spec)!r}: no filesystem for it ({exc})") from exc
    try:
        invalidate(fs)
        if spec.lower().endswith(MANIFEST_SUFFIXES) and not has_magic(path):
            uris = _list_manifest(fs, path, spec)
        elif has_magic(path):
            uris = _list_glob(fs, path, found)
        else:
            uris = _list_folder(fs, path, spec, found)
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputError(f"INPUT {redact(spec)!r} does not exist ({redact(exc)})") from exc
    except Exception as exc:  # permissions, network, bad bucket
        raise InputError(f"INPUT {redact(spec)!r} cannot be listed: {type(exc).__name__}: {redact(exc)}") from exc
    if not uris:
        what = "matches no file" if has_magic(path) else (
            "lists no URI" if spec.lower().endswith(MANIFEST_SUFFIXES) else
            f"holds no image files (extensions {', '.join(image_extensions())}, any case)"
        )
        raise InputError(f"INPUT {redact(spec)!r} {what}")
    bad = [u for u in uris if u.startswith("file://") and is_escaped_name(u)]
    if bad:
        log.warning("INPUT %s: %d file name(s) are not valid UTF-8 and become 'list' error rows under their "
                    "escaped URIs (e.g. %s)", redact(spec), len(bad), bad[0])
    return uris


def find_below(fs, path: str, spec: str) -> dict[str, dict] | None:
    """Every entry below folder or key prefix `path` ({path: info}, recursive), or None when `path` is
    one file. FileNotFoundError when there is nothing (a prefix that is not a folder, such as
    ``s3://bucket/images/2024-``, lists its parent and keeps the names that start with it)."""
    if fs.isfile(path):
        return None
    if fs.isdir(path):
        return fs.find(path, detail=True)
    parent = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else path
    if spec.endswith("/") or parent == path or not fs.exists(parent):
        raise FileNotFoundError(path)
    found = {p: info for p, info in fs.find(parent, detail=True).items() if p.startswith(path)}
    if not found:
        raise FileNotFoundError(path)
    return found


def regular_files(fs, found: dict[str, dict]) -> list[str]:
    """Paths of `found` (a detailed listing on `fs`) that are regular files, local symlinks to one
    included; warns about the FIFOs, devices and sockets it leaves out."""
    files, other = [], []
    for p, info in found.items():
        if info.get("type") == "file" or (info.get("type") == "other" and is_local(fs) and is_regular(p)):
            files.append(p)
        elif info.get("type") != "directory":
            other.append(p)
    other.sort()
    if other:
        log.warning("INPUT: %d entr(ies) that are not regular files (FIFOs, devices, sockets) are skipped, "
                    "e.g. %s", len(other), escape_name(other[0]))
    return files


def _list_folder(fs, path: str, spec: str, found: dict[str, dict] | None) -> list[str]:
    found = find_below(fs, path, spec) if found is None else found
    if found is None:
        return [full_uri(fs, path)]
    exts = image_extensions()
    images = {p: info for p, info in found.items() if p.lower().endswith(exts)}
    return [full_uri(fs, p) for p in regular_files(fs, images)]


def _list_glob(fs, path: str, found: dict[str, dict] | None) -> list[str]:
    return [full_uri(fs, p) for p in regular_files(fs, fs.glob(path, detail=True) if found is None else found)]


def manifest_entries(fs, path: str, spec: str) -> list[str]:
    """The entries (URIs or paths, as written) of the .txt or .parquet URI manifest at `path`."""
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
                    f"INPUT manifest {redact(spec)!r} needs a 'uri' (or 'path') string column; it has "
                    f"{', '.join(table.column_names) or 'no columns'}"
                )
            names = strings
        return [e for e in table.column(names[0]).to_pylist() if e]
    with fs.open(path, "rb") as f:
        text = f.read().decode("utf-8", "surrogateescape")
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _list_manifest(fs, path: str, spec: str) -> list[str]:
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    return [resolve_entry(fs, base, entry) for entry in manifest_entries(fs, path, spec)]


def resolve_entry(fs, base: str, entry: str) -> str:
    """A manifest line as a canonical URI (relative paths are relative to the manifest's folder `base`)."""
    if "://" in entry:
        efs, epath = exact_fs(entry)
        return full_uri(efs, epath)
    if is_local(fs):
        return full_uri(fs, entry if os.path.isabs(entry) else os.path.join(base, entry))
    return full_uri(fs, entry.lstrip("/") if entry.startswith("/") else f"{base}/{entry}")
