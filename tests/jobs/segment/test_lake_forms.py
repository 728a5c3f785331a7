"""The lakes users have, end to end on moto S3 (issue 22): WebDataset shards written by the `webdataset`
package, a Hugging Face dataset with an Image() column saved to Parquet, and an S3 Inventory manifest.
Every image ends up exactly once (identity `<container>#<key>` for shard members and rows), label maps at
each photo's size; a shard run killed and resubmitted finishes exactly once."""

from __future__ import annotations

import gzip
import io
import json

import pytest
from jobtest_utils import (
    RESOLUTION,
    check_exactly_once,
    check_masks_and_stats,
    good_images,
    kill_job_after_commits,
    put_files,
)

from diffseg.lake.store import OutputStore
from jobs.common.config import JobConfig
from jobs.segment.run import run

pytestmark = pytest.mark.slow

VOCAB = "cat, person, coffee cup, rocket"
PHOTOS = ["astronaut.jpg", "coffee.png", "chelsea.JPG", "sub/rocket.jpeg", "odd/exif_rotated.jpg", "odd/gray.png"]


def shards(sample_photos, n_shards: int = 3) -> tuple[dict[str, bytes], dict[str, tuple[int, int]]]:
    """Shards written by webdataset's ShardWriter (key.jpg/png + key.json + key.txt) and each member's photo
    size, by its identity relative to the shard folder (``00001.tar#<key>``)."""
    import webdataset as wds

    good = good_images(sample_photos)
    out, sizes = {}, {}
    buffers = [io.BytesIO() for _ in range(n_shards)]
    writers = [wds.TarWriter(b) for b in buffers]
    for i, name in enumerate(PHOTOS * 2):
        data, size = good[name]
        key = f"{i:06d}"
        ext = name.rsplit(".", 1)[1].lower()
        writers[i % n_shards].write({"__key__": key, ext: data, "json": json.dumps({"name": name}).encode(),
                                     "txt": name})
        sizes[f"{i % n_shards:05d}.tar#{key}"] = size
    for j, (w, b) in enumerate(zip(writers, buffers)):
        w.close()
        out[f"{j:05d}.tar"] = b.getvalue()
    return out, sizes


def config(input, output, **kw) -> JobConfig:
    base = dict(input=input, output=output, vocab=VOCAB, model="tiny", resolution=RESOLUTION, batch_size=2,
                unit_size=4, max_error_fraction=1.0)
    return JobConfig(**{**base, **kw})


def test_webdataset_shards_on_s3_every_member_once_and_a_rerun_has_nothing_to_do(ray_local, bucket, sample_photos,
                                                                                 capsys):
    files, sizes = shards(sample_photos)
    put_files(f"s3://{bucket}/shards", files)
    output = f"s3://{bucket}/seg"
    assert run(config(f"s3://{bucket}/shards/", output)) == 0
    expected = {f"s3://{bucket}/shards/{k}": v for k, v in sizes.items()}
    tables = check_exactly_once(output, list(expected))
    check_masks_and_stats(tables, expected)  # label maps at each photo's size (EXIF rotation applied)
    manifest = OutputStore(output).get_json("manifest.json")
    assert manifest["counts"]["units_committed"] == 3 and manifest["counts"]["processed"] == 12
    assert run(config(f"s3://{bucket}/shards/", output)) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_a_killed_shard_run_resubmitted_finishes_exactly_once(ray_local, bucket, sample_photos, tmp_path, capsys):
    files, sizes = shards(sample_photos, n_shards=12)  # one image per shard: 12 units, committed over time
    put_files(f"s3://{bucket}/wds", files)
    output = tmp_path / "out"
    argv = ["jobs.segment", f"s3://{bucket}/wds/", str(output), "--vocab", VOCAB, "--model", "tiny", "--resolution",
            str(RESOLUTION), "--unit-size", "4", "--batch-size", "2", "--address", "local", "--num-cpus", "2",
            "--object-store-mb", "150", "--max-error-fraction", "1"]
    committed = kill_job_after_commits(argv, output, tmp_path / "job.log", min_commits=1)
    assert 1 <= committed < 12
    assert run(config(f"s3://{bucket}/wds/", str(output))) == 0
    check_exactly_once(str(output), [f"s3://{bucket}/wds/{k}" for k in sizes])


def test_a_hugging_face_image_dataset_and_an_s3_inventory_run_end_to_end(ray_local, bucket, sample_photos, s3_endpoint):
    import boto3
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage

    good = good_images(sample_photos)
    ds = Dataset.from_dict({"image": [{"bytes": good[n][0], "path": n} for n in PHOTOS],
                            "text": [f"photo {i}" for i in range(len(PHOTOS))]},
                           features=Features({"image": HFImage(), "text": Value("string")}))
    buf = io.BytesIO()
    ds.to_parquet(buf)
    put_files(f"s3://{bucket}/hf", {"train.parquet": buf.getvalue()})
    output = f"s3://{bucket}/seg-hf"
    assert run(config(f"s3://{bucket}/hf/train.parquet", output)) == 0
    expected = {f"s3://{bucket}/hf/train.parquet#{i:09d}": good[n][1] for i, n in enumerate(PHOTOS)}
    check_masks_and_stats(check_exactly_once(output, list(expected)), expected)

    # an S3 Inventory (CSV.gz) of loose photos in another bucket
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = put_files(f"s3://{bucket}/loose", {n: good[n][0] for n in PHOTOS})
    lines = [f'"{bucket}","loose/{n}","v1","true","false","3"' for n in PHOTOS]
    s3.put_object(Bucket=bucket, Key="inv/data/1.csv.gz", Body=gzip.compress(("\n".join(lines) + "\n").encode()))
    s3.put_object(Bucket=bucket, Key="inv/manifest.json", Body=json.dumps({
        "sourceBucket": bucket, "destinationBucket": f"arn:aws:s3:::{bucket}", "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size",
        "files": [{"key": "inv/data/1.csv.gz", "size": 1, "MD5checksum": "0"}]}).encode())
    output = f"s3://{bucket}/seg-inv"
    assert run(config(f"s3://{bucket}/inv/manifest.json", output)) == 0
    check_masks_and_stats(check_exactly_once(output, keys), {k: good[k.split("/loose/", 1)[1]][1] for k in keys})
