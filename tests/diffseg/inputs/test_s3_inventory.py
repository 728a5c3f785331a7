"""S3 Inventory reports (manifest.json + CSV.gz or Parquet data files) on the moto S3 server: the objects
they list are the loose files a listing of the bucket gives, without listing it."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffseg.inputs import InputError, list_input, list_inputs

# (key, is_latest, is_delete_marker): what the source bucket holds (versions included)
OBJECTS = [("photos/a.jpg", True, False), ("photos/my photo.JPG", True, False), ("photos/été.png", True, False),
           ("photos/notes.txt", True, False), ("photos/sub/", True, False), ("photos/old.jpg", False, False),
           ("photos/gone.jpg", True, True)]
IMAGES = ["photos/a.jpg", "photos/my photo.JPG", "photos/été.png"]
SCHEMA = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size"


def csv_gz(bucket: str) -> bytes:
    from urllib.parse import quote_plus

    lines = [f'"{bucket}","{quote_plus(key, safe="/")}","v1","{str(latest).lower()}","{str(marker).lower()}","3"'
             for key, latest, marker in OBJECTS]
    return gzip.compress(("\n".join(lines) + "\n").encode())


def parquet_bytes(bucket: str) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table({"bucket": [bucket] * len(OBJECTS), "key": [k for k, _, _ in OBJECTS],
                             "is_latest": [lat for _, lat, _ in OBJECTS], "is_delete_marker": [m for _, _, m in OBJECTS],
                             "size": [3] * len(OBJECTS)}), out)
    return out.getvalue()


def manifest(source: str, dest: str, fmt: str, keys: list[str]) -> bytes:
    schema = SCHEMA if fmt == "CSV" else "message s3.inventory { required binary bucket (UTF8); ... }"
    return json.dumps({"sourceBucket": source, "destinationBucket": f"arn:aws:s3:::{dest}", "version": "2016-11-30",
                       "creationTimestamp": "1765065600000", "fileFormat": fmt, "fileSchema": schema,
                       "files": [{"key": k, "size": 1, "MD5checksum": "0"} for k in keys]}).encode()


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_an_inventory_on_s3_lists_the_current_image_objects(s3_endpoint, fmt):
    import uuid

    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    source, dest = f"src-{uuid.uuid4().hex[:8]}", f"inv-{uuid.uuid4().hex[:8]}"
    for name in (source, dest):
        s3.create_bucket(Bucket=name)
    for key, latest, marker in OBJECTS:
        if latest and not marker and not key.endswith("/"):
            s3.put_object(Bucket=source, Key=key, Body=b"abc")
    prefix = f"inventory/{source}/daily"
    data_key = f"{prefix}/data/5f3c.{'csv.gz' if fmt == 'CSV' else 'parquet'}"
    s3.put_object(Bucket=dest, Key=data_key, Body=csv_gz(source) if fmt == "CSV" else parquet_bytes(source))
    s3.put_object(Bucket=dest, Key=f"{prefix}/2026-12-07T00-00Z/manifest.json",
                  Body=manifest(source, dest, fmt, [data_key]))
    listing = list_input(f"s3://{dest}/{prefix}/2026-12-07T00-00Z/manifest.json")  # auto: an inventory manifest
    want = sorted(f"s3://{source}/{k}" for k in IMAGES)
    assert listing.form == "files" and listing.uris.to_pylist() == want
    # the identities a listing of the bucket gives (URL-encoded CSV keys decoded)
    assert list_inputs(f"s3://{source}/photos/") == want


def test_a_local_copy_of_an_inventory_and_what_is_refused(tmp_path):
    day = tmp_path / "daily" / "2026-12-07T00-00Z"
    day.mkdir(parents=True)
    (tmp_path / "daily" / "data").mkdir()
    (tmp_path / "daily" / "data" / "5f3c.csv.gz").write_bytes(csv_gz("src"))
    (day / "manifest.json").write_bytes(manifest("src", "inv", "CSV", ["inventory/src/daily/data/5f3c.csv.gz"]))
    assert list_input(str(day / "manifest.json")).uris.to_pylist() == sorted(f"s3://src/{k}" for k in IMAGES)
    (day / "manifest.json").write_bytes(manifest("src", "inv", "ORC", ["inventory/src/daily/data/5f3c.orc"]))
    with pytest.raises(InputError, match="format 'ORC' is not read; configure the inventory as CSV or Parquet"):
        list_input(str(day / "manifest.json"))
    # a manifest.json that is no inventory is one loose file, as before (auto); named an inventory, refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"counts": {}}')
    assert list_input(str(tmp_path / "other" / "manifest.json")).uris.to_pylist() == [
        f"file://{tmp_path}/other/manifest.json"]
    with pytest.raises(InputError, match="is not an S3 Inventory manifest"):
        list_input(str(tmp_path / "other" / "manifest.json"), "inventory")


def test_an_inventory_streams_one_batch_per_data_file_read_one_at_a_time(tmp_path, monkeypatch):
    from diffseg.inputs import inventory

    day = tmp_path / "daily" / "2026-12-07T00-00Z"
    day.mkdir(parents=True)
    (tmp_path / "daily" / "data").mkdir()
    for name in ("1.csv.gz", "2.csv.gz"):
        (tmp_path / "daily" / "data" / name).write_bytes(csv_gz(f"src{name[0]}"))
    (day / "manifest.json").write_bytes(manifest("src", "inv", "CSV", ["d/1.csv.gz", "d/2.csv.gz"]))
    reads, real = [], inventory._read_csv
    monkeypatch.setattr(inventory, "_read_csv", lambda uri, m: reads.append(uri) or real(uri, m))
    listing = list_input(str(day / "manifest.json"))
    assert listing.streamed and len(reads) == 1  # list_input read the first data file only
    batches = [b.to_pylist() for b in listing.batches()]
    assert batches == [[f"s3://src1/{k}" for k in IMAGES], [f"s3://src2/{k}" for k in IMAGES]] and len(reads) == 2
    (tmp_path / "daily" / "data" / "3.csv.gz").write_bytes(gzip.compress(b'"src","photos/notes.txt","v1","true","false","3"\n'))
    (day / "manifest.json").write_bytes(manifest("src", "inv", "CSV", ["d/3.csv.gz"]))
    with pytest.raises(InputError, match="the S3 Inventory lists no image objects"):
        list_input(str(day / "manifest.json"))
