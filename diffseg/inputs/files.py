"""Loose image files: a folder or prefix, a glob, a single file, or a manifest of URIs (the ``files`` form).

INPUT is one of (checked in this order):

- a **manifest**: a ``.txt`` file with one URI or path per line (blank lines skipped; a line whose first
  non-blank character is ``#`` is a comment, and a ``#`` anywhere else is part of the path) or a
  ``.parquet`` file with a ``uri`` (or ``path``) string column. Relative paths in a manifest are relative
  to the manifest's own folder.
- a **glob** (``*``, ``?`` or ``[`` in it): every matching regular *file*, whatever its extension (the
  pattern is the user's choice; a non-image file becomes a ``decode`` error row). Listed by ``fs.glob``
  (its whole match in memory, about 2.5 KB per key on S3): for small inputs.
- a **folder or prefix**: every regular file below it, recursively, whose name ends with an image
  extension (:data:`diffseg.codecs.images.IMAGE_EXTENSIONS`, case-insensitive), listed by
  :func:`~diffseg.inputs.listing.list_keys` (parallel, straight into Arrow, no directory cache; a
  partial prefix ``s3://b/images/2024-`` lists only the keys starting with it). A folder spelled without
  its trailing ``/`` is that folder (``s3://b/images`` never takes ``images-old/``); a single file of
  any extension is also accepted. Links to folders are not followed (no cycles), as before.

:func:`file_batches` gives the URIs as a stream of Arrow batches (unsorted, maybe repeated, bounded
memory); :func:`list_inputs` and :func:`list_inputs_array` sorted and de-duplicated. Every URI has its
scheme (``file:///abs/a.jpg``, ``s3://bucket/a.jpg``; ``s3a://`` is written ``s3://``): a loose file's
URI is its identity (the key of the output tables, the done set and the per-image noise seed), so the
same file always gets the same URI however INPUT was spelled.

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
import itertools
import logging
import os
import re
from collections.abc import Iterator

from diffseg.codecs.images import IMAGE_EXTENSIONS
from diffseg.inputs.errors import InputError
from diffseg.inputs.listing import list_keys
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
BATCH_ROWS = 1 << 16  # URIs per batch of a manifest's or a glob's list (a folder's: list_keys' batches)

log = logging.getLogger("diffseg.inputs")


def image_extensions() -> tuple[str, ...]:
    """Lower-case image file extensions listed from folders (the library's list)."""
    return tuple(IMAGE_EXTENSIONS)


def list_inputs(spec: str) -> list[str]:
    """Sorted unique image URIs named by INPUT `spec` (see the module docstring). Raises InputError.

    Names that are not UTF-8 are listed escaped (they become ``list`` error rows when read); FIFOs,
    devices and sockets under a folder or glob are left out with a warning."""
    return sorted(set(listed(spec)))


def list_inputs_array(spec: str, uris=None):
    """:func:`list_inputs` as a ``pyarrow.StringArray`` (same URIs, same order): what planning holds at
    lake scale, about a third of the memory of a Python list of ten million URIs. A folder or prefix is
    listed straight into Arrow (:func:`file_batches`), never as Python strings; UTF-8 byte order is code
    point order, so the order is Python's. `uris`: an unsorted listing already made (a Python list, an
    Arrow array, or an iterable of Arrow arrays: a form that lists loose files, such as an inventory),
    instead of listing `spec`."""
    import pyarrow as pa

    if uris is None:
        uris = file_batches(spec)
    if isinstance(uris, list):
        uris = pa.array(uris, pa.string())
    if not isinstance(uris, (pa.Array, pa.ChunkedArray)):
        uris = list(uris)
    return sorted_unique(uris)


def sorted_unique(array):
    """`array` (a pyarrow string Array or ChunkedArray, or a list of string Arrays: the list is emptied,
    so its buffers go once sorted) sorted (UTF-8 byte order), without repeats. Sorted first, then each
    value equal to the one before it dropped: about 130 B per URI at the peak above the input, where
    hashing (``pc.unique``) then sorting took about 200."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, list):
        parts, array = array, pa.chunked_array(array, pa.string())
        parts.clear()
    array = array.cast(pa.string())
    if len(array) == 0:
        return pa.array([], pa.string())
    ordered = array.take(pc.sort_indices(array))
    del array
    if isinstance(ordered, pa.ChunkedArray):
        ordered = ordered.combine_chunks()
    new = pc.not_equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))
    if pc.all(new).as_py() is not False:
        return ordered
    return ordered.filter(pa.concat_arrays([pa.array([True]), new]))


def listed(spec: str, found: dict[str, dict] | None = None) -> list[str]:
    """The image URIs named by INPUT `spec`, unsorted, possibly repeated (see list_inputs), as Python
    strings (:func:`file_batches` gives them as Arrow). `found`: a detailed glob listing of `spec`
    already made (by format detection), so it is not listed twice."""
    return [u for batch in file_batches(spec, found) for u in batch.to_pylist()]


def file_batches(spec: str, found: dict[str, dict] | None = None, first=None) -> Iterator:
    """The image URIs named by INPUT `spec` (see the module docstring) as ``pyarrow.StringArray`` batches:
    unsorted, possibly repeated (a manifest may repeat lines), never empty. A folder or prefix is listed
    by :func:`~diffseg.inputs.listing.list_keys` (parallel, straight into Arrow, no directory cache): only
    the batch in flight is held. A manifest's or a glob's URIs come from their list, in batches.

    Raises InputError before the first batch is returned when INPUT is missing, cannot be listed or holds
    no images (the messages the fs.find listing gave), so a caller that takes the first batch knows at once;
    a failure later in a long listing raises InputError from the iterator. `found`: a glob listing
    already made. `first`: a ``(batches, complete)`` look already taken at the start of the same folder
    or prefix listing, without the extension filter (format detection): reused when complete."""
    batches = _counted(spec, _batches(spec, found, first))
    head = next(batches, None)
    if head is None:
        _raise_empty(spec)
    return itertools.chain([head], batches)


def _batches(spec: str, found, first) -> Iterator:
    import pyarrow as pa

    try:
        fs, path = exact_fs(spec)
    except (ImportError, ValueError) as exc:
        raise InputError(f"INPUT {redact(spec)!r}: no filesystem for it ({exc})") from exc
    try:
        invalidate(fs)
        if spec.lower().endswith(MANIFEST_SUFFIXES) and not has_magic(path):
            yield from _chunks(_list_manifest(fs, path, spec))
        elif has_magic(path):
            yield from _chunks(_list_glob(fs, path, found))
        else:
            kind = below_kind(fs, path, spec)
            if kind == "file":
                yield pa.array([full_uri(fs, path)], pa.string())
                return
            if first is not None and first[1]:  # the whole folder is in the look already taken (URI arrays)
                batches = (b.filter(pc_ends_with_any(b, image_extensions())) for b in first[0])
            else:
                batches = (b.column("uri") for b in list_keys(listing_uri(fs, path, kind), image_extensions()))
            yield from (b for b in batches if len(b))
    except InputError as exc:
        if getattr(exc, "missing", False):
            raise InputError(f"INPUT {redact(spec)!r} does not exist ({redact(exc)})") from exc
        raise
    except FileNotFoundError as exc:
        raise InputError(f"INPUT {redact(spec)!r} does not exist ({redact(exc)})") from exc
    except Exception as exc:  # permissions, network, bad bucket
        raise InputError(f"INPUT {redact(spec)!r} cannot be listed: {type(exc).__name__}: {redact(exc)}") from exc


def below_kind(fs, path: str, spec: str) -> str:
    """What `path` is on `fs`: ``"file"`` (one object), ``"folder"`` (a folder, or a key prefix ending a
    folder name: ``s3://b/images`` when ``images/`` holds keys) or ``"prefix"`` (a partial name such as
    ``s3://b/images/2024-``: the objects whose names start with it). One ``info`` call (on S3, a HEAD and
    at most one LIST of one key). FileNotFoundError when a folder spelled with a trailing ``/`` or a
    bucket does not exist."""
    try:
        kind = fs.info(path).get("type")
    except FileNotFoundError:
        kind = None
    if kind == "file" and not spec.endswith("/"):
        return "file"
    if kind == "directory":
        return "folder"
    if spec.endswith("/") or "/" not in path.strip("/"):
        raise FileNotFoundError(path)
    return "prefix"


def listing_uri(fs, path: str, kind: str) -> str:
    """The URI :func:`~diffseg.inputs.listing.list_keys` lists for `path` on `fs` (a folder with its
    trailing ``/``, so ``images`` never takes ``images-old/``)."""
    if is_local(fs):
        return path
    uri = fs.unstrip_protocol(path.rstrip("/"))
    return uri + "/" if kind == "folder" and not uri.endswith("/") else uri


def pc_ends_with_any(array, suffixes: tuple[str, ...]):
    """Mask of `array` (a string array of names) ending with one of `suffixes`, any case."""
    import pyarrow.compute as pc

    pattern = "(" + "|".join(re.escape(s) for s in suffixes) + ")$"
    return pc.match_substring_regex(array, pattern, ignore_case=True)


def _chunks(uris: list[str], rows: int = BATCH_ROWS) -> Iterator:
    import pyarrow as pa

    for i in range(0, len(uris), rows):
        yield pa.array(uris[i:i + rows], pa.string())


def _counted(spec: str, batches: Iterator) -> Iterator:
    """`batches` unchanged; once they end, warns about the escaped (not UTF-8) local names among them."""
    import pyarrow.compute as pc

    count, example = 0, None
    for batch in batches:
        yield batch
        marked = batch.filter(pc.match_substring(batch, "%"))
        bad = [u for u in marked.to_pylist() if u.startswith("file://") and is_escaped_name(u)]
        count, example = count + len(bad), example or (bad[0] if bad else None)
    if count:
        log.warning("INPUT %s: %d file name(s) are not valid UTF-8 and become 'list' error rows under their "
                    "escaped URIs (e.g. %s)", redact(spec), count, example)


def _raise_empty(spec: str) -> None:
    """InputError for INPUT `spec` that lists nothing: missing, or holding no images."""
    fs, path = exact_fs(spec)
    if spec.lower().endswith(MANIFEST_SUFFIXES) and not has_magic(path):
        raise InputError(f"INPUT {redact(spec)!r} lists no URI")
    if has_magic(path):
        raise InputError(f"INPUT {redact(spec)!r} matches no file")
    try:
        kind = below_kind(fs, path, spec)
    except FileNotFoundError:
        kind = None
    if kind is None or (kind == "prefix" and not (is_local(fs) and os.path.lexists(path))
                        and not _holds_anything(listing_uri(fs, path, "prefix"))):
        raise InputError(f"INPUT {redact(spec)!r} does not exist ({redact(path)})")
    raise InputError(f"INPUT {redact(spec)!r} holds no image files (extensions {', '.join(image_extensions())}, "
                     "any case)")


def _holds_anything(uri: str) -> bool:
    """True when something is listed under `uri` (one page or folder is enough)."""
    batches = list_keys(uri, concurrency=1, batch_rows=1)
    try:
        return next(batches, None) is not None
    except InputError:
        return False
    finally:
        batches.close()


def files_named(spec: str, fs, path: str, suffixes: tuple[str, ...], found: dict[str, dict] | None = None) -> list[str]:
    """Canonical URIs (unsorted) of the files INPUT `spec` (on `fs` at `path`) names whose names end with
    one of `suffixes` (any case): a container form's shards or table files. A glob: its matches
    (``fs.glob``; `found`: that listing already made), regular files only. One file: itself, when its
    name fits. A folder or prefix: listed by :func:`~diffseg.inputs.listing.list_keys` (parallel, no
    directory cache). FileNotFoundError when nothing is there."""
    if has_magic(path):
        found = fs.glob(path, detail=True) if found is None else found
        return [full_uri(fs, p) for p in regular_files(fs, {p: i for p, i in found.items() if p.lower().endswith(suffixes)})]
    kind = below_kind(fs, path, spec)
    if kind == "file":
        return [full_uri(fs, path)] if path.lower().endswith(suffixes) else []
    uri = listing_uri(fs, path, kind)
    try:
        uris = [u for b in list_keys(uri, suffixes) for u in b.column("uri").to_pylist()]
    except InputError as exc:
        if getattr(exc, "missing", False):
            raise FileNotFoundError(path) from exc
        raise
    if not uris and kind == "prefix" and not (is_local(fs) and os.path.lexists(path)) and not _holds_anything(uri):
        raise FileNotFoundError(path)
    return uris


def find_below(fs, path: str, spec: str) -> dict[str, dict] | None:
    """Every entry below folder or key prefix `path` ({path: info}, recursive, by ``fs.find``: slow and
    about 2.5 KB per key on S3; the listing before list_keys, kept as the reference the tests and
    ``jobs.bench.listing`` compare with), or None when `path` is one file. FileNotFoundError when there is nothing (a prefix that is not a folder, such as
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
