"""Parquet rows that carry image bytes: a Hugging Face dataset with an Image() column saved to Parquet by
`datasets`, and img2dataset-style files (jpg bytes + key); identities, row groups, bad rows, ambiguity."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from diffseg.inputs import (
    InputError,
    ReadLimits,
    count_members,
    list_input,
    list_sources,
    read_source,
    split_source,
)


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def read_all(sources, **limits):
    return [item for source in sources for item in read_source(source, ReadLimits(**limits))]


def hf_dataset(n: int = 6):
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage

    return Dataset.from_dict(
        {"image": [{"bytes": jpeg(i), "path": f"{i}.jpg"} for i in range(n)], "text": [f"photo {i}" for i in range(n)]},
        features=Features({"image": HFImage(), "text": Value("string")}))


def test_a_hugging_face_image_dataset_saved_to_parquet_is_read_as_datasets_reads_it(tmp_path):
    from datasets import Image as HFImage
    from datasets import load_dataset

    hf_dataset(6).to_parquet(str(tmp_path / "train.parquet"))
    listing = list_input(str(tmp_path / "train.parquet"))  # auto: it has an Image() column
    assert listing.form == "parquet"
    uri = f"file://{tmp_path}/train.parquet"
    items = read_all(listing.sources)
    assert [it.identity for it in items] == [f"{uri}#{i:09d}" for i in range(6)]  # no key column: the row index
    # byte for byte what `datasets` gives back for the column (undecoded)
    reference = load_dataset("parquet", data_files=str(tmp_path / "train.parquet"), split="train")
    reference = reference.cast_column("image", HFImage(decode=False))
    assert [it.data for it in items] == [row["image"]["bytes"] for row in reference] == [jpeg(i) for i in range(6)]
    # the caption is never taken for a URI; it is metadata when asked
    meta = read_all(list_sources(str(tmp_path / "train.parquet"), "parquet:metadata=1"))
    assert meta[4].metadata == {"text": "photo 4", "image.path": "4.jpg"}


def test_a_hugging_face_dataset_folder_of_parquet_shards(tmp_path):
    ds = hf_dataset(8)
    (tmp_path / "hf" / "data").mkdir(parents=True)
    (tmp_path / "hf" / "README.md").write_text("---\nconfigs: ...\n---\n")
    for i in range(2):
        ds.shard(2, i, contiguous=True).to_parquet(str(tmp_path / "hf" / "data" / f"train-0000{i}-of-00002.parquet"))
    sources = list_sources(str(tmp_path / "hf"))
    assert [s.id.rsplit("/", 1)[1] for s in sources] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert [count_members(s) for s in sources] == [4, 4]
    items = read_all(sources)
    assert [it.data for it in items] == [jpeg(i) for i in range(8)]
    assert items[5].identity == f"{sources[1].id}#000000001"


def img2dataset_table(n: int, keys=None):
    keys = keys if keys is not None else [f"{i:09d}" for i in range(n)]
    return pa.table({
        "key": keys, "url": [f"https://example.com/{i}.jpg" for i in range(n)],
        "caption": [f"caption {i}" for i in range(n)], "jpg": [jpeg(i) for i in range(n)],
        "width": pa.array([20] * n, pa.int32()), "status": ["success"] * n,
    })


def test_img2dataset_parquet_keys_row_groups_and_counts(tmp_path):
    pq.write_table(img2dataset_table(10, [f"k{i:03d}" for i in range(10)]), tmp_path / "00000.parquet",
                   row_group_size=4)
    uri = f"file://{tmp_path}/00000.parquet"
    (source,) = list_sources(str(tmp_path / "00000.parquet"))
    assert count_members(source) == 10
    groups = split_source(source)
    assert [(g.row_groups, g.count) for g in groups] == [((0,), 4), ((1,), 4), ((2,), 2)]
    second = read_all([groups[1]])
    assert [it.identity for it in second] == [f"{uri}#k004", f"{uri}#k005", f"{uri}#k006", f"{uri}#k007"]
    assert [it.data for it in second] == [jpeg(i) for i in range(4, 8)]
    assert [it.identity for it in read_all(groups)] == [it.identity for it in read_all([source])]


def test_bad_rows_are_error_items_with_their_own_identities(tmp_path):
    table = img2dataset_table(6, ["a", "b", None, "b", "e", "f"])
    jpgs = table.column("jpg").to_pylist()
    jpgs[4], jpgs[5] = None, jpgs[5] + b"x" * 4000
    table = table.set_column(3, "jpg", pa.array(jpgs, pa.binary()))
    pq.write_table(table, tmp_path / "bad.parquet")
    uri = f"file://{tmp_path}/bad.parquet"
    items = {it.identity: it for it in read_all(list_sources(str(tmp_path / "bad.parquet")), max_bytes=3000)}
    assert list(items) == [f"{uri}#a", f"{uri}#b", f"{uri}#@2", f"{uri}#b@3", f"{uri}#e", f"{uri}#f"]
    assert items[f"{uri}#a"].data == jpeg(0)
    assert items[f"{uri}#@2"].error.as_tuple()[:2] == ("list", "MemberError") and "has no key" in items[f"{uri}#@2"].error.message
    assert "repeats the key 'b'" in items[f"{uri}#b@3"].error.message
    assert items[f"{uri}#e"].error.as_tuple()[:2] == ("decode", "NoImageError")
    assert items[f"{uri}#f"].error.as_tuple()[:2] == ("read", "ReadLimitError")
    # a Hugging Face row that kept only a path says so
    pq.write_table(pa.table({"image": pa.array([{"bytes": None, "path": "/elsewhere/x.jpg"}],
                                               pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}),
                   tmp_path / "paths.parquet")
    (only,) = read_all(list_sources(str(tmp_path / "paths.parquet")))
    assert "only a path, '/elsewhere/x.jpg'" in only.error.message


def test_image_columns_not_found_or_ambiguous_name_the_columns_and_the_choice(tmp_path):
    from datasets import Dataset

    # a Hugging Face parquet without an image column: the columns found are named
    Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_parquet(str(tmp_path / "captions.parquet"))
    with pytest.raises(InputError, match=r"has no image column; its columns: text \(string\), label \(int64\).*"
                                         r"--input-format parquet:image=COLUMN"):
        list_input(str(tmp_path / "captions.parquet"))
    hf_dataset(2).to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(InputError, match=r"has no column 'photo'; its columns: image \(struct<bytes: binary, path: string>\), text"):
        list_input(str(tmp_path / "train.parquet"), "parquet:image=photo")
    # image bytes and a 'uri' column: a manifest of URIs, or rows with images?
    pq.write_table(pa.table({"uri": ["a.jpg"], "jpg": [jpeg(0)]}), tmp_path / "both.parquet")
    with pytest.raises(InputError, match="ambiguous.*--input-format parquet.*--input-format files"):
        list_input(str(tmp_path / "both.parquet"))
    assert list_input(str(tmp_path / "both.parquet"), "files").uris.to_pylist() == [f"file://{tmp_path}/a.jpg"]
    assert read_all(list_sources(str(tmp_path / "both.parquet"), "parquet"))[0].data == jpeg(0)
    # two binary columns named like images
    pq.write_table(pa.table({"jpg": [jpeg(0)], "png": [jpeg(1)]}), tmp_path / "two.parquet")
    with pytest.raises(InputError, match=r"several image columns \(jpg, png\)"):
        list_input(str(tmp_path / "two.parquet"))
    assert read_all(list_sources(str(tmp_path / "two.parquet"), "parquet:image=png"))[0].data == jpeg(1)


def test_a_parquet_file_on_s3_is_read_with_a_few_requests_not_one_per_row(tmp_path, bucket, monkeypatch):
    import fsspec
    import s3fs

    pq.write_table(img2dataset_table(40), tmp_path / "00000.parquet", row_group_size=10)
    fsspec.filesystem("s3").put(str(tmp_path / "00000.parquet"), f"{bucket}/i2d/00000.parquet")
    calls: list[str] = []
    real = s3fs.core.S3File._fetch_range

    def counted(self, start, end):
        calls.append(self.path)
        return real(self, start, end)

    (source,) = list_sources(f"s3://{bucket}/i2d/")
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counted)
    items = read_all([source])
    assert len(items) == 40 and all(it.error is None for it in items)
    assert items[0].identity == f"s3://{bucket}/i2d/00000.parquet#000000000"
    print("GET requests for a 40-row file of 4 row groups:", len(calls))
    assert len(calls) <= 4


def test_a_dataset_saved_to_disk_is_read_from_its_arrow_files(tmp_path):
    """datasets.Dataset.save_to_disk writes Arrow IPC streams (+ state.json, dataset_info.json)."""
    hf_dataset(5).save_to_disk(str(tmp_path / "disk"))
    listing = list_input(str(tmp_path / "disk"))
    assert listing.form == "parquet" and [s.id.rsplit("/", 1)[1] for s in listing.sources] == ["data-00000-of-00001.arrow"]
    (source,) = listing.sources
    assert count_members(source) is None and split_source(source) == [source]  # known only by reading it
    items = read_all([source])
    assert [it.identity for it in items] == [f"{source.id}#{i:09d}" for i in range(5)]
    assert [it.data for it in items] == [jpeg(i) for i in range(5)]
