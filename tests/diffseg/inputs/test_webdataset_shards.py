"""WebDataset shards written by the `webdataset` package: listed, grouped and read as webdataset reads
them, one request stream per shard; bad members become error items with their own identities."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from diffseg.codecs.images import ImageDecodeError, decode_image
from diffseg.inputs import InputError, ReadLimits, list_input, list_sources, read_source


def jpeg(seed: int, size=(24, 16)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def write_shards(folder, n: int = 10, per_shard: int = 4) -> dict[str, dict]:
    """img2dataset-like shards written by webdataset's ShardWriter: key.jpg + key.json + key.txt."""
    import webdataset as wds

    samples = {f"{i:09d}": {"jpg": jpeg(i), "json": {"caption": f"photo {i}", "i": i}, "txt": f"photo {i}"}
               for i in range(n)}
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for key, s in samples.items():
            sink.write({"__key__": key, "jpg": s["jpg"], "json": json.dumps(s["json"]).encode(), "txt": s["txt"]})
    return samples


def read_all(sources, **limits):
    return [item for source in sources for item in read_source(source, ReadLimits(**limits))]


def test_shards_written_by_webdataset_read_as_its_own_reader_reads_them(tmp_path):
    import webdataset as wds

    samples = write_shards(tmp_path / "shards", n=10, per_shard=4)
    sources = list_sources(str(tmp_path / "shards"))  # auto: a folder of .tar shards
    base = f"file://{tmp_path}/shards"
    assert [s.id for s in sources] == [f"{base}/00000.tar", f"{base}/00001.tar", f"{base}/00002.tar"]
    assert {s.form for s in sources} == {"webdataset"} and all(s.count is None for s in sources)
    items = read_all(sources)
    assert [it.identity for it in items] == [f"{base}/{i // 4:05d}.tar#{i:09d}" for i in range(10)]
    assert all(it.error is None and it.metadata is None for it in items)
    # byte for byte what webdataset's own reader gives for each sample
    reference = {s["__key__"]: s["jpg"] for s in wds.WebDataset([s.id.removeprefix("file://") for s in sources],
                                                                 shardshuffle=False)}
    assert {it.identity.rsplit("#", 1)[1]: it.data for it in items} == reference
    assert reference == {k: s["jpg"] for k, s in samples.items()}
    assert decode_image(items[3].data).shape == (16, 24, 3)
    # sidecars kept when asked; the identities sort as the samples are stored
    with_meta = read_all(list_sources(str(tmp_path / "shards"), "webdataset:metadata=1"))
    assert json.loads(with_meta[7].metadata["json"]) == {"caption": "photo 7", "i": 7}
    assert with_meta[7].metadata["txt"] == "photo 7"
    assert sorted(it.identity for it in items) == [it.identity for it in items]


def test_globs_brace_lists_and_a_shard_list_name_the_same_shards(tmp_path, caplog):
    write_shards(tmp_path / "shards", n=10, per_shard=4)
    want = [s.id for s in list_sources(str(tmp_path / "shards"))]
    assert [s.id for s in list_sources(str(tmp_path / "shards" / "*.tar"))] == want
    assert [s.id for s in list_sources(str(tmp_path / "shards" / "{00000..00002}.tar"))] == want
    (tmp_path / "shards.txt").write_text("shards/00002.tar\nshards/00000.tar\nshards/00001.tar\n")
    assert [s.id for s in list_sources(str(tmp_path / "shards.txt"))] == want
    # a brace list naming a shard that does not exist: listed, with a warning; reading it is one error
    sources = list_sources(str(tmp_path / "shards" / "{00001..00003}.tar"))
    assert "1 of 3 shard(s) do not exist" in caplog.text
    missing = list(read_source(sources[-1]))
    assert len(missing) == 1 and missing[0].identity == f"file://{tmp_path}/shards/00003.tar#@0"
    assert missing[0].error.as_tuple()[:2] == ("read", "FileNotFoundError") and not missing[0].error.retryable
    with pytest.raises(InputError, match="none of its 2 shard"):
        list_sources(str(tmp_path / "shards" / "{00005..00006}.tar"))


def _tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_members_are_error_items_with_their_own_identities(tmp_path):
    good, big = jpeg(1), jpeg(2, size=(300, 300))
    _tar(tmp_path / "bad.tar", [
        ("a.jpg", good), ("a.json", b"{}"),
        ("b.json", b"{}"), ("b.txt", b"caption only"),  # no image member
        ("README", b"no key"),  # no key
        ("c.jpg", b"not a jpeg at all"),  # corrupt: read as is, its decode fails
        ("d.jpg", good), ("d.jpg", good),  # an extension repeated within a sample
        ("e.jpg", good), ("e.png", good),  # two image members
        ("a.txt", b"late"),  # a key seen earlier in the shard
        ("f.jpg", big),  # above the byte cap
        ("sub/g.webp", good),  # a key with a folder
        ("__index__", b"skipped, as webdataset skips it"),
    ])
    uri = f"file://{tmp_path}/bad.tar"
    items = {it.identity: it for it in read_all(list_sources(uri), max_bytes=len(big) - 1)}
    offsets = {m.name: m.offset for m in tarfile.open(tmp_path / "bad.tar").getmembers()}
    later_d = [m.offset for m in tarfile.open(tmp_path / "bad.tar").getmembers() if m.name == "d.jpg"][1]
    assert set(items) == {f"{uri}#a", f"{uri}#b", f"{uri}#README@{offsets['README']}", f"{uri}#c", f"{uri}#d",
                          f"{uri}#d.jpg@{later_d}", f"{uri}#e", f"{uri}#a.txt@{offsets['a.txt']}", f"{uri}#f",
                          f"{uri}#sub/g"}
    assert items[f"{uri}#a"].data == good and items[f"{uri}#d"].data == good and items[f"{uri}#sub/g"].data == good
    assert items[f"{uri}#b"].error.as_tuple()[:2] == ("decode", "NoImageError")
    assert "has no image member (its members: json, txt" in items[f"{uri}#b"].error.message
    assert items[f"{uri}#README@{offsets['README']}"].error.as_tuple()[:2] == ("list", "MemberError")
    assert "has no key" in items[f"{uri}#README@{offsets['README']}"].error.message
    assert "already has a 'jpg' member" in items[f"{uri}#d.jpg@{later_d}"].error.message
    assert "appeared earlier in shard" in items[f"{uri}#a.txt@{offsets['a.txt']}"].error.message
    assert "several image members (jpg, png)" in items[f"{uri}#e"].error.message
    assert items[f"{uri}#f"].error.as_tuple()[:2] == ("read", "ReadLimitError") and not items[f"{uri}#f"].error.retryable
    with pytest.raises(ImageDecodeError):
        decode_image(items[f"{uri}#c"].data)
    assert not any(it.error.retryable for it in items.values() if it.error)
    # image=EXT picks the member when a sample has several
    chosen = {it.identity: it for it in read_all(list_sources(uri, "webdataset:image=png"))}
    assert chosen[f"{uri}#e"].data == good and chosen[f"{uri}#a"].error.error_type == "NoImageError"


def test_a_truncated_shard_gives_its_samples_then_one_error_where_it_breaks(tmp_path):
    write_shards(tmp_path / "shards", n=4, per_shard=4)
    data = (tmp_path / "shards" / "00000.tar").read_bytes()
    members = tarfile.open(tmp_path / "shards" / "00000.tar").getmembers()
    third = [m for m in members if m.name.startswith("000000002")][0]
    (tmp_path / "cut.tar").write_bytes(data[: third.offset_data + 5])  # cut inside sample 2's first member
    uri = f"file://{tmp_path}/cut.tar"
    items = read_all(list_sources(uri))
    assert [it.identity for it in items[:2]] == [f"{uri}#000000000", f"{uri}#000000001"]
    assert all(it.error is None for it in items[:2])
    assert items[2].identity == f"{uri}#000000002" and items[2].error is not None
    assert items[3].identity.startswith(f"{uri}#@") and "breaks after byte" in items[3].error.message
    assert items[3].error.as_tuple()[:2] == ("read", "CorruptContainerError") and not items[3].error.retryable and len(items) == 4


def test_shards_on_s3_are_read_with_one_request_stream_each(tmp_path, bucket, monkeypatch):
    """Counts the ranged GETs s3fs sends per shard: a few per shard whatever its number of images."""
    import fsspec
    import s3fs

    write_shards(tmp_path / "shards", n=30, per_shard=10)
    fs = fsspec.filesystem("s3")
    fs.put(str(tmp_path / "shards") + "/", f"{bucket}/laion/", recursive=True)
    calls: list[str] = []
    real = s3fs.core.S3File._fetch_range

    def counted(self, start, end):
        calls.append(self.path)
        return real(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counted)
    listing = list_input(f"s3://{bucket}/laion/{{00000..00002}}.tar")
    assert listing.form == "webdataset" and len(listing) == 3
    items = read_all(listing.sources)
    assert len(items) == 30 and all(it.error is None for it in items)
    assert items[12].identity == f"s3://{bucket}/laion/00001.tar#000000012"
    per_shard = {path: calls.count(path) for path in set(calls)}
    print("GET requests per shard of 10 images:", per_shard)
    assert len(per_shard) == 3 and max(per_shard.values()) <= 2


def test_gzipped_shards_are_read_too(tmp_path):
    import webdataset as wds

    (tmp_path / "gz").mkdir()
    with wds.ShardWriter(str(tmp_path / "gz" / "%05d.tar.gz"), maxcount=3, verbose=0) as sink:
        for i in range(5):
            sink.write({"__key__": f"{i:04d}", "jpg": jpeg(i)})
    sources = list_sources(str(tmp_path / "gz"))
    assert [s.id.rsplit("/", 1)[1] for s in sources] == ["00000.tar.gz", "00001.tar.gz"]
    assert [it.data for it in read_all(sources)] == [jpeg(i) for i in range(5)]


def _memory_shard(tmp_path, name: str, n: int) -> str:
    from fsspec.implementations.memory import MemoryFileSystem

    write_shards(tmp_path / name, n=n, per_shard=n)
    MemoryFileSystem().pipe_file(f"/{name}/00000.tar", (tmp_path / name / "00000.tar").read_bytes())
    return f"memory:///{name}/00000.tar"


def test_a_broken_connection_resumes_the_shard_where_it_was(tmp_path, monkeypatch):
    from fsspec.implementations.memory import MemoryFile

    uri = _memory_shard(tmp_path, "flaky", 6)
    real, reads = MemoryFile.read, []

    def flaky(self, n=-1):
        reads.append(self.tell())
        if len(reads) == 3:
            raise ConnectionResetError("connection reset by peer")
        return real(self, n)

    monkeypatch.setattr(MemoryFile, "read", flaky)
    items = list(read_source(list_sources(uri)[0]))
    assert [it.data for it in items] == [jpeg(i) for i in range(6)]
    assert reads[3] == reads[2] > 0  # reopened at the byte reached, not from the start


def test_a_stalled_shard_ends_with_a_timeout_error_after_what_it_gave(tmp_path, monkeypatch):
    import threading

    from fsspec.implementations.memory import MemoryFile

    uri = _memory_shard(tmp_path, "stalled", 40)
    real, release, reads = MemoryFile.read, threading.Event(), []

    def stalls(self, n=-1):
        reads.append(n)
        if self.tell() > 4000:
            release.wait(30)  # a storage call that never answers
        return real(self, n)

    monkeypatch.setattr(MemoryFile, "read", stalls)
    items = list(read_source(list_sources(uri)[0], ReadLimits(timeout=0.5)))
    release.set()
    assert items[-1].identity.startswith(f"{uri}#@") and items[-1].error.error_type == "ReadLimitError"
    assert "read timeout of 0.5 s (--read-timeout)" in items[-1].error.message
    assert all(it.error is None for it in items[:-1]) and len(items) < 40
