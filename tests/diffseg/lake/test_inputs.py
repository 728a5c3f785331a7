"""Listing INPUT (folders, prefixes, globs, manifests; local and S3) and reading bytes with retries."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobtest_utils import put_files

from diffseg.lake.inputs import InputError, list_inputs, read_uris

FILES = {
    "a.jpg": b"1",
    "B.PNG": b"2",
    "sub/deeper/c.JpEg": b"3",
    "notes.txt": b"not listed",
    "sub/d.parquet": b"not listed",
    ".hidden/e.webp": b"4",
}


def test_local_folder_is_listed_recursively_by_extension_in_any_case(tmp_path):
    put_files(str(tmp_path / "lake"), FILES)
    uris = list_inputs(str(tmp_path / "lake"))
    base = f"file://{tmp_path}/lake"
    assert uris == sorted([f"{base}/a.jpg", f"{base}/B.PNG", f"{base}/sub/deeper/c.JpEg", f"{base}/.hidden/e.webp"])
    # however INPUT is spelled, the URIs (the keys of the outputs) are the same
    assert list_inputs(f"file://{tmp_path}/lake/") == uris


def test_glob_and_single_file(tmp_path):
    put_files(str(tmp_path), FILES)
    assert list_inputs(str(tmp_path / "*.jpg")) == [f"file://{tmp_path}/a.jpg"]
    # a glob takes every matching file, whatever its extension (non-images become decode errors)
    assert list_inputs(str(tmp_path / "n*")) == [f"file://{tmp_path}/notes.txt"]
    assert list_inputs(str(tmp_path / "B.PNG")) == [f"file://{tmp_path}/B.PNG"]


def test_text_and_parquet_manifests_resolve_relative_paths(tmp_path):
    put_files(str(tmp_path), FILES)
    (tmp_path / "list.txt").write_text(f"# nightly batch\na.jpg\n\n{tmp_path}/B.PNG\ns3://other-bucket/x.jpg\n")
    assert list_inputs(str(tmp_path / "list.txt")) == sorted(
        [f"file://{tmp_path}/a.jpg", f"file://{tmp_path}/B.PNG", "s3://other-bucket/x.jpg"]
    )
    pq.write_table(pa.table({"id": [1, 2], "uri": ["sub/deeper/c.JpEg", "a.jpg"]}), tmp_path / "list.parquet")
    assert list_inputs(str(tmp_path / "list.parquet")) == [f"file://{tmp_path}/a.jpg", f"file://{tmp_path}/sub/deeper/c.JpEg"]
    pq.write_table(pa.table({"n": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="needs a 'uri'"):
        list_inputs(str(tmp_path / "bad.parquet"))


def test_s3_prefix_glob_and_key_prefix(bucket):
    put_files(f"s3://{bucket}/images", FILES)
    uris = list_inputs(f"s3://{bucket}/images/")
    assert uris == sorted(f"s3://{bucket}/images/{n}" for n in ("a.jpg", "B.PNG", "sub/deeper/c.JpEg", ".hidden/e.webp"))
    assert list_inputs(f"s3://{bucket}/images/sub/*/*") == [f"s3://{bucket}/images/sub/deeper/c.JpEg"]
    # an object-store key prefix that is not a "folder"
    assert list_inputs(f"s3://{bucket}/images/a") == [f"s3://{bucket}/images/a.jpg"]


def test_unreadable_or_empty_input_is_a_clear_error(tmp_path, bucket):
    with pytest.raises(InputError, match="does not exist"):
        list_inputs(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="does not exist"):
        list_inputs("s3://no-such-bucket-for-diffseg/images/")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(InputError, match="holds no image files"):
        list_inputs(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="matches no file"):
        list_inputs(str(tmp_path / "*.tif"))


def test_read_uris_returns_bytes_or_the_error_of_each(tmp_path, bucket):
    local = put_files(str(tmp_path), {"x.jpg": b"local"})
    remote = put_files(f"s3://{bucket}", {"y.jpg": b"remote"})
    missing = [f"file://{tmp_path}/nope.jpg", f"s3://{bucket}/nope.jpg", "nosuchproto://a/b.jpg"]
    got = read_uris(local + remote + missing)
    assert got[local[0]] == b"local" and got[remote[0]] == b"remote"
    for uri in missing:
        assert isinstance(got[uri], Exception), uri
    assert isinstance(got[missing[0]], FileNotFoundError) and isinstance(got[missing[1]], FileNotFoundError)


def test_transient_storage_errors_are_retried_missing_files_are_not(monkeypatch, tmp_path):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from diffseg.lake.store import OutputStore

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/lake/a.jpg", b"pixels")
    calls = []
    real = MemoryFileSystem.cat_file

    def flaky(self, path, start=None, end=None, **kw):
        calls.append(path)
        if path.endswith("a.jpg") and calls.count(path) == 1:
            raise ConnectionResetError("connection reset by peer")
        return real(self, path, start, end, **kw)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", flaky)
    got = read_uris(["memory:///lake/a.jpg", "memory:///lake/missing.jpg"])
    assert got["memory:///lake/a.jpg"] == b"pixels"
    assert isinstance(got["memory:///lake/missing.jpg"], FileNotFoundError)
    assert calls.count("/lake/a.jpg") == 2 and calls.count("/lake/missing.jpg") == 1

    store = OutputStore(str(tmp_path))
    real_put, failures = store._put, []

    def flaky_put(rel, data):
        if not failures:
            failures.append(rel)
            raise OSError("SlowDown: please reduce your request rate")
        return real_put(rel, data)

    monkeypatch.setattr(store, "_put", flaky_put)
    store.put("masks/x.parquet", b"data")
    assert failures == ["masks/x.parquet"] and store.get("masks/x.parquet") == b"data"
