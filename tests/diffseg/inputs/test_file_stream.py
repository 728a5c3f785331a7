"""The files form as a stream (Listing.batches) through list_keys: the same URIs as the fs.find listing it
replaces (local and moto S3, hostile names), partial prefixes, errors, and auto detection that looks at
the first keys of a big folder instead of listing all of it."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobtest_utils import put_files

from diffseg.inputs import InputError, detect, files, list_input, list_inputs
from jobs.bench.listing import listed_by_find

NAMES = {
    "a.jpg": b"1", "B.PNG": b"2", "sub/deeper/c.JpEg": b"3", "notes.txt": b"no", "readme.md": b"no", "sub/d.parquet": b"no",
    ".hidden/e.webp": b"4", "colon::x.png": b"5", "take#2.jpg": b"6", "100%.jpg": b"7", "sp ace+plus%25.jpg": b"8",
    "ü/ß.jpg": b"9", "amp&<lt>.jpg": b"10", "2024-01/x.jpg": b"11", "2024-x.TIF": b"12", "2025-01/z.jpg": b"13",
}


def stream(listing) -> list[str]:
    batches = list(listing.batches())
    assert batches and all(isinstance(b, pa.StringArray) and len(b) for b in batches)
    return [u for b in batches for u in b.to_pylist()]


def same_as_find(spec: str) -> list[str]:
    """list_input(spec, files) == the fs.find listing, as .uris and as batches (a set), and list_inputs too."""
    want = sorted(set(listed_by_find(spec)))
    listing = list_input(spec, "files")
    got = stream(listing)
    assert sorted(got) == want, spec
    assert list_input(spec, "files").uris.to_pylist() == want == list_inputs(spec), spec
    assert list_input(spec).uris.to_pylist() == want, spec  # auto: files too
    return want


@pytest.fixture
def local_lake(tmp_path):
    lake = tmp_path / "lake"
    put_files(str(lake), NAMES)
    with open(os.path.join(os.fsencode(str(lake)), b"caf\xe9 %41.jpg"), "wb") as f:
        f.write(b"latin-1 name")
    os.mkfifo(lake / "fifo.jpg")
    os.symlink("/dev/zero", lake / "zero.jpg")
    os.symlink(lake / "a.jpg", lake / "link.JPG")
    os.symlink(lake / "sub", lake / "sublink")  # a folder link: not followed, as fs.find did not
    put_files(str(tmp_path / "lake-old"), {"old.jpg": b"not under lake/"})
    return lake


def test_local_folder_lists_the_same_uris_as_fs_find(local_lake, caplog):
    for spec in (str(local_lake), f"{local_lake}/", f"file://{local_lake}", f"{local_lake}/20",
                 f"{local_lake}/sub", f"{local_lake}/a.jpg", f"{local_lake}/readme.md"):
        same_as_find(spec)
    uris = same_as_find(str(local_lake))
    base = f"file://{local_lake}"
    assert f"{base}/caf%E9 %2541.jpg" in uris and f"{base}/100%.jpg" in uris and f"{base}/colon::x.png" in uris
    assert f"{base}/link.JPG" in uris and not any("fifo" in u or "zero" in u or "sublink" in u for u in uris)
    assert not any("lake-old" in u for u in uris)  # lake (no slash) is the folder, not a prefix of lake-old
    assert "not valid UTF-8" in caplog.text and "not regular files" in caplog.text
    assert list_input(f"{local_lake}/2024-", "files").uris.to_pylist() == [
        f"{base}/2024-01/x.jpg", f"{base}/2024-x.TIF"]
    assert list_input(f"{local_lake}/readme.md", "files").uris.to_pylist() == [f"{base}/readme.md"]  # one file


def test_s3_lists_the_same_uris_as_fs_find(bucket):
    put_files(f"s3://{bucket}/images", NAMES)
    put_files(f"s3://{bucket}/images-old", {"old.jpg": b"x"})
    for spec in (f"s3://{bucket}/images", f"s3://{bucket}/images/", f"s3a://{bucket}/images/",
                 f"s3://{bucket}/images/20", f"s3://{bucket}/images/a.jpg", f"s3://{bucket}", f"s3://{bucket}/"):
        same_as_find(spec)
    uris = list_input(f"s3a://{bucket}/images", "files").uris.to_pylist()
    assert f"s3://{bucket}/images/sp ace+plus%25.jpg" in uris and f"s3://{bucket}/images/colon::x.png" in uris
    assert f"s3://{bucket}/images/amp&<lt>.jpg" in uris and f"s3://{bucket}/images/ü/ß.jpg" in uris
    assert not any("images-old" in u for u in uris)


def test_a_partial_prefix_lists_only_its_keys(bucket, monkeypatch):
    put_files(f"s3://{bucket}/images", NAMES)
    listed_uris = []
    real = files.list_keys

    def spy(uri, *args, **kwargs):
        listed_uris.append(uri)
        return real(uri, *args, **kwargs)

    monkeypatch.setattr(files, "list_keys", spy)
    got = list_input(f"s3://{bucket}/images/2024-", "files").uris.to_pylist()
    assert got == [f"s3://{bucket}/images/2024-01/x.jpg", f"s3://{bucket}/images/2024-x.TIF"]
    assert listed_uris == [f"s3://{bucket}/images/2024-"]  # never its parent images/


def test_batches_are_the_uris_as_a_set_and_a_manifest_may_repeat(tmp_path, local_lake):
    listing = list_input(str(local_lake))
    assert listing.form == "files" and listing.streamed
    batches = stream(listing)
    assert sorted(set(batches)) == listing.uris.to_pylist() and len(batches) == len(listing)
    assert sorted(stream(listing)) == sorted(batches)  # later calls list again (or hand out the held uris)
    (tmp_path / "list.txt").write_text("lake/a.jpg\nlake/B.PNG\nlake/a.jpg\n")
    manifest = list_input(str(tmp_path / "list.txt"))
    assert not manifest.streamed
    assert sorted(stream(manifest)) == sorted([f"file://{local_lake}/a.jpg"] * 2 + [f"file://{local_lake}/B.PNG"])
    assert manifest.uris.to_pylist() == [f"file://{local_lake}/B.PNG", f"file://{local_lake}/a.jpg"]
    glob = list_input(str(local_lake / "*.jpg"))
    assert sorted(stream(glob)) == glob.uris.to_pylist() == list_inputs(str(local_lake / "*.jpg"))


def test_missing_and_empty_input_errors_are_raised_by_list_input(tmp_path, bucket):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-notes").mkdir()
    (tmp_path / "only-notes" / "readme.md").write_text("no images")
    put_files(f"s3://{bucket}/notes", {"readme.md": b"no images"})
    cases = {
        str(tmp_path / "missing"): f"INPUT '{tmp_path}/missing' does not exist",
        str(tmp_path / "nope" / "images"): f"INPUT '{tmp_path}/nope/images' does not exist",
        str(tmp_path / "empty"): "holds no image files (extensions .jpg",
        str(tmp_path / "only-notes"): "holds no image files",
        str(tmp_path / "only-n"): "holds no image files",
        str(tmp_path / "*.tif"): "matches no file",
        "s3://no-such-bucket-for-diffseg/images/": "'s3://no-such-bucket-for-diffseg/images/' does not exist",
        f"s3://{bucket}/nothing/": "does not exist",
        f"s3://{bucket}/nothing": "does not exist",
        f"s3://{bucket}/notes/": "holds no image files",
        f"s3://{bucket}/no": "holds no image files",
    }
    for spec, message in cases.items():
        for fmt in ("files", "auto"):
            with pytest.raises(InputError, match=message.replace("(", r"\(").replace("*", r"\*")):
                list_input(spec, fmt)
    (tmp_path / "none.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="lists no URI"):
        list_input(str(tmp_path / "none.txt"), "files")


# ---------------------------------------------------------------- auto detection: a bounded look

LIMIT = 60  # rows a listing may hand out before the test's lister refuses: a fraction of the lake


@pytest.fixture
def bounded(monkeypatch):
    """list_keys in batches of 10 rows that raises once a listing of every key (detection) or of images
    (the files form) has handed out LIMIT rows (a container form lists its shards or tables whole);
    detection looks at the first 20 keys."""
    from diffseg.inputs import listing

    real = listing.list_keys
    calls = []

    def limited(uri, extensions=None, **kwargs):
        kwargs["batch_rows"] = min(kwargs.get("batch_rows", 10), 10)
        calls.append((uri, extensions))
        handed = 0
        for batch in real(uri, extensions, **kwargs):
            handed += batch.num_rows
            if handed > LIMIT and (extensions is None or ".jpg" in extensions):
                raise AssertionError(f"{uri} listed past {LIMIT} keys")
            yield batch

    monkeypatch.setattr(listing, "list_keys", limited)
    monkeypatch.setattr(files, "list_keys", limited)
    monkeypatch.setattr(detect, "PEEK_KEYS", 20)
    return calls


def tar_bytes(name: str) -> bytes:
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return out.getvalue()


def many(tmp_path, make) -> str:
    """40 sub-folders of 5 files each (200: more than the bounded lister hands out), made by `make`."""
    lake = tmp_path / "lake"
    for d in range(40):
        (lake / f"d{d:02d}").mkdir(parents=True)
        for i in range(5):
            make(lake / f"d{d:02d}", f"{d:02d}{i}")
    return str(lake)


def test_auto_decides_each_form_of_a_big_folder_from_its_first_keys(tmp_path, bounded):
    def image(folder, key):
        (folder / f"{key}.jpg").write_bytes(b"x")
        (folder / f"{key}.txt").write_text("caption")

    def shard(folder, key):
        (folder / f"{key}.tar").write_bytes(tar_bytes(f"{key}.jpg"))
        (folder / f"{key}_stats.json").write_text("{}")

    def table(folder, key):
        pq.write_table(pa.table({"key": [key], "jpg": [b"bytes"]}), folder / f"{key}.parquet")

    for name, make, form in (("images", image, "files"), ("shards", shard, "webdataset"), ("rows", table, "parquet")):
        bounded.clear()
        listing = list_input(many(tmp_path / name, make))
        assert listing.form == form and "in the first 20 keys listed" in listing.detected, listing.detected
        assert bounded[0][1] is None and all(ext is not None for _, ext in bounded[1:])  # no second full look
        if form != "files":  # the containers themselves: all of them, through list_keys too
            assert len(listing.sources) == 200 and len(bounded) == 2
    with pytest.raises(InputError, match="listed past"):  # the lister does refuse: the bound is real
        list(list_input(str(tmp_path / "images" / "lake"), "files").batches())


def test_auto_on_a_big_mixed_folder_is_ambiguous_from_its_first_keys(tmp_path, bounded):
    def both(folder, key):
        (folder / f"{key}.jpg").write_bytes(b"x")
        (folder / f"{key}.tar").write_bytes(tar_bytes(f"{key}.jpg"))

    lake = many(tmp_path, both)
    with pytest.raises(InputError, match=r"is ambiguous: it holds \d+ image files and \d+ WebDataset shards \(.tar\); "
                                         r"choose one with --input-format files or --input-format webdataset"):
        list_input(lake)


def test_auto_counts_every_key_when_its_first_keys_hold_no_image(tmp_path, monkeypatch):
    """The first keys are captions only: the look goes on over every key (no key held) to find the form."""
    monkeypatch.setattr(detect, "PEEK_KEYS", 5)
    lake = tmp_path / "lake"
    put_files(str(lake), {f"{i}.txt": b"c" for i in range(30)})  # the top folder is listed first
    put_files(str(lake / "b-shards"), {"00000.tar": tar_bytes("k.jpg")})
    listing = list_input(str(lake))
    assert listing.form == "webdataset" and listing.detected == "auto: 1 WebDataset shards (.tar)"
    put_files(str(lake / "c-images"), {"x.jpg": b"x"})
    with pytest.raises(InputError, match="1 image files and 1 WebDataset shards"):
        list_input(str(lake))


def old_containers(spec: str, suffixes) -> list[str]:
    """The shards or table files the fs.find listing gave (find_below, regular files, canonical URIs)."""
    from diffseg.inputs.files import find_below, regular_files
    from diffseg.inputs.uri import exact_fs, full_uri

    fs, path = exact_fs(spec)
    found = find_below(fs, path, spec) or {path: {"type": "file"}}
    return sorted({full_uri(fs, p) for p in regular_files(fs, {p: i for p, i in found.items()
                                                               if p.lower().endswith(suffixes)})})


def test_shards_and_tables_are_listed_as_the_fs_find_listing_did(tmp_path, bucket):
    from diffseg.inputs.parquet import TABLE_SUFFIXES
    from diffseg.inputs.webdataset import TAR_SUFFIXES

    table = pa.BufferOutputStream()
    pq.write_table(pa.table({"jpg": [b"x"]}), table)
    lake = {"s/00000.tar": tar_bytes("a.jpg"), "s/sub/00001.TAR": tar_bytes("b.jpg"), "s/2024-00002.tgz": tar_bytes("c.jpg"),
            "s/notes.json": b"{}", "t/train-0.parquet": table.getvalue().to_pybytes(), "t/x/train-1.parquet":
            table.getvalue().to_pybytes(), "t/readme.md": b"x", "s-old/00009.tar": tar_bytes("d.jpg")}
    for base in (str(tmp_path), f"s3://{bucket}"):
        put_files(base, lake)
        for spec, form, suffixes in ((f"{base}/s", "webdataset", TAR_SUFFIXES), (f"{base}/s/", "webdataset", TAR_SUFFIXES),
                                     (f"{base}/s/2024-", "webdataset", TAR_SUFFIXES), (f"{base}/s/00000.tar", "webdataset",
                                     TAR_SUFFIXES), (f"{base}/t", "parquet", TABLE_SUFFIXES)):
            want = old_containers(spec, suffixes)
            assert want and [s.id for s in list_input(spec, form).sources] == want, spec
            assert [s.id for s in list_input(spec).sources] == want, spec
        with pytest.raises(InputError, match=r"holds no WebDataset shards \(.tar, .tar.gz, .tgz files\)"):
            list_input(f"{base}/t", "webdataset")
        with pytest.raises(InputError, match="holds no Parquet or Arrow files"):
            list_input(f"{base}/s", "parquet")
        for missing in (f"{base}/nothing/", f"{base}/nothing", f"{base}/no/such/folder"):
            with pytest.raises(InputError, match="does not exist"):
                list_input(missing, "webdataset")
            with pytest.raises(InputError, match="does not exist"):
                list_input(missing, "parquet")


def test_auto_on_s3_looks_at_the_first_keys_in_key_order_with_a_few_requests(bucket, monkeypatch):
    from diffseg.inputs import s3_listing

    put_files(f"s3://{bucket}/lake", {**{f"a{i:02d}/{i}.jpg": b"x" for i in range(12)}, "b/00000.tar": tar_bytes("k.jpg")})
    pages, real = [], s3_listing._page_of
    monkeypatch.setattr(s3_listing, "_page_of", lambda response: pages.append(1) or real(response))
    monkeypatch.setattr(s3_listing, "PAGE_KEYS", 2)
    look, complete = detect.look_at(f"s3://{bucket}/lake/", 5)  # 12 one-key folders: still 3 requests
    assert [u for a in look for u in a.to_pylist()] == [f"s3://{bucket}/lake/a{i:02d}/{i}.jpg" for i in range(5)]
    assert not complete and len(pages) == 3
    monkeypatch.setattr(detect, "PEEK_KEYS", 5)  # the shard lies beyond the look: images, the shard ignored
    listing = list_input(f"s3://{bucket}/lake")
    assert listing.form == "files" and listing.detected == "auto: 5 image files in the first 5 keys listed"
    assert len(listing.uris) == 12
    monkeypatch.setattr(detect, "PEEK_KEYS", 20)  # in view: ambiguous, as before
    with pytest.raises(InputError, match="it holds 12 image files and 1 WebDataset shards"):
        list_input(f"s3://{bucket}/lake")
