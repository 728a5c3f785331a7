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

**S3** (the strategy): ListObjectsV2 pages are requested through a private s3fs filesystem (so the endpoint,
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
as :func:`diffseg.lake.inputs.escape_name` does. **Other fsspec filesystems**: ``fs.ls(detail=True)``
per folder from a pool of threads, the filesystem's listing cache dropped after each call.
"""

from __future__ import annotations

import asyncio
import bisect
import html
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from diffseg.lake.inputs import InputError, escape_name

LISTING_SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64())])
CONCURRENCY = 32  # LIST requests in flight at once (S3 serves thousands per second per prefix)
BATCH_ROWS = 1 << 16  # rows per yielded batch: bounds the Python strings held while converting
PAGE_KEYS = 1000  # keys per ListObjectsV2 page (S3's maximum)
LOCAL_THREADS = 8  # folders listed at once on a local or fsspec filesystem

log = logging.getLogger("diffseg.inputs.listing")


class ListingError(InputError):
    """The prefix cannot be listed (missing bucket or folder, no permission, no filesystem)."""


def list_keys(uri: str, extensions: Iterable[str] | None = None, *, concurrency: int = CONCURRENCY,
              batch_rows: int = BATCH_ROWS, storage_options: dict | None = None) -> Iterator[pa.RecordBatch]:
    """Batches of (``uri`` string, ``size`` int64) for every object under `uri` (a folder or a partial
    prefix), in no particular order (see the module docstring); nothing under it gives no batch.

    `extensions`: e.g. ``(".jpg", ".png")``, compared case-insensitively with the end of each name
    (None: every object). `concurrency`: requests (S3) or folders (local, fsspec) in flight at once; the
    set of rows does not depend on it. Raises :class:`ListingError` naming `uri` and the fix when the
    bucket or folder does not exist or cannot be read.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency!r}: list with at least 1 request at a time")
    if batch_rows < 1:
        raise ValueError(f"batch_rows={batch_rows!r}: batches need at least 1 row")
    exts = tuple(e.lower() for e in extensions) if extensions is not None else None
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if protocol in ("s3", "s3a"):
        pages = _S3Walk(uri, exts, concurrency, storage_options or {}).pages()
    elif protocol in ("file", "local"):
        pages = _list_local(uri, exts, concurrency)
    else:
        pages = _list_fsspec(uri, exts, concurrency, storage_options or {})
    yield from _batches(pages, batch_rows)


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


# --- S3 ---------------------------------------------------------------------------------------------

_KEY = re.compile(rb"<Key>([^<]*)</Key>")
_SIZE = re.compile(rb"<Size>(\d+)</Size>")
_PREFIX = re.compile(rb"<CommonPrefixes>\s*<Prefix>([^<]*)</Prefix>\s*</CommonPrefixes>")
_TRUNCATED = re.compile(rb"<IsTruncated>(true|false)</IsTruncated>")
_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")
_ENCODING = re.compile(rb"<EncodingType>([^<]*)</EncodingType>")


def parse_list_page(body: bytes) -> dict | None:
    """The keys, sizes, sub-folders and continuation of one ListObjectsV2 response `body` (XML bytes):
    ``{"keys": [str], "sizes": [int], "prefixes": [str], "truncated": bool, "token": str | None}``, or
    None when the body is not a whole ListBucketResult this reader understands (botocore's parser then
    takes it). Each ``<Contents>`` must hold one ``<Key>`` and one ``<Size>``, in document order."""
    if not _complete(body):
        return None
    truncated = _TRUNCATED.search(body)
    keys, sizes = _KEY.findall(body), _SIZE.findall(body)
    if truncated is None or not len(keys) == len(sizes) == body.count(b"<Contents>"):
        return None
    encoding = _ENCODING.search(body)
    decode = _url_decoder if encoding is not None and encoding.group(1) == b"url" else _xml_decoder
    token = _TOKEN.search(body)
    return {
        "keys": [decode(k) for k in keys],
        "sizes": [int(s) for s in sizes],
        "prefixes": [decode(p) for p in _PREFIX.findall(body)],
        "truncated": truncated.group(1) == b"true",
        "token": html.unescape(token.group(1).decode()) if token else None,
    }


def _complete(body: bytes) -> bool:
    """True when `body` is one whole ListBucketResult document (not an error, not cut short)."""
    return b"<ListBucketResult" in body[:512] and body.rstrip().endswith(b"</ListBucketResult>")


def _xml_decoder(raw: bytes) -> str:
    text = raw.decode("utf-8")
    return html.unescape(text) if "&" in text else text


def _url_decoder(raw: bytes) -> str:
    text = _xml_decoder(raw)
    return urllib.parse.unquote_plus(text) if "%" in text or "+" in text else text


def _fast_parser_factory():
    """An aiobotocore response-parser factory whose rest-xml parser reads ListObjectsV2 pages with
    :func:`parse_list_page` (the page lands under ``"DiffsegPage"``; no ``EncodingType`` is returned, so
    botocore's after-call decoding leaves it alone) and every other response as botocore does."""
    from aiobotocore.parsers import PROTOCOL_PARSERS, AioResponseParserFactory

    base = PROTOCOL_PARSERS["rest-xml"]

    class FastListParser(base):
        def _do_parse(self, response, shape):
            if shape is not None and shape.name == "ListObjectsV2Output" and response["status_code"] == 200:
                page = parse_list_page(response["body"])
                if page is not None:
                    return {"DiffsegPage": page}
            return super()._do_parse(response, shape)

    class Factory(AioResponseParserFactory):
        def create_parser(self, protocol_name):
            if protocol_name == "rest-xml":
                return FastListParser(**self._defaults)
            return super().create_parser(protocol_name)

    return Factory()


def private_s3fs(storage_options: dict):
    """A new s3fs filesystem (not s3fs's shared instance) whose client parses listings with
    :func:`parse_list_page`; everything else (endpoint, credentials, retries) is s3fs's own."""
    import s3fs
    from aiobotocore.session import AioSession

    options = dict(storage_options)
    session_kwargs = {k: options.pop(k) for k in ("profile",) if k in options}
    session = AioSession(**session_kwargs)
    session.register_component("response_parser_factory", _fast_parser_factory())
    _cheap_200_check(session)
    # A fixed User-Agent: botocore otherwise rebuilds it (OS, features, config) at every request, about
    # 3 ms of CPU per page; a user's own config_kwargs user_agent is kept.
    config = dict(options.pop("config_kwargs", None) or {})
    config.setdefault("user_agent", f"diffseg-listing aiobotocore/{_version('aiobotocore')} "
                                    f"botocore/{_version('botocore')} s3fs/{s3fs.__version__}")
    return s3fs.S3FileSystem(session=session, skip_instance_cache=True, config_kwargs=config, **options)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _cheap_200_check(session) -> None:
    """Replaces botocore's check that a 200 answer is no S3 error in disguise (it builds an XML tree of
    every body: as costly as parsing the page) by one that passes a whole ListBucketResult at once
    (see _complete) and hands every other body to botocore's check (errors and cut bodies are retried)."""
    from botocore.handlers import _handle_200_error

    def check(operation_model, response_dict, **kwargs):
        if (response_dict and response_dict.get("status_code") == 200 and operation_model.name == "ListObjectsV2"
                and _complete(response_dict.get("body") or b"")):
            return
        _handle_200_error(operation_model, response_dict, **kwargs)

    events = session.get_component("event_emitter")
    events.unregister("before-parse.s3.*", _handle_200_error)
    events.register_first("before-parse.s3.*", check)


def _page_of(response: dict) -> dict:
    """A ListObjectsV2 response as :func:`parse_list_page` returns it (botocore's parse too)."""
    if "DiffsegPage" in response:
        return response["DiffsegPage"]
    contents = response.get("Contents", [])
    return {
        "keys": [c["Key"] for c in contents],
        "sizes": [int(c.get("Size", 0)) for c in contents],
        "prefixes": [p["Prefix"] for p in response.get("CommonPrefixes", [])],
        "truncated": bool(response.get("IsTruncated")),
        "token": response.get("NextContinuationToken"),
    }


@dataclass
class _Range:
    """Keys under `prefix` in ``(start, end]`` (None: unbounded), with or without the delimiter."""

    prefix: str
    start: str | None = None
    end: str | None = None
    delimiter: bool = True


def split_range(prefix: str, last: str, end: str | None, alphabet: str, parts: int,
                delimiter: str | None) -> list[str]:
    """At most `parts` sorted boundaries b with ``last < b < end`` (`end` None: no bound), each `last`'s
    first characters plus one character of `alphabet`, at the first position where any fit; with a
    `delimiter`, no boundary holds it after `prefix`. Empty when none fits."""
    if parts < 1 or not alphabet:
        return []
    common = len(prefix)
    if end is not None:
        while common < min(len(last), len(end)) and last[common] == end[common]:
            common += 1
    stop = len(last)
    if delimiter is not None:
        found = last.find(delimiter, len(prefix))
        stop = stop if found < 0 else found + 1
    for pos in range(common, stop):
        upper = end[pos] if end is not None and pos == common and pos < len(end) else None
        chars = [c for c in alphabet if c > last[pos] and (upper is None or c < upper)]
        if chars:
            if len(chars) > parts:
                chars = [chars[(i * len(chars)) // parts] for i in range(parts)]
            return [last[:pos] + c for c in chars]
    return []


class _S3Walk:
    """One listing of ``s3://bucket/prefix``: a pool of coroutines on s3fs's loop feeding a page queue."""

    def __init__(self, uri: str, exts: tuple[str, ...] | None, concurrency: int, storage_options: dict):
        self.uri, self.exts, self.concurrency = uri, exts, concurrency
        rest = uri.split("://", 1)[1]
        self.bucket, _, self.prefix = rest.partition("/")
        if not self.bucket:
            raise ListingError(f"INPUT {uri!r} names no bucket: write s3://BUCKET/PREFIX")
        self.base = f"s3://{self.bucket}/"
        self.fs = private_s3fs(storage_options)

    def pages(self) -> Iterator[tuple[str, list[str], list[int]]]:
        """(URI prefix, keys, sizes) of each listed page, as the pages arrive."""
        from fsspec.asyn import get_loop

        loop = self.fs.loop or get_loop()
        ready = threading.Event()
        future = asyncio.run_coroutine_threadsafe(self._run(ready), loop)
        ready.wait()
        try:
            while True:
                item = asyncio.run_coroutine_threadsafe(self.out.get(), loop).result()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise self._error(item) from item
                yield self.base, item[0], item[1]
            future.result()
        finally:
            future.cancel()

    async def _run(self, ready: threading.Event) -> None:
        self.out: asyncio.Queue = asyncio.Queue(maxsize=2 * self.concurrency)
        self.todo: asyncio.Queue = asyncio.Queue()
        self.unfinished = 0
        self.busy = 0
        ready.set()
        self._add(_Range(self.prefix))
        workers = [asyncio.ensure_future(self._worker()) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
            await self.out.put(None)
        except Exception as exc:  # the first error ends the listing; the consumer raises it
            for w in workers:
                w.cancel()
            await self.out.put(exc)

    def _add(self, task: _Range) -> None:
        self.unfinished += 1
        self.todo.put_nowait(task)

    async def _worker(self) -> None:
        while True:
            task = await self.todo.get()
            if task is None:
                return
            self.busy += 1
            try:
                await self._list(task)
            finally:
                self.busy -= 1
            self.unfinished -= 1
            if self.unfinished == 0:
                for _ in range(self.concurrency):
                    self.todo.put_nowait(None)

    def _spare(self) -> int:
        """Workers with nothing to do."""
        return self.concurrency - self.busy - self.todo.qsize()

    async def _list(self, task: _Range) -> None:
        token, end = None, task.end
        while True:
            args = {"Bucket": self.bucket, "Prefix": task.prefix, "MaxKeys": PAGE_KEYS}
            if task.delimiter:
                args["Delimiter"] = "/"
            if token is not None:
                args["ContinuationToken"] = token
            elif task.start is not None:
                args["StartAfter"] = task.start
            page = _page_of(await self.fs._call_s3("list_objects_v2", **args))
            keys, sizes, prefixes = page["keys"], page["sizes"], page["prefixes"]
            last = max(keys[-1] if keys else "", prefixes[-1] if prefixes else "")
            passed = end is not None and last > end
            if passed:
                cut = bisect.bisect_right(keys, end)
                keys, sizes = keys[:cut], sizes[:cut]
                prefixes = prefixes[: bisect.bisect_right(prefixes, end)]
            for sub in prefixes:  # folders: their own tasks; flat ones once enough work is queued
                self._add(_Range(sub, delimiter=self.todo.qsize() < self.concurrency))
            kept = [(k, s) for k, s in zip(keys, sizes) if _keep(k, self.exts)]
            if kept:
                await self.out.put(([k for k, _ in kept], [s for _, s in kept]))
            if passed or not page["truncated"] or not last:
                return
            token = page["token"]
            spare = self._spare()
            if spare > 0:
                seen = {c for k in page["keys"] + page["prefixes"] for c in k[len(task.prefix):]}
                alphabet = "".join(sorted(seen - {"/"}))
                cuts = split_range(task.prefix, last, end, alphabet, spare, "/" if task.delimiter else None)
                for lo, hi in zip(cuts, cuts[1:] + [end]):
                    self._add(_Range(task.prefix, lo, hi, task.delimiter))
                if cuts:
                    end = cuts[0]

    def _error(self, exc: BaseException) -> ListingError:
        endpoint = getattr(getattr(self.fs.s3, "meta", None), "endpoint_url", None) if self.fs._s3 else None
        where = f" at {endpoint}" if endpoint else ""
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text:
            return ListingError(
                f"INPUT {self.uri!r}: bucket {self.bucket!r} does not exist{where}. Check the bucket name, or "
                "point AWS_ENDPOINT_URL (or storage_options endpoint_url) at the store that holds it")
        if isinstance(exc, PermissionError) or "AccessDenied" in text:
            return ListingError(
                f"INPUT {self.uri!r}: listing is not allowed{where} ({text}). Give these credentials "
                "s3:ListBucket on the bucket, or use credentials that have it")
        return ListingError(f"INPUT {self.uri!r} cannot be listed{where}: {text}")


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
                               "name such as /data/images/2024- needs its folder /data/images to exist)")
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
            if not entry.is_file():
                skipped[0] += 1
            elif _keep(entry.name, exts):
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
        log.warning("INPUT %s: %d entr(ies) that are not regular files (FIFOs, devices, sockets, broken links) "
                    "were skipped", uri, skipped[0])


def _list_fsspec(uri: str, exts: tuple[str, ...] | None, concurrency: int, storage_options: dict):
    from diffseg.lake.inputs import exact_fs

    try:
        fs, path = exact_fs(uri, **storage_options)
    except (ImportError, ValueError) as exc:
        raise ListingError(f"INPUT {uri!r}: no filesystem for it ({exc}); install the fsspec package of that "
                           "scheme") from exc
    base = uri.split("://", 1)[0] + "://"

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
                names.append(fs.unstrip_protocol(name)[len(base):])
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
        raise ListingError(f"INPUT {uri!r}: no such folder or prefix ({exc}); check the path") from exc
