"""SIGTERM and SIGINT: stop feeding, commit what is whole, record the invocation as interrupted, exit in time.

Kubernetes (and Ray's job stop, and a scheduler's timeout) sends SIGTERM, then SIGKILL some seconds later
(30 by default). :class:`StopSignals` replaces the default handlers (and Ray's, which exits the process at
once) for the runner: the first signal raises :class:`Interrupted` in the main thread, wherever it is
(listing INPUT, planning, waiting for the pipeline's next batch), and starts a watchdog; the runner then
stops consuming the pipeline, commits the units whose rows are all written, appends a ``finish`` entry with
status ``interrupted``, writes the manifest, shuts its own Ray runtime down and releases the lease. If that
takes longer than the grace period (``--grace-seconds``), the watchdog releases the lease and exits the
process hard: committed units are kept either way (the log is the truth), and the next invocation sweeps
what this one left. Exit code: 128 + the signal number (143 for SIGTERM, 130 for SIGINT), as a shell
reports a process ended by that signal.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger("jobs.common.interrupt")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEFAULT_GRACE_S = 25.0  # under Kubernetes' default 30 s between SIGTERM and SIGKILL


class Interrupted(BaseException):
    """Raised in the main thread by the first SIGTERM/SIGINT (a BaseException: no ``except Exception`` on the
    way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Installs the handlers (main thread only; elsewhere it does nothing) until :meth:`restore`.

    `on_timeout`: called by the watchdog before the hard exit (e.g. releasing the run's lease)."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S):
        self.grace_s = grace_s
        self.signum: int | None = None
        self.received_at: float | None = None
        self.on_timeout: list[Callable[[], None]] = []
        self._old: dict[int, object] = {}
        self._done = threading.Event()

    def install(self) -> StopSignals:
        """(Re)installs the handlers: call again after anything that installs its own (``ray.init``)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._old.setdefault(sig, previous)
        return self

    def restore(self) -> None:
        """Puts the previous handlers back and stops the watchdog."""
        self._done.set()
        if threading.current_thread() is threading.main_thread():
            for sig, previous in self._old.items():
                signal.signal(sig, previous)
        self._old.clear()

    def left_s(self) -> float:
        """Seconds of the grace period left (the whole period before any signal)."""
        if self.received_at is None:
            return self.grace_s
        return max(0.0, self.grace_s - (time.monotonic() - self.received_at))

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            log.warning("%s again: still stopping (at most %.0f s more)", signal.Signals(signum).name, self.left_s())
            return
        self.signum, self.received_at = signum, time.monotonic()
        log.warning("%s: stopping: committing what is whole, then exiting within %.0f s (--grace-seconds)",
                    signal.Signals(signum).name, self.grace_s)
        threading.Thread(target=self._watchdog, name="grace-watchdog", daemon=True).start()
        raise Interrupted(signum)

    def _watchdog(self) -> None:
        if self._done.wait(self.grace_s):
            return
        log.error("the grace period of %.0f s is over: exiting now; committed units are kept and the next run "
                  "finishes the rest", self.grace_s)
        for callback in self.on_timeout:
            try:
                callback()
            except Exception as exc:
                log.warning("while exiting: %s", exc)
        logging.shutdown()
        os._exit(128 + (self.signum or signal.SIGTERM))


def finish_interrupted(run, sig, started_ray: bool) -> int:
    """SIGTERM/SIGINT during the pipeline: commits what is whole within the grace period, records the
    invocation as interrupted, returns 128 + the signal number."""
    job, w = run.job, run.writer
    if w is not None:
        try:
            w.flush(timeout=max(1.0, run.stop.left_s() - 5.0))
        except Exception as exc:  # the rest is redone by the next run
            job.log.warning("stopped committing: %s", exc)
    run.actors_may_write = not started_ray  # our own runtime is shut down before the sweep; a cluster's is not
    run.write_manifest("interrupted", error=f"stopped by {sig}")
    items, units = (w.counts["items"], len(w.committed_units)) if w is not None else (0, 0)
    print(f"diffseg: interrupted by {sig} after {items} {job.words.items} were committed ({units} units); rerun "
          f"the same command to finish the rest")
    return sig.exit_code
