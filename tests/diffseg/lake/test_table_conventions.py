"""Table conventions (issue 13 item 5): ``stats`` rows carry the run columns like ``masks``, and every
Parquet file names the run's vocabulary (id -> name) in its key-value metadata, so a copied table keeps
its class list; the compaction of a unit's staged parts keeps it too."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from jobtest_utils import encode
from test_writer import result_row  # a unit's result row: one mask and one stats item, or a decode error

from diffseg.lake.commit import METADATA_KEY, WriteTarget, compact_unit, read_run_metadata, write_results
from diffseg.lake.log import CommitLog
from diffseg.lake.schemas import ERRORS_SCHEMA, SCHEMAS, SEGMENT_TABLES, STATS_SCHEMA, results_to_table
from diffseg.lake.store import OutputStore
from diffseg.lake.units import make_units
from diffseg.lake.writer import UnitCommitter


def test_every_table_ends_with_the_run_and_write_columns():
    for schema in SCHEMAS.values():  # errors too (issue 23): joins on model and vocab_hash work on every table
        assert schema.names[-5:] == ["run_id", "model", "vocab_hash", "invocation", "written_at"]
    assert "retryable" in ERRORS_SCHEMA.names


def test_written_and_compacted_files_name_the_vocabulary_and_the_run(tmp_path):
    uris = [f"s3://lake/{i}.jpg" for i in range(3)]
    (unit,) = make_units(uris, 3)
    store = OutputStore(str(tmp_path))
    target = WriteTarget(str(tmp_path), "nightly", "s3://models/sd", "h1", vocabulary=("cat", "coffee cup"),
                         invocation="0123456789ab")
    commit_log = CommitLog(store, "nightly", "0123456789ab")
    commit_log.begin()
    committer = UnitCommitter(store, commit_log, [unit], background=False)
    specs = []
    for picks in ([0, 1], [2]):  # two parts of one unit: staged, then compacted
        rows = [result_row(unit.uris[p], unit.unit_id, ok=p != 2) for p in picks]
        meta = write_results(store, target, SEGMENT_TABLES, results_to_table(rows), np.array(picks),
                             np.array([3] * len(picks)))
        staged = store.list("_staging/nightly/0123456789ab/" + unit.unit_id)
        assert staged and all(read_run_metadata(store.path(f))["vocabulary"] == ["background", "cat", "coffee cup"]
                              for f in staged)
        specs += committer.add(meta)
    assert len(specs) == 1
    compact_unit(specs[0], SEGMENT_TABLES)
    for table in ("masks", "stats", "errors"):
        (path,) = store.list(table)
        metadata = pq.read_schema(store.path(path)).metadata
        assert json.loads(metadata[METADATA_KEY]) == {"vocabulary": ["background", "cat", "coffee cup"],
                                                      "run_id": "nightly", "model": "s3://models/sd",
                                                      "vocab_hash": "h1"}
        rows = pq.read_table(store.path(path)).to_pylist()
        assert len(rows) == (1 if table == "errors" else 2)
        assert {(r["run_id"], r["model"], r["vocab_hash"], r["invocation"]) for r in rows} == {
            ("nightly", "s3://models/sd", "h1", "0123456789ab")}
        assert all(r["written_at"] is not None for r in rows)


def test_file_without_the_metadata_reads_as_no_run(tmp_path):
    path = tmp_path / "old.parquet"
    pq.write_table(STATS_SCHEMA.empty_table(), path)
    assert read_run_metadata(str(path)) == {}


@pytest.mark.slow
def test_job_files_carry_vocabulary_and_stats_rows_the_run_columns(ray_local, tmp_path, sample_photos):
    from jobs.common.config import JobConfig
    from jobs.segment.run import run

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(encode(sample_photos["chelsea"], "JPEG"))
    (folder / "coffee.png").write_bytes(encode(sample_photos["coffee"], "PNG"))
    (folder / "broken.jpg").write_bytes(b"not an image")
    output = tmp_path / "out"
    config = JobConfig(input=str(folder), output=str(output), vocab="cat, coffee cup", model="tiny", resolution=64,
                       batch_size=2, unit_size=2, max_error_fraction=1.0)
    assert run(config) == 0
    files = {t: sorted((output / t).glob("*.parquet")) for t in ("masks", "stats", "errors")}  # after the sweep: committed only
    assert all(files.values()), files
    for table, paths in files.items():
        for path in paths:
            run_meta = read_run_metadata(str(path))
            assert run_meta["vocabulary"] == ["background", "cat", "coffee cup"], (table, path)
            assert run_meta["run_id"] == "default" and run_meta["model"] == "tiny"
    masks, stats, errors = (pq.ParquetDataset([str(p) for p in files[t]]).read() for t in ("masks", "stats", "errors"))
    assert masks.num_rows == 2 and errors.num_rows == 1 and stats.num_rows >= 2
    run_columns = {(r["run_id"], r["model"], r["vocab_hash"]) for r in masks.select(["run_id", "model", "vocab_hash"]).to_pylist()}
    assert len(run_columns) == 1 and None not in next(iter(run_columns))
    assert {(r["run_id"], r["model"], r["vocab_hash"]) for r in stats.to_pylist()} == run_columns
    assert json.loads(pq.read_schema(str(files["stats"][0])).metadata[METADATA_KEY])["vocab_hash"] == \
        next(iter(run_columns))[2]
