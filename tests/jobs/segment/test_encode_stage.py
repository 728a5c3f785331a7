"""Stages by resource: the device actor's compact outcomes, encoded and written by the CPU stage
(jobs.common.actor.encode_and_write), give the same masks, stats and errors tables as the actor encoding
and writing them itself, for the same inputs (tiny model, two methods, a 2.8 MP photo, a decode error)."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
from jobtest_utils import RESOLUTION

from diffseg.lake.commit import WriteTarget
from diffseg.lake.store import OutputStore
from jobs.common.actor import COMPACT_SCHEMA, encode_and_write
from jobs.segment.actor import SegmentUDF, UdfConfig

NAMES = ["coffee", "chelsea", "astronaut", "rocket"]


def unit_batch(photos) -> dict[str, np.ndarray]:
    """Two units: u1 = coffee (as a 2048x1382 photo), chelsea (a decode error); u2 = astronaut, rocket."""
    n = len(NAMES)
    batch = {
        "uri": np.array([f"s3://lake/{name}.jpg" for name in NAMES], dtype=object),
        "unit_id": np.array(["u1", "u1", "u2", "u2"], dtype=object),
        "image": np.stack([np.asarray(photos[x][:RESOLUTION, :RESOLUTION]) for x in NAMES]),
        "height": np.array([1382] + [photos[x].shape[0] for x in NAMES[1:]], dtype=np.int32),
        "width": np.array([2048] + [photos[x].shape[1] for x in NAMES[1:]], dtype=np.int32),
        "stage": np.array(["", "decode", "", ""], dtype=object),
        "error_type": np.array(["", "ImageDecodeError", "", ""], dtype=object),
        "message": np.array(["", "broken", "", ""], dtype=object),
        "pos": np.array([1, 0, 0, 1], dtype=np.int32),
        "unit_rows": np.array([2] * n, dtype=np.int32),
    }
    return batch


def read_tables(output: str, meta) -> dict:
    """{(table, unit): rows without the write time} of the files the META rows name."""
    import json

    store, out = OutputStore(output), {}
    for unit, files in zip(meta.column("unit_id").to_pylist(), meta.column("files").to_pylist()):
        for table, f in json.loads(files).items():
            data = pq.read_table(store.path(f["path"]))
            out[(table, unit)] = data.drop_columns(["written_at"]).to_pylist()
    return out


@pytest.mark.parametrize("save_scores", [False, True])
def test_encode_stage_writes_what_the_actor_would(sample_photos, tmp_path, save_scores):
    target = WriteTarget(str(tmp_path / "in-actor"), "r1", "tiny", "hash", ("cat", "person", "coffee cup"),
                         invocation="0123456789ab")
    config = UdfConfig(resolution=RESOLUTION, save_scores=save_scores, methods=("diffsegmenter", "seediff"),
                       target=target)
    udf = SegmentUDF("tiny", "cat, person, coffee cup", config)
    batch = unit_batch(sample_photos)
    in_actor = udf(batch)  # the actor encodes and writes

    udf.config = dataclasses.replace(config, encode_stage=True,
                                     target=dataclasses.replace(target, output=str(tmp_path / "stage")))
    compact = udf(batch)
    assert compact.schema == COMPACT_SCHEMA and compact.column("unit_id").to_pylist() == ["u1", "u2"]
    assert compact.column("positions").to_pylist() == [[0, 1], [0, 1]]
    pairs = pickle.loads(compact.column("outcomes")[0].as_py())
    assert "image" not in pairs[0][0]  # the decoded input stays in the actor
    labels = pairs[1][1]["diffsegmenter"]["labels"]
    assert labels.shape == (691, 1024) and labels.dtype == np.uint8  # the argmax-size map, not the photo's size
    staged = encode_and_write(compact, udf.encoder(), udf.config.target)

    assert staged.column("final").to_pylist() == in_actor.column("final").to_pylist() == [True, True]
    for column in ("unit_id", "positions", "errors", "retry", "counts"):
        assert staged.column(column).to_pylist() == in_actor.column(column).to_pylist(), column
    expected, got = read_tables(target.output, in_actor), read_tables(udf.config.target.output, staged)
    assert sorted(got) == sorted(expected) == sorted((t, u) for t in ("masks", "stats", "errors") for u in ("u1", "u2"))
    for key in expected:
        assert got[key] == expected[key], key  # PNG bytes, RLE, statistics, error rows: equal
    assert len(expected[("masks", "u2")]) == 4 and expected[("errors", "u1")][0]["message"] == "broken"
    assert all((m["scores_png"] is not None) == save_scores for m in expected[("masks", "u2")])
