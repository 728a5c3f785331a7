"""Finding the image that kills its actor: a batch that crashed the process is split until the image is known.

Some inputs kill the process that handles them (a segfault in a native library, the host's OOM killer, a
device fault that poisons the CUDA context): no exception reaches Python, Ray restarts the actor and retries
the batch, which kills it again. Ray's retries are bounded (jobs.common.ray_env), so without more the
batch would fail the run. :class:`CrashGuard` keeps a small record per batch under OUTPUT
(``_staging/<run>/<invocation>/crashes/<batch>.json``, hidden from readers, deleted when the batch
completes), written before the model runs:

- attempt 1 runs the batch as usual;
- an attempt that finds the record of an earlier attempt (that attempt's process died) runs the items one
  at a time, noting in the record which item it is about to run;
- an attempt that finds an item noted as running in a process that died marks it a killer: it becomes an
  error row (stage ``model``, type ``WorkerCrash``, final) and the others go on.

Each killer costs one more attempt, so a batch with k killers needs k + 2 attempts (the job's
``ACTOR_TASK_RETRIES`` allows 5, so up to 3 killers per batch are found; a batch with more fails the
run with the record naming them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

log = logging.getLogger("jobs.common.crashes")

CRASHES = "crashes"
CUDA_POISON = ("cuda error", "device-side assert", "illegal memory access", "cudnn_status_execution_failed",
               "misaligned address", "unspecified launch failure")


def is_poisoning(exc: BaseException) -> bool:
    """True for an error after which the process's CUDA context is unusable (every later call fails): the
    actor must exit so Ray starts a fresh process (a CUDA out-of-memory is not one: memory is freed)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return "out of memory" not in text and any(word in text for word in CUDA_POISON)


def exit_poisoned(exc: BaseException) -> None:
    """Exits the actor's process at once after a poisoning error (Ray restarts it, bounded)."""
    log.error("the device context is poisoned (%s: %s): exiting this actor so that Ray starts a fresh one",
              type(exc).__name__, str(exc)[:300])
    logging.shutdown()
    os._exit(70)


class CrashGuard:
    """The crash record of one batch (see the module docstring). `store`: OUTPUT's OutputStore; `prefix`:
    ``_staging/<run>/<invocation>``; `keys`: the batch's work-item keys, in order."""

    def __init__(self, store, prefix: str, keys: list[str]):
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]
        self.store, self.keys = store, list(keys)
        self.rel = f"{prefix}/{CRASHES}/{digest}.json"
        self.record = self._read()
        self.record["attempts"] = int(self.record.get("attempts", 0)) + 1
        running = self.record.pop("running", None)
        if running is not None and running not in self.record.setdefault("killers", []):
            self.record["killers"].append(running)
            log.warning("%s killed its actor while running alone: it becomes an error row", running)
        self._write()

    @property
    def careful(self) -> bool:
        """True when an earlier attempt of this batch died: run the items one at a time."""
        return self.record["attempts"] > 1

    @property
    def killers(self) -> list[str]:
        return list(self.record.get("killers", []))

    def running(self, key: str) -> None:
        """Notes that `key` is about to run alone (careful mode)."""
        self.record["running"] = key
        self._write()

    def done(self) -> None:
        """The batch completed: its record goes."""
        try:
            self.store.remove([self.rel])
        except Exception as exc:  # the invocation's sweep removes it
            log.warning("could not remove the crash record %s (%s)", self.rel, exc)

    def _read(self) -> dict:
        try:
            return json.loads(self.store.get(self.rel))
        except FileNotFoundError:
            return {}
        except Exception as exc:  # an unreadable record only costs the isolation, never a result
            log.warning("ignoring the crash record %s (%s)", self.rel, exc)
            return {}

    def _write(self) -> None:
        self.store.put_json(self.rel, self.record)


def crash_message(key: str, attempts: int) -> str:
    return (f"the model's process died while segmenting {key!r} alone (no Python error: a crash, the host's "
            f"out-of-memory killer, or a device fault), after {attempts - 1} failed attempt(s) of its batch; the image "
            f"is skipped so that its neighbours finish")
