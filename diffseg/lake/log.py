"""A run's commit log: ``OUTPUT/_log/<run_id>/<version>.json``, the only truth about what a run committed.

The design is Delta Lake's, for a unit that spans three tables (docs/commits.md has the proof sketch):

- Entries are numbered 0, 1, 2, ... (20 digits, so names sort by version) and each is written once, with a
  put-if-absent (``If-None-Match: *`` on S3, a hard link on local disks: diffseg.lake.store.OutputStore.put_if).
  Two writers can never both write version v: one of them fails and learns it.
- An invocation that takes the run's lease first appends a ``begin`` entry at the end of the log (the
  fence). From then on no earlier invocation can append anything: the next version it would write is
  taken. Whoever finds a version it meant to write taken by another invocation has lost the run
  (:class:`LogFencedError`) and writes nothing more: no commit, index, manifest or sweep.
- A ``commit`` entry names every unit it commits and, per unit, every file (path, bytes, md5, rows) of
  every table and the unit's work-item keys with their outcome; data files have attempt-unique names and
  are never rewritten, so nothing a commit names ever changes. A unit's tables are committed together,
  in one entry, or not at all.
- ``retry`` entries hand a unit's retryable error rows back to planning (its errors file is replaced by
  a copy without them), ``index`` entries name the done-index files that summarise the log up to a
  version (diffseg.lake.done_index), ``swept`` entries name invocations whose uncommitted files were
  removed (diffseg.lake.sweep), ``finish`` entries close an invocation (status, counts).
- Readers replay the entries in order (from the newest index on); an entry that cannot be read is an
  error (:class:`CommitRecordError`), never "not committed".
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from diffseg.lake.manifest import utc_stamp
from diffseg.lake.store import TMP_PREFIX, OutputStore

log = logging.getLogger("diffseg.lake.log")

LOG = "_log"
FORMAT = 2
LAST_INDEX = "_last_index.json"  # a hint: the version of the newest index entry (verified when read)
_ENTRY = re.compile(r"^(\d{20})\.json$")
READ_ATTEMPTS = 5  # tries per entry read for transient storage errors


class CommitRecordError(RuntimeError):
    """A commit record (log entry) exists but cannot be read: readers fail instead of returning fewer rows."""


class LogFencedError(RuntimeError):
    """Another invocation wrote to this run's log: this invocation lost the run and must write nothing more."""


def new_invocation_id() -> str:
    """12 hex digits naming one invocation (in file names, rows and log entries)."""
    return uuid.uuid4().hex[:12]


def log_dir(run_id: str) -> str:
    return f"{LOG}/{run_id}"


def entry_path(run_id: str, version: int) -> str:
    return f"{LOG}/{run_id}/{version:020d}.json"


def list_versions(store: OutputStore, run_id: str) -> list[int]:
    """The versions present in the run's log, ascending (one listing)."""
    names = (rel.rsplit("/", 1)[-1] for rel in store.list(log_dir(run_id)))
    return sorted(int(m[1]) for m in map(_ENTRY.match, names) if m)


def logged_runs(store: OutputStore) -> list[str]:
    """Run ids that have a commit log under OUTPUT."""
    return sorted({rel.split("/")[1] for rel in store.list(LOG) if rel.count("/") == 2})


def read_entries(store: OutputStore, run_id: str, versions: list[int]) -> list[dict]:
    """The entries of `versions` (ascending), read concurrently; transient failures are retried, and an entry
    that still cannot be read or parsed raises CommitRecordError naming it."""
    rels = [entry_path(run_id, v) for v in versions]
    got: dict[str, bytes | Exception] = {}
    todo = list(rels)
    for attempt in range(READ_ATTEMPTS):
        if not todo:
            break
        for rel, data in store.get_many(todo).items():
            got[rel] = data
        todo = [r for r in todo if isinstance(got[r], Exception) and not isinstance(got[r], FileNotFoundError)]
        if todo and attempt + 1 < READ_ATTEMPTS:
            time.sleep(min(8.0, 0.5 * 2**attempt))
    entries = []
    for rel, version in zip(rels, versions):
        data = got[rel]
        try:
            if isinstance(data, Exception):
                raise data
            entry = json.loads(data)
            if entry.get("version") != version or entry.get("run_id") != run_id:
                raise ValueError(f"it says version {entry.get('version')} of run {entry.get('run_id')!r}")
        except Exception as exc:
            raise CommitRecordError(
                f"cannot read commit record {store.uri(rel)} ({type(exc).__name__}: {exc}); the run's committed "
                f"rows cannot be known without it. If the store is failing, retry later; if the record was "
                f"deleted or damaged by hand, restore it from a backup"
            ) from exc
        entries.append(entry)
    return entries


class CommitLog:
    """The writer's handle on a run's log: appends entries at the end, one at a time, as `invocation`.

    Use :meth:`begin` once (the fence), then :meth:`append`. Not thread-safe: one thread appends."""

    def __init__(self, store: OutputStore, run_id: str, invocation: str):
        self.store, self.run_id, self.invocation = store, run_id, invocation
        self.next_version: int | None = None  # known after begin()
        self.fenced: str | None = None

    def _body(self, version: int, kind: str, fields: dict) -> bytes:
        entry = {"format": FORMAT, "run_id": self.run_id, "version": version, "kind": kind,
                 "invocation": self.invocation, "at": utc_stamp(), **fields}
        return (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()

    def _put(self, version: int, body: bytes) -> bool:
        """Put-if-absent of entry `version`; True when it holds `body` afterwards (ours), False when another
        writer's entry is there. A put whose reply was lost (it may have landed) is settled by reading back."""
        rel = entry_path(self.run_id, version)
        for attempt in range(READ_ATTEMPTS):
            try:
                if self.store.put_if(rel, body, None):
                    return True
                break
            except OSError as exc:  # throttled, reset, timed out: the entry may or may not exist now
                log.warning("run %r: writing log entry %d failed (%s); retrying", self.run_id, version, exc)
                time.sleep(min(8.0, 0.5 * 2**attempt))
        else:
            raise OSError(f"could not write log entry {version} of run {self.run_id!r} after {READ_ATTEMPTS} tries")
        return read_entries(self.store, self.run_id, [version])[0] == json.loads(body)

    def begin(self, fields: dict | None = None, attempts: int = 20) -> dict:
        """Appends this invocation's ``begin`` entry at the end of the log (the fence); returns it.
        Raises LogFencedError when another invocation keeps appending (it still holds the run)."""
        for _ in range(attempts):
            versions = list_versions(self.store, self.run_id)
            version = versions[-1] + 1 if versions else 0
            body = self._body(version, "begin", fields or {})
            if self._put(version, body):
                self.next_version = version + 1
                return json.loads(body)
            time.sleep(0.2)
        raise LogFencedError(f"run {self.run_id!r}: another invocation kept appending to the run's log while this one "
                             f"tried to start; it still writes the run: wait for it to finish")

    def append(self, kind: str, fields: dict) -> dict:
        """Appends one entry; returns it. LogFencedError when another invocation took the run meanwhile."""
        if self.fenced is not None:
            raise LogFencedError(self.fenced)
        if self.next_version is None:
            raise RuntimeError("CommitLog.append before begin()")
        version = self.next_version
        body = self._body(version, kind, fields)
        if not self._put(version, body):
            other = read_entries(self.store, self.run_id, [version])[0]
            self.fenced = (f"run {self.run_id!r}: invocation {other.get('invocation')} wrote version {version} of the "
                           f"run's log ({other.get('kind')} at {other.get('at')}): it took the run over, so this "
                           f"invocation ({self.invocation}) writes nothing more")
            raise LogFencedError(self.fenced)
        self.next_version = version + 1
        return json.loads(body)

    def write_hint(self, name: str, obj: dict) -> None:
        """A small hint object beside the entries (e.g. the newest index version); readers verify it."""
        try:
            self.store.put_json(f"{log_dir(self.run_id)}/{name}", obj)
        except Exception as exc:
            log.warning("run %r: could not write the log hint %s (%s); readers scan the log instead", self.run_id, name, exc)


def is_log_file(rel: str) -> bool:
    """True for names under ``_log/`` that are entries (not hints or temporaries)."""
    name = rel.rsplit("/", 1)[-1]
    return bool(_ENTRY.match(name)) and not name.startswith(TMP_PREFIX)
