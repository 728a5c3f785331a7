"""The S3 half of :mod:`diffseg.inputs.listing`: ListObjectsV2 pages requested in parallel through a
private s3fs client, read by a parser that takes only Key, Size and CommonPrefixes (the module docstring
of diffseg.inputs.listing describes the strategy)."""

from __future__ import annotations

import asyncio
import bisect
import html
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

from diffseg.inputs.listing import ListingError, _keep

PAGE_KEYS = 1000  # keys per ListObjectsV2 page (S3's maximum)

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


def first_keys(uri: str, keys: int, storage_options: dict | None = None) -> tuple[list[str], list[int], bool]:
    """The first `keys` keys under ``s3://bucket/prefix`` `uri` in key order (folder markers left out),
    read by one flat ListObjectsV2 chain (no delimiter: ceil(keys / 1000) requests however the keys are
    foldered), their sizes, and whether that is every key under it. Raises what the client raises."""
    bucket, _, prefix = uri.split("://", 1)[1].partition("/")
    if not bucket:
        raise ListingError(f"INPUT {uri!r} names no bucket: write s3://BUCKET/PREFIX")
    fs = private_s3fs(storage_options or {})
    names: list[str] = []
    sizes: list[int] = []
    token = None
    while len(names) < keys:
        args = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": min(PAGE_KEYS, keys - len(names))}
        if token is not None:
            args["ContinuationToken"] = token
        page = _page_of(fs.call_s3("list_objects_v2", **args))
        kept = [(k, s) for k, s in zip(page["keys"], page["sizes"]) if _keep(k, None)]
        names.extend(f"s3://{bucket}/{k}" for k, _ in kept)
        sizes.extend(s for _, s in kept)
        token = page["token"]
        if not page["truncated"] or not token:
            return names, sizes, True
    return names, sizes, False


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


class S3Walk:
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
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("list_keys blocks until pages arrive: iterate it from a thread, not from a coroutine "
                               "on fsspec's event loop (it would wait for itself)")
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
        from diffseg.redact import redact_text

        endpoint = getattr(getattr(self.fs.s3, "meta", None), "endpoint_url", None) if self.fs._s3 else None
        where = redact_text(f" at {endpoint}") if endpoint else ""
        text = redact_text(f"{type(exc).__name__}: {exc}", [self.uri])
        uri = redact_text(self.uri)
        if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text:
            return ListingError(
                f"INPUT {uri!r}: bucket {self.bucket!r} does not exist{where}. Check the bucket name, or "
                "point AWS_ENDPOINT_URL (or storage_options endpoint_url) at the store that holds it", missing=True)
        if isinstance(exc, PermissionError) or "AccessDenied" in text:
            return ListingError(
                f"INPUT {uri!r}: listing is not allowed{where} ({text}). Give these credentials "
                "s3:ListBucket on the bucket, or use credentials that have it")
        return ListingError(f"INPUT {uri!r} cannot be listed{where}: {text}")
