"""Listing a lake's keys: ``python -m jobs.bench.listing`` (docs/benchmarks.md, section "Listing").

Lists ``s3://lake/images/`` with the parallel Arrow lister (:func:`diffseg.inputs.listing.list_keys`) and
with the ``fs.find(detail=True)`` lister the job used before it (:func:`listed_by_find`) in the same
command, each in a fresh process after a small warm-up listing (clients, service models, Arrow kernels):
``arrow`` keeps every batch (what a planner holding the whole listing holds), ``stream`` drops each batch
once counted (a planner consuming batch by batch), ``find`` keeps its Python list of URIs. Prints keys/s
(wall), the process's CPU per key (all threads), its peak RSS growth per key (ru_maxrss after the listing
minus the RSS just before it) and the Arrow bytes per key kept.

``--job`` measures the job's own loose-file path instead: ``job-stream`` is ``list_input(INPUT, "auto")``
(detection's look at the first 10,000 keys, the first batch) then every batch of ``batches()``, one at a
time; ``job-uris`` is ``list_input(INPUT).uris`` (the sorted unique array, what jobs.segment plans from
until planning consumes the stream); ``job-find`` is the path before the stream: ``fs.find``, Python
strings, then the sorted array (``diffseg.inputs.list_inputs_array``).

Two stores, both on 127.0.0.1, both adding ``--latency`` (default 50 ms) to every request:

- ``moto``: moto's S3 server (the tests' server) in a child process, filled through its backend (no PUT
  requests), behind a WSGI wrapper that sleeps before each request. moto scans and sorts the whole
  bucket on every LIST request, so at 10^5 keys its own CPU, on the same cores as the client, bounds
  the rate: a lower bound of the lister's;
- ``standin``: :class:`VirtualKeys` served by an aiohttp ListObjectsV2 endpoint in a child process
  (:func:`serve_standin`): 10^6-10^8 hash-like keys generated from their index, never stored, each
  page an O(log N) search plus 1000 formatted keys.

Figures at 10^8 are extrapolated from the largest size measured (keys/s and bytes per key held
constant), and printed as such.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import resource
import socket
import sys
import time

BUCKET = "lake"
PREFIX = "images/"
EXTENSIONS = (".jpg",)


class VirtualKeys:
    """`n` sorted, hash-like keys ``images/<32 hex>.jpg`` computed from their index (never stored): the
    first 16 hex digits spread the keys evenly over the hex space (as hashes do), the last 16 are a
    mixed copy of the index. ``key(i) < key(i + 1)`` for every i."""

    def __init__(self, n: int, prefix: str = PREFIX):
        self.n, self.prefix = n, prefix
        self.step = max(1, (1 << 64) // max(n, 1))

    def key(self, i: int) -> str:
        return f"{self.prefix}{i * self.step:016x}{(i * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF:016x}.jpg"

    def size(self, i: int) -> int:
        return 20_000 + (i * 7919) % 200_000

    def first(self, pred, lo: int = 0) -> int:
        """The first index >= `lo` whose key satisfies `pred` (monotone: False then True), else n."""
        hi = self.n
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(self.key(mid)):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def page(self, prefix: str, delimiter: str, after: str | None, max_keys: int):
        """(keys as (key, size), common prefixes, truncated, last item) of one ListObjectsV2 page."""
        start = self.first(lambda k: k >= prefix)
        end = self.first(lambda k: k > prefix and not k.startswith(prefix), start)
        if after is not None:
            start = max(start, self.first(lambda k: k > after, start))
            if delimiter and after.endswith(delimiter) and after.startswith(prefix):
                start = self.first(lambda k: not k.startswith(after) and k > after, start)
        keys, prefixes, i = [], [], start
        while i < end and len(keys) + len(prefixes) < max_keys:
            k = self.key(i)
            cut = k.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = k[: cut + 1]
                prefixes.append(common)
                i = self.first(lambda x, c=common: not x.startswith(c), i)
            else:
                keys.append((k, self.size(i)))
                i += 1
        last = max(keys[-1][0] if keys else "", prefixes[-1] if prefixes else "")
        return keys, prefixes, i < end, last


def _xml_page(bucket: str, prefix: str, keys, prefixes, truncated: bool, last: str) -> bytes:
    from xml.sax.saxutils import escape

    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
             f"<Name>{bucket}</Name><Prefix>{escape(prefix)}</Prefix><MaxKeys>1000</MaxKeys>"
             f"<KeyCount>{len(keys) + len(prefixes)}</KeyCount><IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
    if truncated:
        parts.append(f"<NextContinuationToken>{escape(last)}</NextContinuationToken>")
    parts.extend(f"<Contents><Key>{escape(k)}</Key><LastModified>2026-12-07T12:00:00.000Z</LastModified>"
                 f'<ETag>"d41d8cd98f00b204e9800998ecf8427e"</ETag><Size>{s}</Size>'
                 "<StorageClass>STANDARD</StorageClass></Contents>" for k, s in keys)
    parts.extend(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes)
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def serve_standin(port: int, n: int, latency_s: float, ready=None, prefix: str = PREFIX) -> None:
    """Serve :class:`VirtualKeys` of `n` keys under `prefix` in bucket ``lake`` on 127.0.0.1:`port`
    (ListObjectsV2 only; every other request gets 404), sleeping `latency_s` before each answer. Runs until
    killed."""
    from aiohttp import web

    keys = VirtualKeys(n, prefix)

    served = [0]

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/_requests":  # the benchmark's own question: requests answered so far
            return web.Response(text=str(served[0]))
        served[0] += 1
        await asyncio.sleep(latency_s)
        bucket, _, obj = request.path.lstrip("/").partition("/")
        q = request.query
        if request.method != "GET" or obj or bucket != BUCKET or q.get("list-type") != "2":
            return web.Response(status=404, body=b"<Error><Code>NoSuchKey</Code><Message>not here</Message></Error>"
                                if request.method != "HEAD" else b"", content_type="application/xml")
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        after = q.get("continuation-token") or q.get("start-after")
        found, prefixes, truncated, last = keys.page(prefix, delimiter, after, min(1000, int(q.get("max-keys", 1000))))
        return web.Response(body=_xml_page(bucket, prefix, found, prefixes, truncated, last),
                            content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    if ready is not None:
        ready.set()
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


def serve_moto(port: int, n: int, latency_s: float, ready=None) -> None:
    """moto's S3 server on 127.0.0.1:`port` with bucket ``lake`` holding the first `n` keys of
    :class:`VirtualKeys` (put through moto's backend, no requests), each request delayed `latency_s`."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from moto.s3.models import s3_backends
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    backend.create_bucket(BUCKET, "us-east-1")
    keys = VirtualKeys(n)
    for i in range(n):
        backend.put_object(BUCKET, keys.key(i), b"")
    app = DomainDispatcherApplication(create_backend_app)

    def slow(environ, start_response):
        time.sleep(latency_s)
        return app(environ, start_response)

    server = make_server("127.0.0.1", port, slow, True, request_handler=MotoRequestHandler)
    if ready is not None:
        ready.set()
    server.serve_forever()


def listed_by_find(spec: str) -> list[str]:
    """The loose-file listing of a folder or prefix as the job made it before the stream (the reference
    the tests compare with): ``fs.find(detail=True)`` of the folder (or of the parent of a partial prefix),
    the image names kept, FIFOs/devices/sockets skipped, canonical URIs; unsorted."""
    from diffseg.inputs.files import find_below, image_extensions, regular_files
    from diffseg.inputs.uri import exact_fs, full_uri, invalidate

    fs, path = exact_fs(spec)
    invalidate(fs)
    found = find_below(fs, path, spec)
    if found is None:
        return [full_uri(fs, path)]
    images = {p: info for p, info in found.items() if p.lower().endswith(image_extensions())}
    return [full_uri(fs, p) for p in regular_files(fs, images)]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(lister: str, endpoint: str, concurrency: int, result) -> None:
    """In a fresh process: list the lake with `lister` ('arrow' or 'find'), keep the result, put
    (keys, seconds, CPU seconds of the process, peak RSS growth, Arrow bytes, requests
    answered by the stand-in) on `result`."""
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
        os.environ.setdefault(name, value)  # the local stores accept any credentials
    import pyarrow  # noqa: F401  (imports before the RSS baseline)
    import s3fs  # noqa: F401

    from diffseg.inputs import list_input
    from diffseg.inputs.listing import list_keys

    uri = f"s3://{BUCKET}/{PREFIX}"
    try:  # warm-up on a few keys: clients, service models, Arrow kernels and imports are not per key
        if lister in ("arrow", "stream", "job-stream", "job-uris"):
            list(list_keys(f"s3://{BUCKET}/{PREFIX}000"))
        else:
            listed_by_find(f"s3://{BUCKET}/nothing/")
    except Exception:
        pass
    requests, before = _requests(endpoint), _rss_bytes()
    start, cpu = time.perf_counter(), time.process_time()
    if lister == "arrow":
        held = list(list_keys(uri, EXTENSIONS, concurrency=concurrency))
        count, nbytes = sum(b.num_rows for b in held), sum(b.nbytes for b in held)
    elif lister == "stream":  # what a planner that consumes batch by batch holds: one batch at a time
        count = nbytes = 0
        for b in list_keys(uri, EXTENSIONS, concurrency=concurrency):
            count, nbytes = count + b.num_rows, max(nbytes, b.nbytes)
    elif lister == "job-stream":  # the job's path: list_input (auto: detection, first batch), then batches()
        listing = list_input(uri, "auto")
        count = nbytes = 0
        for b in listing.batches():
            count, nbytes = count + len(b), max(nbytes, b.nbytes)
    elif lister == "job-uris":  # the job's path while planning holds the listing: the sorted unique array
        held = list_input(uri, "auto").uris
        count, nbytes = len(held), held.nbytes
    elif lister == "job-find":  # the job's path before the stream: fs.find, Python strings, then the array
        from diffseg.inputs.files import list_inputs_array

        held = list_inputs_array(uri, listed_by_find(uri))
        count, nbytes = len(held), held.nbytes
    else:
        held = listed_by_find(uri)
        count, nbytes = len(held), 0
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    requests = _requests(endpoint) - requests if requests >= 0 else -1
    result.put((count, seconds, cpu, max(0, peak - before), nbytes, requests))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result_of(child, result):
    """What `child` put on `result`; raises when it exited without a result."""
    import queue

    while True:
        try:
            value = result.get(timeout=1)
            child.join()
            return value
        except queue.Empty:
            if not child.is_alive():
                raise RuntimeError(f"the measuring process exited with code {child.exitcode} (its error is above)") from None


def _requests(endpoint: str) -> int:
    """Requests the stand-in at `endpoint` has answered so far (-1 for moto, which does not count them)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{endpoint}/_requests", timeout=10) as r:
            return int(r.read())
    except Exception:
        return -1


def run_case(store: str, n: int, latency_s: float, listers: list[str], concurrency: int) -> list[dict]:
    """Start `store` ('moto' or 'standin') with `n` keys and measure each of `listers` against it."""
    ctx = multiprocessing.get_context("spawn")
    port, ready = _free_port(), ctx.Event()
    server = ctx.Process(target=serve_moto if store == "moto" else serve_standin,
                         args=(port, n, latency_s, ready), daemon=True)
    server.start()
    rows = []
    try:
        if not ready.wait(600):
            raise RuntimeError(f"the {store} server did not start")
        time.sleep(0.5)
        for lister in listers:
            result = ctx.Queue()
            child = ctx.Process(target=_measure, args=(lister, f"http://127.0.0.1:{port}", concurrency, result))
            child.start()
            count, seconds, cpu, grown, nbytes, requests = _result_of(child, result)
            if count != n:
                raise RuntimeError(f"{lister} listed {count} keys of {n} on {store}")
            rows.append({"store": store, "keys": n, "lister": lister, "seconds": seconds, "keys_s": n / seconds,
                         "cpu_us_per_key": cpu / n * 1e6,
                         "rss_per_key": grown / n,
                         "arrow_per_key": nbytes / n if lister in ("arrow", "job-uris", "job-find") else 0.0,
                         "requests": requests})
    finally:
        server.terminate()
        server.join(10)
    return rows


def _print(rows: list[dict], latency_s: float) -> None:
    print(f"{'store':8} {'keys':>11} {'lister':31} {'seconds':>8} {'keys/s':>9} {'CPU us/key':>10} "
          f"{'RSS B/key':>9} {'Arrow B/key':>11} {'LISTs':>7}")
    for r in rows:
        name = {"arrow": "list_keys, all batches kept", "stream": "list_keys, one batch at a time",
                "find": "fs.find(detail=True) before", "job-stream": "job: list_input + batches()",
                "job-uris": "job: list_input(...).uris", "job-find": "job before: fs.find + array"}[r["lister"]]
        print(f"{r['store']:8} {r['keys']:>11,} {name:31} {r['seconds']:8.1f} {r['keys_s']:9,.0f} "
              f"{r['cpu_us_per_key']:10.1f} {r['rss_per_key']:9.0f} {r['arrow_per_key']:11.1f} "
              f"{r['requests'] if r['requests'] >= 0 else '':>7}")
    for lister in ("arrow", "stream", "find", "job-stream", "job-uris", "job-find"):
        mine = sorted((r for r in rows if r["lister"] == lister and r["store"] == "standin"), key=lambda x: x["keys"])
        if not mine:
            continue
        r = mine[-1]
        grown = r["rss_per_key"] * r["keys"]
        if len(mine) > 1:  # the line through the two largest sizes: fixed part + bytes per key
            q = mine[-2]
            slope = max(0.0, (grown - q["rss_per_key"] * q["keys"]) / (r["keys"] - q["keys"]))
            fixed = grown - slope * r["keys"]
            print(f"{lister}: peak RSS growth = {fixed / 1e6:.0f} MB + {slope:.0f} B/key (stand-in, "
                  f"{q['keys']:,} and {r['keys']:,} keys)")
        else:
            slope, fixed = r["rss_per_key"], 0.0
        print(f"{lister}: extrapolated to 10^8 keys from the stand-in at {r['keys']:,} (not measured at 10^8): "
              f"{1e8 / r['keys_s'] / 60:.1f} min at this rate, {(fixed + slope * 1e8) / 1e9:.1f} GB peak RSS growth; "
              f"one core of CPU holds {1e6 / r['cpu_us_per_key']:,.0f} keys/s")
    print(f"latency per request: {latency_s * 1000:.0f} ms; pages of 1000 keys")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench.listing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moto", type=int, nargs="*", default=[100_000], metavar="N", help="sizes on moto (default 10^5)")
    p.add_argument("--standin", type=int, nargs="*", default=[100_000, 1_000_000], metavar="N",
                   help="sizes on the stand-in (default 10^5 10^6; add 10000000 for 10^7)")
    p.add_argument("--find-max", type=int, default=100_000, metavar="N",
                   help="run today's fs.find lister only up to N keys (default 10^5: it takes ~0.2 s per page)")
    p.add_argument("--latency", type=float, default=0.05, help="seconds added to every request (default 0.05)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight for list_keys (default 32)")
    p.add_argument("--job", action="store_true",
                   help="measure the job's loose-file path instead: list_input(INPUT, 'auto') then batches() "
                        "(job-stream), or its sorted .uris (job-uris), vs fs.find + the sorted array as before "
                        "the stream (job-find, up to --find-max keys)")
    args = p.parse_args(argv)
    rows = []
    for store, sizes in (("moto", args.moto), ("standin", args.standin)):
        for n in sizes:
            fast, slow = (["job-stream", "job-uris"], "job-find") if args.job else (["arrow", "stream"], "find")
            listers = fast + ([slow] if n <= args.find_max else [])
            rows += run_case(store, n, args.latency, listers, args.concurrency)
            print(rows[-len(listers):], file=sys.stderr, flush=True)
    _print(rows, args.latency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
