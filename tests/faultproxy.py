"""A fault-injecting HTTP proxy in front of an S3 endpoint (the tests' moto server), on 127.0.0.1.

Point a client at it (``AWS_ENDPOINT_URL=proxy.endpoint``) and it forwards every request to the real
endpoint, except that it answers a configurable share of GETs, PUTs, LISTs and DELETEs with S3's
``503 SlowDown`` (before forwarding: the request has no effect), and in a burst mode fails every request on
some keys for a while from their first request (long enough to exhaust the client's retries), and can lose
the reply of a request it did forward (the write happened, the client sees 503). It counts the requests
and the failures per operation::

    with FaultProxy(moto_endpoint, shares={"GET": 0.1, "PUT": 0.1, "LIST": 0.1, "DELETE": 0.1},
                    bursts={"images/3.jpg": 40.0}) as proxy:
        env["AWS_ENDPOINT_URL"] = proxy.endpoint
        ...
        print(proxy.summary())

Operations: ``LIST`` (a GET on a bucket, ListObjects/ListObjectsV2), ``GET`` (GetObject), ``HEAD``
(HeadObject/HeadBucket: failed with the GET share), ``PUT`` (PutObject, CreateBucket, and multipart
uploads' POSTs), ``DELETE`` (DeleteObject and the batched DeleteObjects POST).
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your '
             b'request rate.</Message><RequestId>faultproxy</RequestId></Error>')
OPERATIONS = ("GET", "HEAD", "LIST", "PUT", "DELETE")
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


def operation(method: str, path: str, query: str) -> str:
    """The proxy's name for an S3 request: one of :data:`OPERATIONS`."""
    params = parse_qs(query, keep_blank_values=True)
    key = unquote(path).lstrip("/").partition("/")[2]
    if method == "GET":
        return "GET" if key else "LIST"
    if method == "HEAD":
        return "HEAD"
    if method == "DELETE" or (method == "POST" and "delete" in params):
        return "DELETE"
    return "PUT"


class FaultProxy:
    """The proxy (a threaded HTTP server); use as a context manager or call :meth:`start`/:meth:`stop`.

    `shares`: operation -> the share of its requests answered 503 SlowDown (HEAD uses GET's unless given):
    evenly spread, the first request of each operation included (share 0.1: its 1st, 11th, 21st...), or drawn
    at random when a `seed` is given. `bursts`: key substring -> seconds; the first request whose path holds
    the substring starts a burst in which every request on it is answered 503 for that long.
    `lost_replies`: key substring -> how many forwarded writes (not GETs) on it get a 503 instead of their
    reply."""

    def __init__(self, upstream: str, shares: dict[str, float] | None = None, bursts: dict[str, float] | None = None,
                 seed: int | None = None, lost_replies: dict[str, int] | None = None):
        target = urlsplit(upstream)
        self.upstream_host, self.upstream_port = target.hostname, target.port or 80
        self.shares = dict(shares or {})
        self.shares.setdefault("HEAD", self.shares.get("GET", 0.0))
        self.bursts = dict(bursts or {})
        self.lost_replies = dict(lost_replies or {})  # key substring -> requests still to lose the reply of
        self.burst_started: dict[str, float] = {}
        self.requests: Counter = Counter()
        self.failed: Counter = Counter()
        self.burst_failed: Counter = Counter()
        self.enabled = True
        self.random = seed is not None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def decide(self, op: str, path: str) -> str | None:
        """"burst", "share" or None (forward) for one request."""
        with self._lock:
            self.requests[op] += 1
            if not self.enabled:
                return None
            now = time.monotonic()
            for key, seconds in self.bursts.items():
                if key in unquote(path):
                    started = self.burst_started.setdefault(key, now)
                    if now - started < seconds:
                        self.failed[op] += 1
                        self.burst_failed[key] += 1
                        return "burst"
            share = self.shares.get(op, 0.0)
            if share > 0 and (self._rng.random() < share if self.random else
                              (self.requests[op] - 1) % max(1, round(1 / share)) == 0):
                self.failed[op] += 1
                return "share"
        return None

    def lose_reply(self, path: str) -> bool:
        """True when the reply to this (forwarded, so done) request is to be lost: answered 503 instead."""
        with self._lock:
            for key, left in self.lost_replies.items():
                if left > 0 and key in unquote(path):
                    self.lost_replies[key] = left - 1
                    self.failed["lost reply"] += 1
                    return True
        return False

    def summary(self) -> dict:
        """Requests and failures per operation, and the share of all requests that failed."""
        with self._lock:
            total, failed = sum(self.requests.values()), sum(self.failed.values())
            return {"requests": dict(self.requests), "failed": dict(self.failed), "burst_failed": dict(self.burst_failed),
                    "total": total, "total_failed": failed, "failed_share": failed / total if total else 0.0}

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline().strip():  # trailers
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                split = urlsplit(self.path)
                op = operation(self.command, split.path, split.query)
                if proxy.decide(op, split.path) is not None:
                    self._reply(503, [("Content-Type", "application/xml"), ("x-amz-request-id", "faultproxy")],
                                SLOW_DOWN)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    reply = conn.getresponse()
                    data = reply.read()
                    out = [(k, v) for k, v in reply.getheaders() if k.lower() not in _HOP]
                    # a HEAD reply keeps the object's size: the client reads Content-Length as the object's
                    length = reply.getheader("Content-Length") if self.command == "HEAD" else None
                finally:
                    conn.close()
                if self.command != "GET" and proxy.lose_reply(split.path):
                    self._reply(503, [("Content-Type", "application/xml")], SLOW_DOWN)
                    return
                if length is not None:
                    self.send_response(reply.status)
                    for name, value in out:
                        self.send_header(name, value)
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    return
                self._reply(reply.status, out, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
