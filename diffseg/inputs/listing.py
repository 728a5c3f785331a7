"""Listing the keys under a prefix straight into Arrow: in parallel, in bounded memory, no directory cache.

:func:`list_keys` yields ``pyarrow.RecordBatch`` es of :data:`LISTING_SCHEMA` (``uri`` string: the full URI
with its scheme, ``s3://bucket/key``, ``file:///abs/path``; ``size`` int64: bytes) for every object under
a prefix: ``s3://`` (and ``s3a://``), local folders (a path or ``file://``), and anything else fsspec
opens. The prefix may be partial: ``s3://b/images/2024-`` lists only the keys that start with
``images/2024-``, never the whole of ``images/``. Keys ending in ``/`` (folder markers) are never listed;
``extensions`` keeps only names ending with one of them (case-insensitive), applied page by page.

**Order**: none. Batches come as pages complete, so the order changes from run to run and with
``concurrency``; the *set* of rows never does (tested). Sort or hash the result where order matters
(planning does).

**S3** (:mod:`diffseg.inputs.s3_listing`): ListObjectsV2 pages are requested through a private s3fs filesystem (so the endpoint,
credentials, region, retries and ``storage_options`` resolve exactly as s3fs resolves them, e.g.
``AWS_ENDPOINT_URL``), by its aiobotocore client on s3fs's event loop, up to ``concurrency`` requests at
once, never through s3fs's listing methods: its directory cache would keep about 1.2 KB per key. The
response parser of that private client reads only ``Key``, ``Size`` and ``CommonPrefixes`` from a page's
XML (botocore's generic parser spends about 85 % of its time turning every ``LastModified`` into a
datetime that a listing never uses); any page it does not recognise goes to botocore's own parser.
Parallelism comes from two splits:

- by the delimiter: the prefix is listed with ``Delimiter='/'``; every sub-folder (CommonPrefix) becomes
  a task of its own. Sub-folders found while enough tasks are already queued are listed without the
  delimiter (one flat chain instead of one request per small folder);
- by key ranges: a task whose page is truncated while workers are idle splits the rest of its range
  ``(last key, end]`` at the first character position where boundaries fit, using the characters seen in
  its page (hash-like names: the hex digits), and lists each sub-range with ``StartAfter`` (a range owns
  ``(start, end]``, so nothing is listed twice or skipped). With the delimiter, boundaries never contain
  it past the prefix, so a sub-folder always falls in exactly one range.

Memory: at most ``2 * concurrency`` pages wait for the consumer, and one batch of ``batch_rows`` Python
strings is held while it is converted; everything else is the Arrow arrays the caller keeps.

**Local folders**: ``os.scandir`` over the tree, folders listed by a pool of threads; regular files and
symlinks to them (a symlinked folder is not followed: no cycles); names that are not UTF-8 are escaped
as ``escape_name`` (diffseg.inputs.uri) does. **Other fsspec filesystems**: ``fs.ls(detail=True)``
per folder from a pool of threads, the filesystem's listing cache dropped after each call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import pyarrow as pa
import pyarrow.compute as pc

from diffseg.inputs.errors import InputError
from diffseg.inputs.uri import escape_name, exact_fs

LISTING_SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64())])
CONCURRENCY = 32  # LIST requests in flight at once (S3 serves thousands per second per prefix)
BATCH_ROWS = 1 << 16  # rows per yielded batch: bounds the Python strings held while converting
LOCAL_THREADS = 8  # folders listed at once on a local or fsspec filesystem

log = logging.getLogger("diffseg.inputs.listing")


class ListingError(InputError):
    """The prefix cannot be listed (missing bucket or folder, no permission, no filesystem); `missing`:
    True when the bucket or folder does not exist (not a permission or network failure)."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def list_keys(uri: str, extensions: Iterable[str] | None = None, *, concurrency: int = CONCURRENCY,
              batch_rows: int = BATCH_ROWS, storage_options: dict | None = None) -> Iterator[pa.RecordBatch]:
    """Batches of (``uri`` string, ``size`` int64) for every object under `uri` (a folder or a partial
    prefix), in no particular order (see the module docstring); nothing under it gives no batch.

    `extensions`: e.g. ``(".jpg", ".png")``, compared case-insensitively with the end of each name
    (None: every object). `concurrency`: requests (S3) or folders (local, fsspec) in flight at once; the
    set of rows does not depend on it. Raises :class:`ListingError` naming `uri` and the fix when the
    bucket or folder does not exist or cannot be read. A blocking iterator: iterate it from a thread
    (S3 pages are fetched on fsspec's event loop; closing the iterator early cancels them).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency!r}: list with at least 1 request at a time")
    if batch_rows < 1:
        raise ValueError(f"batch_rows={batch_rows!r}: batches need at least 1 row")
    exts = tuple(e.lower() for e in extensions) if extensions is not None else None
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if protocol in ("s3", "s3a"):
        from diffseg.inputs.s3_listing import S3Walk

        pages = S3Walk(uri, exts, concurrency, storage_options or {}).pages()
    elif protocol in ("file", "local"):
        pages = _list_local(uri, exts, concurrency)
    else:
        pages = _list_fsspec(uri, exts, concurrency, storage_options or {})
    yield from _batches(pages, batch_rows)


def peek_keys(uri: str, keys: int, storage_options: dict | None = None) -> tuple[pa.StringArray, bool]:
    """The URIs of the first `keys` objects under `uri` (as :func:`list_keys` names them, every extension)
    and whether that is all of them: a bounded look, the same keys every time for an unchanged lake. S3:
    one flat ListObjectsV2 chain in key order (at most ceil(keys / 1000) requests, however small the
    folders); a local folder or other fsspec filesystem: :func:`list_keys` one folder at a time, stopped
    once it has `keys`. Raises ListingError (or the client's error) when `uri` cannot be listed."""
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if protocol in ("s3", "s3a"):
        from diffseg.inputs.s3_listing import first_keys

        names, _, complete = first_keys(uri, keys, storage_options)
        return pa.array(names, pa.string()), complete
    batches = list_keys(uri, concurrency=1, batch_rows=keys, storage_options=storage_options)
    look, seen, complete = [], 0, False
    try:
        for batch in batches:
            look.append(batch.column("uri"))
            seen += batch.num_rows
            if seen >= keys:
                break
        else:
            complete = True
    finally:
        batches.close()
    return pa.concat_arrays(look).cast(pa.string()) if look else pa.array([], pa.string()), complete


def _batches(pages: Iterator[tuple[str, list[str], list[int]]], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Pages of (URI prefix, names, sizes), one URI prefix per listing, regrouped into batches of
    `batch_rows` rows (the last one shorter); the URIs are joined in Arrow, never as Python strings."""
    names: list[str] = []
    sizes: list[int] = []
    base = ""
    for base, page_names, page_sizes in pages:
        names.extend(page_names)
        sizes.extend(page_sizes)
        while len(names) >= batch_rows:
            yield _batch(base, names[:batch_rows], sizes[:batch_rows])
            del names[:batch_rows], sizes[:batch_rows]
    if names:
        yield _batch(base, names, sizes)


def _batch(base: str, names: list[str], sizes: list[int]) -> pa.RecordBatch:
    uris = pc.binary_join_element_wise(base, pa.array(names, pa.string()), "")
    return pa.RecordBatch.from_arrays([uris, pa.array(sizes, pa.int64())], schema=LISTING_SCHEMA)


def _keep(name: str, exts: tuple[str, ...] | None) -> bool:
    return not name.endswith("/") and (exts is None or name.lower().endswith(exts))


# --- local folders and other fsspec filesystems -----------------------------------------------------

def _walk_parallel(roots: list[str], list_dir, threads: int):
    """(files, folders) of `list_dir` over the tree below `roots`, folders listed by a pool of threads
    (at most `threads` at once); yields each folder's files as its listing completes."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="diffseg-list") as pool:
        running = {pool.submit(list_dir, r) for r in roots}
        waiting: list[str] = []
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                files, folders = fut.result()
                waiting.extend(folders)
                if files:
                    yield files
            while waiting and len(running) < 2 * threads:
                running.add(pool.submit(list_dir, waiting.pop()))


def _list_local(uri: str, exts: tuple[str, ...] | None, concurrency: int):
    path = uri.split("://", 1)[1] if "://" in uri else uri
    path = os.path.abspath(os.path.expanduser(path)) + ("/" if path.endswith("/") else "")
    if os.path.isfile(path):
        if _keep(path, exts):
            yield "file://", [escape_name(path)], [os.stat(path).st_size]
        return
    if os.path.isdir(path):
        root, start = path.rstrip("/") or "/", ""
    else:
        root, start = os.path.split(path)
        if path.endswith("/") or not os.path.isdir(root):
            raise ListingError(f"INPUT {uri!r}: no such folder {path.rstrip('/')!r}. Check the path (a partial "
                               "name such as /data/images/2024- needs its folder /data/images to exist)", missing=True)
    skipped = [0]

    def list_dir(folder: str, first: bool = False):
        names, sizes, folders = [], [], []
        try:
            entries = list(os.scandir(folder))
        except PermissionError as exc:
            raise ListingError(f"INPUT {uri!r}: folder {folder!r} cannot be read ({exc}); give this user read "
                               "and execute permission on it") from exc
        for entry in entries:
            if first and not entry.name.startswith(start):
                continue
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.path)
                continue
            try:
                st = entry.stat()  # follows a symlink: a link to a regular file is listed
            except OSError:
                skipped[0] += 1
                continue
            if not _keep(entry.name, exts):
                continue
            if not entry.is_file():
                skipped[0] += 1
            else:
                names.append(escape_name(entry.path))
                sizes.append(st.st_size)
        return (names, sizes), folders

    threads = max(1, min(concurrency, LOCAL_THREADS))
    (names, sizes), folders = list_dir(root, first=True)
    if names:
        yield "file://", names, sizes
    for names, sizes in _walk_parallel(folders, list_dir, threads):
        yield "file://", names, sizes
    if skipped[0]:
        log.warning("INPUT %s: %d entr(ies) that are not regular files (FIFOs, devices, sockets, broken or folder links) "
                    "were skipped", uri, skipped[0])


def _list_fsspec(uri: str, exts: tuple[str, ...] | None, concurrency: int, storage_options: dict):
    try:
        fs, path = exact_fs(uri, **storage_options)
    except (ImportError, ValueError) as exc:
        raise ListingError(f"INPUT {uri!r}: no filesystem for it ({exc}); install the fsspec package of that "
                           "scheme") from exc
    base = ""  # names are whole URIs: the filesystem's own spelling of its protocol (gcs:// lists as gs://)

    def list_dir(folder: str, start: str = ""):
        try:
            entries = fs.ls(folder, detail=True)
        finally:
            try:
                fs.invalidate_cache(folder)
            except Exception:
                pass
        names, sizes, folders = [], [], []
        for info in entries:
            name = info["name"].rstrip("/")
            if start and not name.rsplit("/", 1)[-1].startswith(start):
                continue
            if info.get("type") == "directory":
                folders.append(name)
            elif info.get("type") == "file" and _keep(name, exts):
                names.append(fs.unstrip_protocol(name))
                sizes.append(int(info.get("size") or 0))
        return (names, sizes), folders

    try:
        if fs.isdir(path):
            roots, start = [path], ""
        else:
            parent, _, start = path.rstrip("/").rpartition("/")
            if path.endswith("/") or not parent or not fs.isdir(parent):
                raise FileNotFoundError(path)
            (names, sizes), roots = list_dir(parent, start)
            if names:
                yield base, names, sizes
        for names, sizes in _walk_parallel(roots, list_dir, max(1, min(concurrency, LOCAL_THREADS))):
            yield base, names, sizes
    except FileNotFoundError as exc:
        from diffseg.redact import redact_text

        raise ListingError(f"INPUT {redact_text(uri)!r}: no such folder or prefix ({redact_text(exc, [uri])}); "
                           "check the path", missing=True) from exc
