"""Reading bytes with limits and retries: whole loose files (:func:`read_uris`) and sequential streams of
a shard or table file (:func:`open_stream`).

Every read has a byte cap (:data:`READ_MAX_BYTES`, ``--max-read-bytes``) and a timeout
(:data:`READ_TIMEOUT_S`, ``--read-timeout``); passing either is a :class:`ReadLimitError` naming it.
Transient storage errors (throttling, resets, timeouts, a refused credential) are retried
(:data:`READ_ATTEMPTS` tries, :func:`backoff_s` apart); missing files are not. An error that outlasts the
retries becomes a retryable error row (diffseg.lake.faults), which the next invocation retries.
"""

from __future__ import annotations

import os
import random
import stat
import threading
import time
from dataclasses import dataclass

from diffseg.inputs.errors import NonUtf8NameError, NotRegularFileError, ReadLimitError
from diffseg.inputs.uri import exact_fs, is_escaped_name, is_local

READ_ATTEMPTS = 5  # tries per file for transient storage errors (not for missing files): ~7.5 s of backoff
READ_MAX_BYTES = 256 << 20  # default byte cap of one read: far above any real image file
READ_TIMEOUT_S = 120.0  # default time one file may take to read (retries included)
READ_THREADS = 16  # files read at once by one read_uris call
STREAM_BLOCK_BYTES = 32 << 20  # one ranged request of a shard or table file read front to back


@dataclass(frozen=True)
class ReadLimits:
    """The limits of reading one image: `max_bytes` of its encoded bytes (a loose file, a shard member, a
    table cell) and `timeout` seconds (a loose file: its whole read, retries included; a shard or table
    file: the wait for its next image)."""

    max_bytes: int = READ_MAX_BYTES  # --max-read-bytes
    timeout: float = READ_TIMEOUT_S  # --read-timeout


DEFAULT_LIMITS = ReadLimits()


def read_uris(uris: list[str], max_bytes: int = READ_MAX_BYTES,
              timeout: float = READ_TIMEOUT_S) -> dict[str, bytes | Exception]:
    """Bytes of every URI, or the exception that stopped its read (after retrying transient errors).

    Each URI is read as the exact object it names (:func:`exact_fs`), READ_THREADS at a time. A file
    larger than `max_bytes`, or still unread after `timeout` seconds, gives a :class:`ReadLimitError`
    naming the limit; a FIFO/device/socket a :class:`NotRegularFileError`; an escaped non-UTF-8 name a
    :class:`NonUtf8NameError`. Missing files are not retried; anything else is
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
                out[uri] = timed_out(uri, timeout)
    return out


def timed_out(uri: str, timeout: float) -> ReadLimitError:
    """The error of a read of `uri` still running after `timeout` seconds."""
    return ReadLimitError(f"reading {uri!r} took longer than the read timeout of {timeout:g} s (--read-timeout)")


def too_large(uri: str, max_bytes: int) -> ReadLimitError:
    """The error of an image of `uri` above the byte cap."""
    return ReadLimitError(f"{uri!r} is larger than the read cap of {max_bytes} bytes (--max-read-bytes): not read")


def transient(exc: BaseException) -> bool:
    """True when reading again may succeed (network, throttling, timeouts, an expired credential), False for
    a missing object, a path of the wrong kind, or bad content."""
    from diffseg.inputs.errors import CorruptContainerError, InputError, MemberError

    if isinstance(exc, (ReadLimitError, NotRegularFileError, NonUtf8NameError, MemberError, InputError,
                        CorruptContainerError)):
        return False
    # PermissionError is transient: an expired token is refreshed by the credential chain
    return not isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError))


def backoff_s(attempt: int) -> float:
    """Seconds to wait before retry `attempt` + 1 (0-based): exponential from 0.5 s to 8 s with jitter, as S3
    asks of a client it answers 503 SlowDown (0.5 + 1 + 2 + 4 s for READ_ATTEMPTS tries)."""
    return min(8.0, 0.5 * 2**attempt) * random.uniform(0.75, 1.25)


def open_stream(uri: str, block_size: int = STREAM_BLOCK_BYTES):
    """A binary file object reading the one object `uri` names front to back, `block_size` bytes per
    request (fsspec's read-ahead cache: one request stream, never one request per image). Opening is
    retried like a read; a missing object raises FileNotFoundError."""
    fs, path = exact_fs(uri)
    if is_local(fs):
        _check_local(uri, path, None)
        return open(path, "rb")
    for attempt in range(READ_ATTEMPTS):
        try:
            return fs.open(path, "rb", block_size=block_size, cache_type="readahead")
        except Exception as exc:
            if not transient(exc) or attempt + 1 == READ_ATTEMPTS:
                raise
            time.sleep(backoff_s(attempt))
    raise AssertionError("unreachable")


def _read_into(out: dict, uri: str, max_bytes: int) -> None:
    try:
        value: bytes | Exception = _read_one(uri, max_bytes)
    except Exception as exc:
        value = exc
    out.setdefault(uri, value)


def _read_one(uri: str, max_bytes: int) -> bytes:
    fs, path = exact_fs(uri)
    if is_local(fs):
        _check_local(uri, path, max_bytes)
    for attempt in range(READ_ATTEMPTS):
        try:
            data = fs.cat_file(path, start=0, end=max_bytes + 1)
            break
        except Exception as exc:
            if _empty_object(fs, path, exc):
                return b""  # S3 answers a ranged read of a zero-byte object with 416: it is empty, not unreadable
            if not transient(exc) or attempt + 1 == READ_ATTEMPTS:
                raise
            time.sleep(backoff_s(attempt))
    if len(data) > max_bytes:
        raise too_large(uri, max_bytes)
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


def _check_local(uri: str, path: str, max_bytes: int | None) -> None:
    """Refuses, before opening, what a local read must not open: escaped names, non-regular files, and
    files above the byte cap (``os.stat`` follows symlinks: a link to /dev/zero is a device)."""
    if not os.path.lexists(path) and is_escaped_name(uri):
        raise NonUtf8NameError(
            f"the file name of {uri!r} is not valid UTF-8, so it cannot be a key of the output tables; the URI "
            "shows its bytes escaped (%XX; see diffseg.inputs.unescape_name). Rename the file to process it"
        )
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(f"{uri!r} is not a regular file (a FIFO, device or socket): not read, as "
                                  "reading it could block forever or never end")
    if max_bytes is not None and st.st_size > max_bytes:
        raise too_large(uri, max_bytes)


def is_regular(path: str) -> bool:
    """True when local `path` is a regular file (following symlinks)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


class ResumingReader:
    """A read-only binary stream over the one object `uri` names, reopened at the position reached when a
    transient error breaks it (READ_ATTEMPTS tries per break): a shard's stream survives a dropped
    connection without reading its start again. ``position`` is the number of bytes read so far."""

    def __init__(self, uri: str, block_size: int = STREAM_BLOCK_BYTES):
        self.uri, self.block_size, self.position = uri, block_size, 0
        self._file = open_stream(uri, block_size)

    def read(self, n: int = -1) -> bytes:
        for attempt in range(READ_ATTEMPTS):
            try:
                data = self._file.read(n)
                self.position += len(data)
                return data
            except Exception as exc:
                if not transient(exc) or attempt + 1 == READ_ATTEMPTS:
                    raise
                time.sleep(backoff_s(attempt))
                self._reopen()
        raise AssertionError("unreachable")

    def _reopen(self) -> None:
        try:
            self._file.close()
        except Exception:
            pass
        self._file = open_stream(self.uri, self.block_size)
        self._file.seek(self.position)

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def with_timeout(items, timeout: float, on_timeout):
    """The elements of iterator `items`, produced by a daemon thread; when the next one takes longer than
    `timeout` seconds, yields ``on_timeout()`` and stops (the stuck thread is abandoned: it ends at its
    next element, and cannot keep the process from exiting). At most a few elements wait in between."""
    import queue

    box: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for element in items:
                while not stop.is_set():
                    try:
                        box.put((element, None), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put((done, None))
        except BaseException as exc:  # handed to the consumer: raised there
            box.put((done, exc))

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            try:
                element, exc = box.get(timeout=timeout)
            except queue.Empty:
                yield on_timeout()
                return
            if element is done:
                if exc is not None:
                    raise exc
                return
            yield element
    finally:
        stop.set()
