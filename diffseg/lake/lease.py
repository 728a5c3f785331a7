"""One writer per run: the run's lease, ``OUTPUT/_leases/<run_id>.json``.

An invocation takes the lease before it touches anything of the run (debris, commits, manifest) and
keeps it fresh from a driver thread (a heartbeat every ``heartbeat_s``, 30 s by default). A second
invocation of the same run finds the lease held and stops (:class:`LeaseHeldError`, exit 2) with a
message naming the holder (host, pid, start, last heartbeat) and how to take over: a lease whose
heartbeat is older than ``stale_s`` is taken over at once; ``--break-lease`` takes over a fresh one (for
a holder known to be gone), and a holder that ran on this host whose process is gone is taken over at
once (a killed invocation resubmitted on the same machine). Every write of the lease is conditional (diffseg.lake.store.OutputStore.put_if:
``If-None-Match`` / ``If-Match`` on S3, ``O_EXCL`` on local disks), so of two invocations taking it at the
same moment exactly one wins; a holder whose lease was taken over sees it at its next heartbeat and
commits nothing more (:meth:`Lease.check` before each commit marker).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from diffseg.lake.manifest import utc_stamp
from diffseg.lake.store import OutputStore
from diffseg.model import redact_uri

log = logging.getLogger("diffseg.lake.lease")

LEASES = "_leases"


class LeaseHeldError(ValueError):
    """Another invocation holds the run's lease (the message names it and how to take over)."""


class LeaseLostError(RuntimeError):
    """This invocation's lease was taken over: it must not commit anything more."""


def lease_path(run_id: str) -> str:
    return f"{LEASES}/{run_id}.json"


class Lease:
    """The lease of one run, held by this process (use :func:`acquire`)."""

    def __init__(self, store: OutputStore, run_id: str, heartbeat_s: float = 30.0, stale_s: float = 120.0):
        # a heartbeat at least 4 times per stale limit: with a slower one (--lease-stale-minutes 0.5 and the
        # default 30 s period) the margin of check() would be the whole limit and nothing could be committed
        self.store, self.run_id, self.heartbeat_s, self.stale_s = store, run_id, min(heartbeat_s, stale_s / 4), stale_s
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self.last_ok = self.started  # when the lease object last held our heartbeat (a successful write)
        self.body: bytes | None = None  # what the lease object holds now (our last write)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self, now: float) -> bytes:
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "token": self.token, "started_at": utc_stamp(self.started), "heartbeat_at": utc_stamp(now),
                           "heartbeat_unix": now}, indent=1).encode()

    def write(self, expected: bytes | None) -> bool:
        now = time.time()
        body = self.holder(now)
        if self.store.put_if(lease_path(self.run_id), body, expected):
            self.body, self.last_ok = body, now
            return True
        return False

    def beat(self) -> None:
        """Refreshes the heartbeat; marks the lease lost when someone else rewrote or removed it."""
        if self.lost is None and not self.write(self.body) and not self.adopt():
            self.lost = "the lease was taken over by another invocation (--break-lease or a stale heartbeat)"
            log.error("run %r: %s; this invocation commits nothing more", self.run_id, self.lost)

    def adopt(self, current: bytes | None = None) -> bool:
        """After a conditional write that failed: True (and the lease object's body taken as ours) when the
        lease object holds this lease's token, i.e. the write did land and only its reply was lost (the
        client's retry then found its own write). `current`: the object's bytes when already read."""
        try:
            current = self.store.get(lease_path(self.run_id)) if current is None else current
            if json.loads(current).get("token") != self.token:
                return False
        except (FileNotFoundError, ValueError, AttributeError):
            return False
        self.body, self.last_ok = current, time.time()
        return True

    @property
    def margin_s(self) -> float:
        """How long before the stale limit a holder without a successful heartbeat stops committing."""
        return max(self.heartbeat_s, self.stale_s / 4)

    def check(self) -> None:
        """Raises LeaseLostError once the lease is known to be lost, or when no heartbeat succeeded for
        longer than the stale limit minus :attr:`margin_s` (a holder cut off from the store stops before
        anyone may take the lease over). Call before every commit."""
        if self.lost is None and time.time() - self.last_ok > self.stale_s - self.margin_s:
            self.lost = (f"no heartbeat reached the store for {time.time() - self.last_ok:.0f} s (the lease is taken "
                         f"over after {self.stale_s:.0f} s without one)")
            log.error("run %r: %s; this invocation commits nothing more", self.run_id, self.lost)
        if self.lost is not None:
            raise LeaseLostError(f"run {self.run_id!r}: {self.lost}; rerun the same command to finish the rest")

    def start(self) -> Lease:
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception as exc:  # a storage hiccup: the next beat tries again
                log.warning("run %r: lease heartbeat failed (%s: %s)", self.run_id, type(exc).__name__, exc)

    def release(self) -> None:
        """Stops the heartbeat and removes the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        rel = lease_path(self.run_id)
        try:
            if self.lost is None and self.store.exists(rel) and self.store.get(rel) == self.body:
                self.store.remove([rel])
        except Exception as exc:
            log.warning("run %r: could not remove the lease (%s); the next run takes it over once stale", self.run_id, exc)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_dead(holder: dict) -> bool:
    """True when the holder ran on this host and its process is gone (a killed invocation resubmitted
    on the same machine takes over at once; another host's holder is judged by its heartbeat only)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def acquire(store: OutputStore, run_id: str, stale_s: float = 120.0, break_lease: bool = False,
            heartbeat_s: float = 30.0) -> Lease:
    """Takes the run's lease and starts its heartbeat, or raises LeaseHeldError naming the holder."""
    lease = Lease(store, run_id, heartbeat_s, stale_s)
    rel = lease_path(run_id)
    for _ in range(3):
        if lease.write(None):
            return lease.start()
        try:
            current = store.get(rel)
        except FileNotFoundError:
            continue  # released meanwhile: try again
        if lease.adopt(current):  # our own write, whose reply was lost
            return lease.start()
        try:
            holder = json.loads(current)
            age = time.time() - float(holder.get("heartbeat_unix", 0))
        except (ValueError, TypeError):
            holder, age = {}, float("inf")  # unreadable: a write cut short, treated as stale
        if age <= stale_s and not break_lease and not _holder_dead(holder):
            raise LeaseHeldError(
                f"run {run_id!r} of {redact_uri(store.output)!r} is being written by another invocation: host "
                f"{holder.get('host')!r}, pid {holder.get('pid')}, started {holder.get('started_at')}, last heartbeat "
                f"{age:.0f} s ago. Wait for it to finish, or if it is gone (its heartbeat stops; a lease is taken "
                f"over once it is {stale_s / 60:g} minutes old, see --lease-stale-minutes) rerun with --break-lease"
            )
        if lease.write(current):
            log.warning("run %r: took over the lease of host %r pid %s (last heartbeat %.0f s ago%s)", run_id,
                        holder.get("host"), holder.get("pid"), age, ", --break-lease" if break_lease else "")
            return lease.start()
    raise LeaseHeldError(f"run {run_id!r} of {redact_uri(store.output)!r}: the lease changed hands three times while "
                         f"this invocation tried to take it; another invocation is starting: try again later")
