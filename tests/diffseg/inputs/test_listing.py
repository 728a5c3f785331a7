"""diffseg.inputs.listing (and its S3 half, s3_listing): exact key sets on moto S3, local folders and fsspec, whatever the parallelism."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from diffseg.inputs import s3_listing
from diffseg.inputs.listing import LISTING_SCHEMA, ListingError, list_keys
from diffseg.inputs.s3_listing import parse_list_page, split_range

# name -> size; folder markers ("sub/") are objects too on S3
LAYOUT = {
    "a.jpg": 3, "B.PNG": 4, "notes.txt": 5, "sub/c.jpg": 6, "sub/deep/d.jpeg": 7, "sub/deep/e.JPG": 8,
    "2024-01/x.jpg": 9, "2024-02/y.jpg": 10, "2025-01/z.jpg": 11, "2024-x.jpg": 12, "2024.jpg": 13,
    "sp ace+plus%25.jpg": 14, "ü/ß.jpg": 15, "amp&<lt>.jpg": 16,
    **{f"flat/{i * 7919 % 4096:03x}{i:04d}.jpg": 17 for i in range(150)},  # hash-like, one flat folder
}
IMAGES = (".jpg", ".jpeg", ".png")


def _uris(batches) -> list[str]:
    batches = list(batches)
    for b in batches:
        assert b.schema == LISTING_SCHEMA
    return [u for b in batches for u in b.column("uri").to_pylist()]


def _rows(batches) -> dict[str, int]:
    return {u: s for b in batches for u, s in zip(b.column("uri").to_pylist(), b.column("size").to_pylist())}


def _expected(base: str, names, prefix: str = "", exts=None) -> list[str]:
    return sorted(base + n for n in names if n.startswith(prefix) and not n.endswith("/")
                  and (exts is None or n.lower().endswith(exts)))


@pytest.fixture
def small_pages(monkeypatch):
    """Pages of 7 keys, so a few hundred keys take many pages and range splits."""
    monkeypatch.setattr(s3_listing, "PAGE_KEYS", 7)


@pytest.fixture
def s3_lake(bucket, s3_endpoint):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for name, size in {**LAYOUT, "sub/": 0}.items():
        client.put_object(Bucket=bucket, Key=f"lake/{name}", Body=b"x" * size)
    return bucket


@pytest.mark.parametrize("concurrency", [1, 2, 7, 32])
def test_s3_lists_every_key_once_whatever_the_parallelism(s3_lake, small_pages, concurrency):
    uris = _uris(list_keys(f"s3://{s3_lake}/lake/", concurrency=concurrency, batch_rows=50))
    assert len(uris) == len(set(uris))  # no key twice, although ranges were split
    assert sorted(uris) == _expected(f"s3://{s3_lake}/lake/", LAYOUT)


def test_s3_matches_botocore_listing_with_sizes(s3_lake, s3_endpoint):
    """Reference: boto3's own paginator (botocore's parser, URL decoding) over the same bucket."""
    import boto3

    pages = boto3.client("s3", endpoint_url=s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=s3_lake)
    want = {f"s3://{s3_lake}/{c['Key']}": c["Size"] for p in pages for c in p.get("Contents", [])
            if not c["Key"].endswith("/")}
    assert _rows(list_keys(f"s3://{s3_lake}")) == want
    assert f"s3://{s3_lake}/lake/sp ace+plus%25.jpg" in want and f"s3://{s3_lake}/lake/amp&<lt>.jpg" in want


def test_s3_partial_prefix_lists_only_its_keys(s3_lake, small_pages):
    got = sorted(_uris(list_keys(f"s3://{s3_lake}/lake/2024-", concurrency=4)))
    assert got == [f"s3://{s3_lake}/lake/{n}" for n in ("2024-01/x.jpg", "2024-02/y.jpg", "2024-x.jpg")]


def test_s3_extension_filter_ignores_case(s3_lake, small_pages):
    got = sorted(_uris(list_keys(f"s3://{s3_lake}/lake", IMAGES, concurrency=5)))
    assert got == _expected(f"s3://{s3_lake}/", [f"lake/{n}" for n in LAYOUT], exts=IMAGES)
    assert f"s3://{s3_lake}/lake/B.PNG" in got and f"s3://{s3_lake}/lake/notes.txt" not in got


def test_s3_a_listing_left_early_stops_and_the_next_one_is_whole(s3_lake, small_pages):
    batches = list_keys(f"s3://{s3_lake}/lake/", concurrency=8, batch_rows=5)
    assert next(batches).num_rows == 5
    batches.close()  # the consumer stops: the listing's requests are cancelled, nothing hangs
    assert _listing_tasks() == []
    assert len(_uris(list_keys(f"s3://{s3_lake}/lake/", concurrency=8))) == len(LAYOUT)


def _listing_tasks(wait_s: float = 5.0) -> list:
    """The lister's coroutines still alive on fsspec's loop (after up to `wait_s` for cancellations)."""
    import asyncio
    import time

    from fsspec.asyn import get_loop

    async def alive():
        return [t for t in asyncio.all_tasks() if "S3Walk" in repr(t.get_coro())]

    deadline = time.monotonic() + wait_s
    while True:
        tasks = asyncio.run_coroutine_threadsafe(alive(), get_loop()).result()
        if not tasks or time.monotonic() > deadline:
            return tasks
        time.sleep(0.05)


def test_s3_empty_prefix_gives_no_batch(s3_lake):
    assert list(list_keys(f"s3://{s3_lake}/nothing-here/")) == []


def test_s3_missing_bucket_names_the_uri_and_the_fix(s3_endpoint):
    with pytest.raises(ListingError) as err:
        list(list_keys("s3://no-such-bucket-here/images/"))
    text = str(err.value)
    assert "s3://no-such-bucket-here/images/" in text and "does not exist" in text
    assert "AWS_ENDPOINT_URL" in text and "testing" not in text  # no credentials in the message


def test_s3_leaves_no_directory_cache(s3_lake, monkeypatch):
    import s3fs

    made = []
    original = s3_listing.private_s3fs
    monkeypatch.setattr(s3_listing, "private_s3fs", lambda opts: made.append(original(opts)) or made[-1])
    shared = s3fs.S3FileSystem()
    shared.invalidate_cache()
    assert len(_uris(list_keys(f"s3://{s3_lake}/lake/"))) == len(LAYOUT)
    assert made and len(made[0].dircache) == 0 and len(shared.dircache) == 0


def test_s3_pages_are_read_by_the_fast_parser(s3_lake):
    fs = s3_listing.private_s3fs({})
    response = fs.call_s3("list_objects_v2", Bucket=s3_lake, Prefix="lake/sub/", MaxKeys=1000)
    assert response["DiffsegPage"]["keys"] == ["lake/sub/", "lake/sub/c.jpg", "lake/sub/deep/d.jpeg",
                                               "lake/sub/deep/e.JPG"]
    assert response["DiffsegPage"]["sizes"] == [0, 6, 7, 8]


def test_parse_list_page_hands_errors_and_cut_bodies_to_botocore():
    whole = (b'<?xml version="1.0"?><ListBucketResult><IsTruncated>true</IsTruncated><EncodingType>url'
             b"</EncodingType><NextContinuationToken>t&amp;1</NextContinuationToken><Contents><Key>a%20b+c.jpg"
             b"</Key><Size>5</Size></Contents><CommonPrefixes><Prefix>d%2F/</Prefix></CommonPrefixes>"
             b"</ListBucketResult>")
    assert parse_list_page(whole) == {"keys": ["a b c.jpg"], "sizes": [5], "prefixes": ["d//"], "truncated": True,
                                      "token": "t&1"}
    assert parse_list_page(whole[:-20]) is None  # cut short: botocore's check retries it
    assert parse_list_page(b"<Error><Code>SlowDown</Code></Error>") is None
    assert parse_list_page(whole.replace(b"<Size>5</Size>", b"")) is None  # not understood


def test_split_range_boundaries_lie_inside_the_range():
    cuts = split_range("p/", "p/3fa.jpg", None, "0123456789abcdef", 16, "/")
    assert cuts == [f"p/{c}" for c in "456789abcdef"]
    cuts = split_range("p/", "p/3fa.jpg", "p/4", "0123456789abcdef", 4, "/")  # 3 and 4 adjacent: one deeper
    assert cuts and all("p/3fa.jpg" < c < "p/4" for c in cuts) and len(cuts) <= 4
    # with the delimiter, never a boundary inside a sub-folder
    assert split_range("p/", "p/a/zz", None, "abz/", 8, "/") == ["p/b", "p/z"]
    assert split_range("p/", "p/a/zz", None, "abz/", 8, None) == ["p/b", "p/z"]  # first position that fits
    assert split_range("p/", "p/z/a", None, "abz", 8, "/") == ["p/za", "p/zb", "p/zz"]  # after p/z/, not in it
    assert split_range("p/", "p/zz", None, "az", 8, "/") == []  # nothing fits after the last name
    assert split_range("p/", "p/z", "p/z0", "0123", 8, None) == []


# --- local folders -----------------------------------------------------------------------------------

@pytest.fixture
def local_lake(tmp_path):
    root = tmp_path / "lake"
    for name, size in LAYOUT.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    (root / "empty").mkdir()
    os.symlink(root / "a.jpg", root / "link.jpg")  # a link to a file is listed
    os.symlink(root / "sub", root / "sublink")  # a linked folder is not followed
    os.mkfifo(root / "pipe.jpg")  # never listed: reading it could block
    return root


@pytest.mark.parametrize("concurrency", [1, 3, 16])
def test_local_lists_every_file_once_whatever_the_parallelism(local_lake, concurrency):
    uris = _uris(list_keys(str(local_lake), concurrency=concurrency, batch_rows=40))
    assert len(uris) == len(set(uris))
    assert sorted(uris) == _expected(f"file://{local_lake}/", [*LAYOUT, "link.jpg"])


def test_local_sizes_partial_prefix_and_extensions(local_lake):
    rows = _rows(list_keys(f"file://{local_lake}/sub"))
    assert rows == {f"file://{local_lake}/sub/c.jpg": 6, f"file://{local_lake}/sub/deep/d.jpeg": 7,
                    f"file://{local_lake}/sub/deep/e.JPG": 8}
    assert sorted(_uris(list_keys(f"{local_lake}/2024-"))) == _expected(f"file://{local_lake}/", LAYOUT, "2024-")
    got = sorted(_uris(list_keys(str(local_lake), IMAGES)))
    assert got == _expected(f"file://{local_lake}/", [*LAYOUT, "link.jpg"], exts=IMAGES)


def test_local_name_that_is_not_utf8_is_listed_escaped(tmp_path):
    with open(os.fsencode(tmp_path) + b"/bad\xff.jpg", "wb") as f:
        f.write(b"xy")
    assert _rows(list_keys(str(tmp_path))) == {f"file://{tmp_path}/bad%FF.jpg": 2}


def test_local_empty_and_missing_folders(local_lake):
    assert list(list_keys(str(local_lake / "empty"))) == []
    with pytest.raises(ListingError, match="no such folder") as err:
        list(list_keys(str(local_lake / "nope" / "images")))
    assert str(local_lake / "nope" / "images") in str(err.value)


def test_memory_filesystem_through_fsspec():
    import fsspec

    fs = fsspec.filesystem("memory")
    for name, size in LAYOUT.items():
        fs.pipe(f"/lst/{name}", b"x" * size)
    assert sorted(_uris(list_keys("memory://lst", concurrency=3))) == _expected("memory:///lst/", LAYOUT)
    assert sorted(_uris(list_keys("memory://lst/2024-"))) == _expected("memory:///lst/", LAYOUT, "2024-")
    with pytest.raises(ListingError):
        list(list_keys("memory://nothing/at/all"))
    fs.rm("/lst", recursive=True)


def test_batches_hold_batch_rows_at_most(local_lake):
    sizes = [b.num_rows for b in list_keys(str(local_lake), batch_rows=64)]
    assert max(sizes) == 64 and sum(sizes) == len(LAYOUT) + 1
    assert pa.concat_arrays([b.column("uri") for b in list_keys(str(local_lake), batch_rows=64)]).null_count == 0


def test_a_large_flat_folder_of_hash_like_names_lists_exactly(s3_endpoint):
    """30,000 hash-like keys in one flat folder, pages of 1000, split into ranges by the lister: the
    benchmark's stand-in server (jobs.bench.listing, keys computed from their index), reached through
    storage_options rather than AWS_ENDPOINT_URL."""
    import multiprocessing

    from jobtest_utils import free_port

    from jobs.bench.listing import VirtualKeys, serve_standin

    n, port = 30_000, free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=serve_standin, args=(port, n, 0.0, ready), daemon=True)
    server.start()
    try:
        assert ready.wait(60)
        options = {"endpoint_url": f"http://127.0.0.1:{port}"}
        want = [f"s3://lake/{VirtualKeys(n).key(i)}" for i in range(n)]
        for concurrency in (1, 32):
            uris = _uris(list_keys("s3://lake/images/", concurrency=concurrency, storage_options=options))
            assert len(uris) == n and sorted(uris) == want
        half = [u for u in want if u.startswith("s3://lake/images/8")]
        assert sorted(_uris(list_keys("s3://lake/images/8", storage_options=options))) == half
    finally:
        server.terminate()
        server.join(10)
