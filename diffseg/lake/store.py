"""OUTPUT as a small key/value store on any fsspec filesystem (local folder, ``s3://``, ``gs://``...).

Writes of small objects are whole-object puts on object stores (atomic there); on a local disk they go
to a hidden temporary name and are renamed into place, so a killed run never leaves a half-written file
under a final name. Hidden names (``.tmp-*``) are skipped by pyarrow/DuckDB dataset readers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from diffseg.model import redact_uri

TMP_PREFIX = ".tmp-"
WRITE_ATTEMPTS = 4  # tries per object write for transient storage errors (throttling, resets)


class OutputError(ValueError):
    """OUTPUT cannot be written or read."""


class OutputStore:
    """Paths relative to OUTPUT (``"masks/part-x.parquet"``) mapped onto its filesystem."""

    def __init__(self, output: str):
        self.output = output
        try:
            self.fs, root = url_to_fs(output)
        except (ImportError, ValueError) as exc:
            raise OutputError(f"OUTPUT {redact_uri(output)!r}: no filesystem for it ({exc})") from exc
        self.root = root.rstrip("/") or root
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.local = self.protocol in ("file", "local")
        if self.local:
            self.root = os.path.abspath(self.root)

    def __repr__(self) -> str:
        return f"OutputStore({redact_uri(self.output)!r})"

    def path(self, rel: str) -> str:
        """The filesystem path of `rel` under OUTPUT."""
        return f"{self.root}/{rel}"

    def uri(self, rel: str) -> str:
        """The full URI (with scheme) of `rel` under OUTPUT, for readers."""
        return self.fs.unstrip_protocol(self.path(rel)) if not self.local else "file://" + self.path(rel)

    def put(self, rel: str, data: bytes) -> None:
        """Writes `data` to `rel` (atomic rename on local disks; a single put on object stores).

        Transient errors are retried with backoff; missing buckets and permission errors are not.
        """
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return self._put(rel, data)
            except (FileNotFoundError, PermissionError):
                raise
            except OSError:
                if attempt + 1 == WRITE_ATTEMPTS:
                    raise
                time.sleep(0.5 * 2**attempt)

    def _put(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def put_if(self, rel: str, data: bytes, expected: bytes | None) -> bool:
        """Conditional write: `data` to `rel` only if `rel` is absent (`expected` None) or still holds
        exactly `expected`. Returns False when the condition failed (someone else wrote or removed it).

        S3 (s3fs): an ``If-None-Match: *`` / ``If-Match: <etag>`` put, atomic on the server. Local disks:
        a hard link of a fully written temporary for a new object (atomic, NFS included); a replacement compares and renames,
        which leaves a window of one read between two processes. Other stores: write, then read back
        (the last writer wins; docs/job.md "The lease" says what that means)."""
        path = self.path(rel)
        if self.protocol in ("s3", "s3a"):
            bucket, key, _ = self.fs.split_path(path)
            condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": self._etag(path, expected)}
            if condition.get("IfMatch") is None and expected is not None:
                return False
            try:
                self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
            except (FileExistsError, FileNotFoundError):
                return False
            except OSError as exc:
                if "PreconditionFailed" in str(exc) or "pre-conditions" in str(exc):
                    return False
                raise
            self.invalidate()
            return True
        if self.local and expected is None:
            # the whole object appears at once: written under a hidden name, then hard-linked into place
            # (link fails when the name exists; an O_EXCL create would show others an empty file first)
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}")
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        current = self.get(rel) if self.exists(rel) else None
        if current != expected:
            return False
        self.put(rel, data)
        return self.get(rel) == data

    def _etag(self, path: str, expected: bytes) -> str | None:
        """The ETag of the S3 object at `path` when it still holds `expected`, else None."""
        self.invalidate()
        try:
            info = self.fs.info(path)
            if self.fs.cat_file(path) != expected:
                return None
        except FileNotFoundError:
            return None
        return info.get("ETag") or info.get("etag")

    def put_parquet(self, rel: str, table: pa.Table, metadata: Mapping[bytes, bytes] | None = None) -> dict:
        """Writes `table` to `rel` as zstd Parquet (see :func:`parquet_bytes`); returns what identifies the
        file: ``{"path": rel, "bytes": size, "md5": hex}`` (on S3 the md5 is the object's ETag)."""
        data = parquet_bytes(table, metadata)
        self.put(rel, data)
        return {"path": rel, "bytes": len(data), "md5": hashlib.md5(data).hexdigest()}

    def put_json(self, rel: str, obj) -> None:
        self.put(rel, (json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n").encode())

    def get(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def get_json(self, rel: str):
        return json.loads(self.get(rel))

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def get_many(self, rels: list[str]) -> dict[str, bytes | Exception]:
        """Contents of several objects, fetched concurrently on object stores; errors are returned."""
        if not rels:
            return {}
        paths = [self.path(r) for r in rels]
        got = self.fs.cat_ranges(paths, None, None, on_error="return")
        return dict(zip(rels, got))

    def list(self, rel_dir: str) -> list[str]:
        """Relative paths of every file below `rel_dir` (recursive; empty when it does not exist)."""
        self.invalidate()
        base = self.path(rel_dir).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        prefix = self.root + "/"
        return sorted(p[len(prefix):] for p in found if p.startswith(prefix))

    def list_prefix(self, rel_prefix: str) -> list[str]:
        """Relative paths of the files whose path starts with `rel_prefix` (a name prefix inside one folder,
        e.g. ``masks/part-default-0123abcd4567-``): one prefix listing on S3, not the whole folder."""
        self.invalidate()
        folder, _, stem = rel_prefix.rpartition("/")
        if self.protocol in ("s3", "s3a"):
            bucket, key, _ = self.fs.split_path(self.path(rel_prefix))
            found, token = [], None
            while True:
                kwargs = {"Bucket": bucket, "Prefix": key, **({"ContinuationToken": token} if token else {})}
                reply = self.fs.call_s3("list_objects_v2", **kwargs)
                found += [f"{bucket}/{item['Key']}" for item in reply.get("Contents", [])]
                token = reply.get("NextContinuationToken")
                if not reply.get("IsTruncated") or not token:
                    break
        else:
            base = self.path(folder) if folder else self.root
            try:
                names = self.fs.ls(base, detail=False)
            except FileNotFoundError:
                return []
            found = [p for p in names if p.rsplit("/", 1)[-1].startswith(stem)]
        prefix = self.root + "/"
        return sorted(p[len(prefix):] for p in found if p.startswith(prefix) and p[len(prefix):].startswith(rel_prefix))

    def remove(self, rels: list[str]) -> None:
        """Deletes `rels` (missing ones are fine): one batched request per 1000 keys on S3."""
        if not rels:
            return
        if not self.local and self.protocol in ("s3", "s3a"):
            paths = [self.path(r) for r in rels]
            for start in range(0, len(paths), 1000):
                for attempt in range(WRITE_ATTEMPTS):
                    try:
                        self.fs.rm(paths[start: start + 1000])
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        if attempt + 1 == WRITE_ATTEMPTS:
                            raise
                        time.sleep(0.5 * 2**attempt)
            self.invalidate()
            return
        for rel in rels:
            try:
                self.fs.rm_file(self.path(rel))
            except FileNotFoundError:
                pass

    def invalidate(self) -> None:
        """Drops fsspec's cached listings (new files written by other processes become visible)."""
        try:
            self.fs.invalidate_cache()
        except Exception:
            pass

    def check_writable(self) -> None:
        """Writes, reads back and removes a probe object; raises OutputError naming OUTPUT otherwise.

        Leaves OUTPUT as it found it: local folders the probe had to create are removed again (a run
        refused by a later check leaves no empty OUTPUT behind; the first real write creates them)."""
        rel = f"{TMP_PREFIX}probe-{uuid.uuid4().hex}"
        created = []  # local folders missing before the probe, deepest first
        if self.local:
            folder = os.path.abspath(self.root)
            while folder and not os.path.exists(folder) and os.path.dirname(folder) != folder:
                created.append(folder)
                folder = os.path.dirname(folder)
        try:
            if self.local:
                os.makedirs(self.root, exist_ok=True)
            self.put(rel, b"diffseg write probe")
            if self.get(rel) != b"diffseg write probe":
                raise OSError("the probe object read back differs from what was written")
            self.remove([rel])
        except OutputError:
            raise
        except Exception as exc:
            raise OutputError(
                f"OUTPUT {redact_uri(self.output)!r} is not writable: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            for folder in created:
                try:
                    os.rmdir(folder)  # only if still empty: never anything someone else put there
                except OSError:
                    break


def parquet_bytes(table: pa.Table, metadata: Mapping[bytes, bytes] | None = None) -> bytes:
    """`table` as zstd Parquet bytes, with `metadata` added to its schema's key-value metadata."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
