"""Listing INPUT (folders, prefixes, globs, manifests; local and S3) and reading bytes with retries."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobtest_utils import put_files

from diffseg.inputs import InputError, list_inputs, read_uris

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


# ---------------------------------------------------------------- hostile names and files (issue 14)


def test_a_name_with_double_colon_is_that_file_not_a_chained_url(tmp_path, bucket):
    from diffseg.codecs.images import read_bytes

    local = put_files(str(tmp_path), {"colon": b"the wrong file", "colon::x.png": b"the right file"})
    remote = put_files(f"s3://{bucket}", {"colon::y.png": b"remote right file"})
    uris = list_inputs(str(tmp_path))
    assert uris == [f"file://{tmp_path}/colon::x.png"] == [u for u in local if u.endswith(".png")]
    got = read_uris(uris + remote)
    assert got[uris[0]] == b"the right file" and got[remote[0]] == b"remote right file"
    assert read_bytes(uris[0]) == b"the right file"  # python -m diffseg reads through load_image -> read_bytes
    (tmp_path / "list.txt").write_text("colon::x.png\n")
    assert list_inputs(str(tmp_path / "list.txt")) == uris


def test_a_hash_inside_a_manifest_path_is_part_of_the_path(tmp_path):
    put_files(str(tmp_path), {"take#2.jpg": b"1", "take.jpg": b"wrong", "a.jpg": b"2"})
    (tmp_path / "list.txt").write_text("# a comment line\n  # an indented comment\ntake#2.jpg\na.jpg # not a comment\n")
    assert list_inputs(str(tmp_path / "list.txt")) == [f"file://{tmp_path}/a.jpg # not a comment",
                                                       f"file://{tmp_path}/take#2.jpg"]
    got = read_uris([f"file://{tmp_path}/take#2.jpg"])
    assert got[f"file://{tmp_path}/take#2.jpg"] == b"1"


def test_a_name_that_is_not_utf8_is_listed_escaped_and_read_as_a_list_error(tmp_path, caplog):
    import os

    from diffseg.inputs import NonUtf8NameError, escape_name, unescape_name

    put_files(str(tmp_path), {"good.jpg": b"ok", "100%.jpg": b"percent"})
    raw = os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9 %41.jpg")
    with open(raw, "wb") as f:
        f.write(b"latin-1 name")
    uris = list_inputs(str(tmp_path))
    escaped = f"file://{tmp_path}/caf%E9 %2541.jpg"
    assert uris == sorted([f"file://{tmp_path}/100%.jpg", escaped, f"file://{tmp_path}/good.jpg"])
    assert "not valid UTF-8" in caplog.text
    # reversible: the escaped path gives the name's bytes back
    assert unescape_name(escaped.removeprefix("file://")) == raw
    assert escape_name(os.fsdecode(raw)) == escaped.removeprefix("file://")
    got = read_uris(uris)
    assert isinstance(got[escaped], NonUtf8NameError) and got[escaped].stage == "list"
    assert "not valid UTF-8" in str(got[escaped]) and escaped in str(got[escaped])
    assert got[f"file://{tmp_path}/good.jpg"] == b"ok" and got[f"file://{tmp_path}/100%.jpg"] == b"percent"


def test_fifos_and_device_links_are_not_listed_and_never_read(tmp_path, caplog):
    import os

    from diffseg.inputs import NotRegularFileError

    put_files(str(tmp_path), {"real.jpg": b"pixels"})
    os.mkfifo(tmp_path / "fifo.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    os.symlink(tmp_path / "real.jpg", tmp_path / "link.jpg")
    base = f"file://{tmp_path}"
    assert list_inputs(str(tmp_path)) == [f"{base}/link.jpg", f"{base}/real.jpg"]
    assert list_inputs(str(tmp_path / "*.jpg")) == [f"{base}/link.jpg", f"{base}/real.jpg"]
    assert "not regular files" in caplog.text
    # named explicitly (a manifest): refused at read, without opening (a FIFO would block forever)
    (tmp_path / "list.txt").write_text("fifo.jpg\nzero.jpg\nreal.jpg\n")
    uris = list_inputs(str(tmp_path / "list.txt"))
    got = read_uris(uris, timeout=5)
    for name in ("fifo.jpg", "zero.jpg"):
        assert isinstance(got[f"{base}/{name}"], NotRegularFileError), got[f"{base}/{name}"]
        assert "not a regular file" in str(got[f"{base}/{name}"])
    assert got[f"{base}/real.jpg"] == b"pixels"


def test_every_read_has_a_byte_cap_and_a_timeout(tmp_path, bucket, monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    from diffseg.inputs import READ_MAX_BYTES, READ_TIMEOUT_S, ReadLimitError

    assert READ_MAX_BYTES == 256 << 20 and READ_TIMEOUT_S == 120
    local = put_files(str(tmp_path), {"big.jpg": b"x" * 1000, "small.jpg": b"x" * 100})
    remote = put_files(f"s3://{bucket}", {"big.jpg": b"x" * 1000, "small.jpg": b"x" * 100})
    got = read_uris(local + remote, max_bytes=500)
    for uri in (local[0], remote[0]):
        assert isinstance(got[uri], ReadLimitError), got[uri]
        assert "read cap of 500 bytes (--max-read-bytes)" in str(got[uri])
    assert got[local[1]] == got[remote[1]] == b"x" * 100

    import threading

    release = threading.Event()
    real = MemoryFileSystem.cat_file

    def stalled(self, path, start=None, end=None, **kw):
        if "slow" in path:
            release.wait(30)  # a storage call that never answers
        return real(self, path, start, end, **kw)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", stalled)
    MemoryFileSystem().pipe_file("/lake/slow.jpg", b"late")
    MemoryFileSystem().pipe_file("/lake/fast.jpg", b"on time")
    got = read_uris(["memory:///lake/slow.jpg", "memory:///lake/fast.jpg"], timeout=0.5)
    release.set()
    assert isinstance(got["memory:///lake/slow.jpg"], ReadLimitError)
    assert "read timeout of 0.5 s (--read-timeout)" in str(got["memory:///lake/slow.jpg"])
    assert got["memory:///lake/fast.jpg"] == b"on time"


def test_a_zero_byte_object_on_s3_reads_as_empty_not_as_a_read_error(s3_endpoint, bucket):
    """A ranged GET of an empty S3 object is refused with 416; the image is empty (a decode error later), not unreadable."""
    import boto3

    from diffseg.inputs import read_uris

    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=bucket, Key="empty.jpg", Body=b"")
    uri = f"s3://{bucket}/empty.jpg"
    assert read_uris([uri]) == {uri: b""}


def test_the_arrow_listing_holds_the_same_uris_in_the_same_order(tmp_path):
    """list_inputs_array (what planning holds) = list_inputs, also for repeats, non-ASCII and code points
    whose UTF-8 bytes sort differently from UTF-16 (Python's order is code point order)."""
    from diffseg.inputs import list_inputs_array

    names = ["b.jpg", "a.jpg", "é.jpg", "z.jpg", "\uffe0.jpg", "\U0001f600.jpg", "A.jpg", "sub/a.jpg"]
    put_files(str(tmp_path / "lake"), {n: b"1" for n in names})
    (tmp_path / "list.txt").write_text("\n".join(f"lake/{n}" for n in names + names[:3]))
    for spec in (str(tmp_path / "lake"), str(tmp_path / "list.txt")):
        array = list_inputs_array(spec)
        assert isinstance(array, pa.StringArray) and array.to_pylist() == list_inputs(spec)
    assert len(list_inputs_array(str(tmp_path / "list.txt"))) == len(names)
    with pytest.raises(InputError, match="does not exist"):
        list_inputs_array(str(tmp_path / "lake" / "sub" / "none"))
