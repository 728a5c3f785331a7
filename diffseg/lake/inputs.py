"""Listing INPUT into full image URIs, and reading their bytes (the job's ``list`` and ``read`` stages).

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

Anything fsspec opens works: local paths, ``file://``, ``s3://`` (S3-compatible stores through the
standard ``AWS_ENDPOINT_URL`` and AWS credential chain), ``gs://`` (needs gcsfs). URIs are returned
sorted, de-duplicated and *with their scheme* (``file:///abs/a.jpg``, ``s3://bucket/a.jpg``): they are
the keys of the output tables, the done set and the per-image noise seed, so the same file always gets
the same URI however INPUT was spelled.

Hostile names and files (issue 14):

- Every URI names one exact object: ``::`` is part of a name, never fsspec's URL chaining
  (:func:`exact_fs`); ``colon::x.png`` is the file of that name.
- FIFOs, devices and sockets (also through symlinks) are skipped when a folder or glob is listed, with
  a warning: reading them could block forever or never end. A manifest naming one gets a ``read``
  error row (:class:`NotRegularFileError`).
- A local file name that is not valid UTF-8 cannot be a key of the output tables. It is listed under a
  reversible escape (:func:`escape_name`: each byte that is not UTF-8 becomes ``%XX`` and ``%`` becomes
  ``%25``; :func:`unescape_name` gives the bytes back), and reading that URI gives a
  :class:`NonUtf8NameError` whose ``stage`` is ``"list"``: one error row, and the rest of the lake runs.
- Every read has a byte cap (:data:`READ_MAX_BYTES`, ``--max-read-bytes``) and a timeout
  (:data:`READ_TIMEOUT_S`, ``--read-timeout``); passing either is a :class:`ReadLimitError` naming it.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import threading
import time
import urllib.parse

import fsspec
from fsspec.core import split_protocol

MANIFEST_SUFFIXES = (".txt", ".parquet")
READ_ATTEMPTS = 3  # tries per file for transient storage errors (not for missing files or permissions)
READ_MAX_BYTES = 256 << 20  # default byte cap of one read: far above any real image file
READ_TIMEOUT_S = 120.0  # default time one file may take to read (retries included)
READ_THREADS = 16  # files read at once by one read_uris call

log = logging.getLogger("diffseg.lake.inputs")


def has_magic(path: str) -> bool:
    """True when `path` holds glob characters (``*``, ``?``, ``[``)."""
    return any(c in path for c in "*?[")


class InputError(ValueError):
    """INPUT cannot be listed, does not exist, or holds no images."""


class ReadLimitError(OSError):
    """A read passed the byte cap or the timeout (the message names the limit and its option)."""

    stage = "read"


class NotRegularFileError(OSError):
    """The URI names a FIFO, a device or a socket: reading it could block forever or never end."""

    stage = "read"


class NonUtf8NameError(OSError):
    """The file's name is not valid UTF-8; its URI is the escaped name (see escape_name)."""

    stage = "list"


def image_extensions() -> tuple[str, ...]:
    """Lower-case image file extensions listed from folders (the library's list)."""
    from diffseg.codecs.images import IMAGE_EXTENSIONS

    return tuple(IMAGE_EXTENSIONS)


def exact_fs(uri: str, **storage_options) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of `uri` as ONE object: unlike ``fsspec.core.url_to_fs`` a ``::`` in it is
    part of the name, never a chain of URLs (``colon::x.png`` is not ``x.png`` inside ``colon``)."""
    protocol = split_protocol(uri)[0] or "file"
    cls = fsspec.get_filesystem_class(protocol)
    options = {**cls._get_kwargs_from_urls(uri), **storage_options}
    return cls(**options), cls._strip_protocol(uri)


def open_exact(uri: str, mode: str = "rb", **storage_options):
    """``fsspec.open`` of the one object `uri` names (see exact_fs): a file-like context manager."""
    fs, path = exact_fs(uri, **storage_options)
    return fs.open(path, mode)


def escape_name(path: str) -> str:
    """`path` unchanged when it is valid UTF-8; else each undecodable byte (a surrogate escape, as
    ``os.fsdecode`` gives it) as ``%XX`` and every ``%`` as ``%25`` (reversed by unescape_name)."""
    if path.isascii():  # the common case, without a scan per character
        return path
    if not any("\udc80" <= ch <= "\udcff" for ch in path):
        return path
    return "".join(
        f"%{ord(ch) - 0xDC00:02X}" if "\udc80" <= ch <= "\udcff" else ("%25" if ch == "%" else ch) for ch in path
    )


def unescape_name(escaped: str) -> bytes:
    """The file name's bytes from an :func:`escape_name` result (``os.fsdecode`` makes it a path again)."""
    return urllib.parse.unquote_to_bytes(escaped)


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The canonical URI (with scheme) of `path` on `fs`: ``file:///abs/x.jpg``, ``s3://bucket/x.jpg``
    (a name that is not UTF-8 escaped by escape_name)."""
    if _is_local(fs):
        return "file://" + escape_name(os.path.abspath(path))
    return fs.unstrip_protocol(path)


def list_inputs(spec: str) -> list[str]:
    """Sorted unique image URIs named by INPUT `spec` (see the module docstring). Raises InputError.

    Names that are not UTF-8 are listed escaped (they become ``list`` error rows when read); FIFOs,
    devices and sockets under a folder or glob are left out with a warning."""
    return sorted(set(_listed(spec)))


def list_inputs_array(spec: str):
    """:func:`list_inputs` as a ``pyarrow.StringArray`` (same URIs, same order): what planning holds at
    lake scale, about a third of the memory of a Python list of ten million URIs. The listing's Python
    strings are dropped before the array is sorted (UTF-8 byte order is code point order, so the order
    is Python's)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(_listed(spec), pa.string())
    array = pc.unique(array)
    return array.take(pc.sort_indices(array))


def _listed(spec: str) -> list[str]:
    """The image URIs named by INPUT `spec`, unsorted, possibly repeated (see list_inputs)."""
    try:
        fs, path = exact_fs(spec)
    except (ImportError, ValueError) as exc:
        raise InputError(f"INPUT {_redact(spec)!r}: no filesystem for it ({exc})") from exc
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
        raise InputError(f"INPUT {_redact(spec)!r} does not exist ({_redact(exc)})") from exc
    except Exception as exc:  # permissions, network, bad bucket
        raise InputError(f"INPUT {_redact(spec)!r} cannot be listed: {type(exc).__name__}: {_redact(exc)}") from exc
    if not uris:
        what = "matches no file" if has_magic(path) else (
            "lists no URI" if spec.lower().endswith(MANIFEST_SUFFIXES) else
            f"holds no image files (extensions {', '.join(image_extensions())}, any case)"
        )
        raise InputError(f"INPUT {_redact(spec)!r} {what}")
    bad = [u for u in uris if u.startswith("file://") and _is_escaped_name(u)]
    if bad:
        log.warning("INPUT %s: %d file name(s) are not valid UTF-8 and become 'list' error rows under their "
                    "escaped URIs (e.g. %s)", _redact(spec), len(bad), bad[0])
    return uris


def _regular_files(fs, found: dict[str, dict]) -> list[str]:
    """Paths of `found` (a detailed listing on `fs`) that are regular files, local symlinks to one
    included; warns about the FIFOs, devices and sockets it leaves out."""
    files, other = [], []
    for p, info in found.items():
        if info.get("type") == "file" or (info.get("type") == "other" and _is_local(fs) and _is_regular(p)):
            files.append(p)
        elif info.get("type") != "directory":
            other.append(p)
    other.sort()
    if other:
        log.warning("INPUT: %d entr(ies) that are not regular files (FIFOs, devices, sockets) are skipped, "
                    "e.g. %s", len(other), escape_name(other[0]))
    return files


def _list_folder(fs, path: str, spec: str) -> list[str]:
    exts = image_extensions()
    if fs.isfile(path):
        return [full_uri(fs, path)]
    if not fs.isdir(path):
        # An object-store key prefix that is not a "folder" (s3://bucket/images/2024-): list its parent.
        parent = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else path
        if spec.endswith("/") or parent == path or not fs.exists(parent):
            raise FileNotFoundError(path)
        found = {p: info for p, info in fs.find(parent, detail=True).items() if p.startswith(path)}
        if not found:
            raise FileNotFoundError(path)
    else:
        found = fs.find(path, detail=True)
    images = {p: info for p, info in found.items() if p.lower().endswith(exts)}
    return [full_uri(fs, p) for p in _regular_files(fs, images)]


def _list_glob(fs, path: str) -> list[str]:
    return [full_uri(fs, p) for p in _regular_files(fs, fs.glob(path, detail=True))]


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
                    f"INPUT manifest {_redact(spec)!r} needs a 'uri' (or 'path') string column; it has "
                    f"{', '.join(table.column_names) or 'no columns'}"
                )
            names = strings
        entries = [e for e in table.column(names[0]).to_pylist() if e]
    else:
        with fs.open(path, "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
        lines = (line.strip() for line in text.splitlines())
        entries = [line for line in lines if line and not line.startswith("#")]
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    return [_resolve_entry(fs, base, entry) for entry in entries]


def _resolve_entry(fs, base: str, entry: str) -> str:
    """A manifest line as a canonical URI (relative paths are relative to the manifest's folder)."""
    if "://" in entry:
        efs, epath = exact_fs(entry)
        return full_uri(efs, epath)
    if _is_local(fs):
        return full_uri(fs, entry if os.path.isabs(entry) else os.path.join(base, entry))
    return full_uri(fs, entry.lstrip("/") if entry.startswith("/") else f"{base}/{entry}")


def read_uris(uris: list[str], max_bytes: int = READ_MAX_BYTES,
              timeout: float = READ_TIMEOUT_S) -> dict[str, bytes | Exception]:
    """Bytes of every URI, or the exception that stopped its read (after retrying transient errors).

    Each URI is read as the exact object it names (:func:`exact_fs`), READ_THREADS at a time. A file
    larger than `max_bytes`, or still unread after `timeout` seconds, gives a :class:`ReadLimitError`
    naming the limit; a FIFO/device/socket a :class:`NotRegularFileError`; an escaped non-UTF-8 name a
    :class:`NonUtf8NameError`. Missing files and permission errors are not retried; anything else is
    tried READ_ATTEMPTS times with a short backoff.
    """
    out: dict[str, bytes | Exception] = {}
    for start in range(0, len(uris), READ_THREADS):
        chunk = uris[start : start + READ_THREADS]
        # daemon threads: a read stuck in the storage client cannot keep the process from exiting
        threads = [threading.Thread(target=_read_into, args=(out, uri, max_bytes), daemon=True) for uri in chunk]
        deadline = time.monotonic() + timeout
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for uri in chunk:
            if uri not in out:
                out[uri] = ReadLimitError(f"reading {uri!r} took longer than the read timeout of {timeout:g} s "
                                          "(--read-timeout)")
    return out


def _read_into(out: dict, uri: str, max_bytes: int) -> None:
    try:
        value: bytes | Exception = _read_one(uri, max_bytes)
    except Exception as exc:
        value = exc
    out.setdefault(uri, value)


def _read_one(uri: str, max_bytes: int) -> bytes:
    fs, path = exact_fs(uri)
    if _is_local(fs):
        _check_local(uri, path, max_bytes)
    for attempt in range(READ_ATTEMPTS):
        try:
            data = fs.cat_file(path, start=0, end=max_bytes + 1)
            break
        except Exception as exc:
            if _empty_object(fs, path, exc):
                return b""  # S3 answers a ranged read of a zero-byte object with 416: it is empty, not unreadable
            if not _transient(exc) or attempt + 1 == READ_ATTEMPTS:
                raise
            time.sleep(0.2 * 2**attempt)
    if len(data) > max_bytes:
        raise _too_large(uri, max_bytes)
    return data


def _empty_object(fs, path: str, exc: Exception) -> bool:
    """True when `exc` is an object store refusing a byte range because the object at `path` is empty."""
    text = str(exc).lower()
    if "range" not in text or "satisfiable" not in text and "invalidrange" not in text:
        return False
    try:
        return fs.size(path) == 0
    except Exception:
        return False


def _check_local(uri: str, path: str, max_bytes: int) -> None:
    """Refuses, before opening, what a local read must not open: escaped names, non-regular files, and
    files above the byte cap (``os.stat`` follows symlinks: a link to /dev/zero is a device)."""
    if not os.path.lexists(path) and _is_escaped_name(uri):
        raise NonUtf8NameError(
            f"the file name of {uri!r} is not valid UTF-8, so it cannot be a key of the output tables; the URI "
            "shows its bytes escaped (%XX; see diffseg.lake.inputs.unescape_name). Rename the file to process it"
        )
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(f"{uri!r} is not a regular file (a FIFO, device or socket): not read, as "
                                  "reading it could block forever or never end")
    if st.st_size > max_bytes:
        raise _too_large(uri, max_bytes)


def _is_regular(path: str) -> bool:
    """True when local `path` is a regular file (following symlinks)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _too_large(uri: str, max_bytes: int) -> ReadLimitError:
    return ReadLimitError(f"{uri!r} is larger than the read cap of {max_bytes} bytes (--max-read-bytes): not read")


def _is_escaped_name(uri: str) -> bool:
    """True when `uri` can only be an escape_name result: its %XX bytes are not UTF-8."""
    if "%" not in uri:
        return False
    try:
        unescape_name(uri).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _transient(exc: Exception) -> bool:
    return not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError))


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _redact(value) -> str:
    from diffseg.redact import redact_text

    return redact_text(str(value))


def _invalidate(fs, path: str) -> None:
    """Drops fsspec's cached listings, so a listing in a long-lived process sees new files."""
    try:
        fs.invalidate_cache()
    except Exception:
        pass
