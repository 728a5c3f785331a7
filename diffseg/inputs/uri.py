"""One object per URI: fsspec filesystems without URL chaining, canonical URIs, escaped names.

The leaf of :mod:`diffseg.inputs` (it imports nothing else of diffseg at import time), so anything that
opens a user's URI (``codecs.images.read_bytes``, ``checkpoint``, ``vocabulary``) can use it without
importing the readers.
"""

from __future__ import annotations

import os
import urllib.parse

import fsspec
from fsspec.core import split_protocol


def has_magic(path: str) -> bool:
    """True when `path` holds glob characters (``*``, ``?``, ``[``)."""
    return any(c in path for c in "*?[")


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


def is_escaped_name(uri: str) -> bool:
    """True when `uri` can only be an escape_name result: its %XX bytes are not UTF-8."""
    if "%" not in uri:
        return False
    try:
        unescape_name(uri).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def is_local(fs) -> bool:
    """True when `fs` is the local filesystem."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The canonical URI (with scheme) of `path` on `fs`: ``file:///abs/x.jpg``, ``s3://bucket/x.jpg``
    (a name that is not UTF-8 escaped by escape_name)."""
    if is_local(fs):
        return "file://" + escape_name(os.path.abspath(path))
    return fs.unstrip_protocol(path)


def redact(value) -> str:
    """`value` as text with credentials removed (diffseg.redact.redact_text)."""
    from diffseg.redact import redact_text

    return redact_text(str(value))


def invalidate(fs) -> None:
    """Drops fsspec's cached listings, so a listing in a long-lived process sees new files."""
    try:
        fs.invalidate_cache()
    except Exception:
        pass
