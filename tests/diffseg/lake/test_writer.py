"""Workers write, the driver commits: parts of units arrive in any order, some twice or overlapping (a
retried batch); each unit is committed once, when covered, with every image exactly once in a plain read
of the tables, and no staging file is left. With a commit thread, units gather into few log entries."""

from __future__ import annotations

import random

import numpy as np
import pyarrow.dataset as pads

from diffseg.lake.commit import WriteTarget, compact_unit, write_results
from diffseg.lake.done_index import load_state
from diffseg.lake.log import CommitLog
from diffseg.lake.schemas import SEGMENT_TABLES, error_result, results_to_table
from diffseg.lake.store import OutputStore
from diffseg.lake.units import make_units, read_committed
from diffseg.lake.writer import UnitCommitter


def begun(store, invocation="0123456789ab") -> CommitLog:
    commit_log = CommitLog(store, "default", invocation)
    commit_log.begin()
    return commit_log


def result_row(uri: str, unit_id: str, ok: bool) -> dict:
    if not ok:
        return error_result(uri, unit_id, "decode", ValueError(f"cannot decode image {uri!r}: empty"))
    mask = {"width": 3, "height": 2, "method": "diffsegmenter", "label_map_png": b"png", "classes": ["cat"],
            "scores_png": None}
    stat = {"method": "diffsegmenter", "class_id": 1, "class_name": "cat", "pixel_count": 6, "fraction": 1.0,
            "bbox_xywh": [0, 0, 3, 2], "score_mean": 0.5, "score_max": 0.9, "components": 1, "rle_counts": "06",
            "rle_size": [2, 3]}
    return {"uri": uri, "unit_id": unit_id, "stage": None, "error_type": None, "message": None,
            "masks": [mask], "stats": [stat]}


def worker_batch(store, target, units, picks):
    """What an actor returns for a batch holding `picks` [(unit index, position)]: it writes the rows."""
    rows = [result_row(units[u].uris[p], units[u].unit_id, ok=not units[u].uris[p].endswith("3.jpg")) for u, p in picks]
    positions = np.array([p for _, p in picks])
    sizes = np.array([len(units[u].uris) for u, _ in picks])
    return write_results(store, target, SEGMENT_TABLES, results_to_table(rows), positions, sizes)


def test_parts_in_any_order_and_retried_batches_commit_each_image_once(tmp_path):
    uris = [f"s3://lake/{i:02d}.jpg" for i in range(10)]
    units = make_units(uris, 4)  # 4 + 4 + 2 images
    store = OutputStore(str(tmp_path))
    target = WriteTarget(str(tmp_path), "default", "tiny", "h", invocation="0123456789ab")
    batches = [[(0, 0), (0, 1)], [(0, 2), (0, 3)], [(0, 1), (0, 2)],  # unit 0 in parts; a retry overlaps two
               [(1, p) for p in range(4)],  # unit 1 whole: its final files at once
               [(2, 1)], [(2, 1)], [(2, 0)]]  # unit 2: one part delivered twice
    random.Random(0).shuffle(batches)
    committer = UnitCommitter(store, begun(store), units, background=False)
    compactions = 0
    for picks in batches:
        for spec in committer.add(worker_batch(store, target, units, picks)):
            compactions += 1
            committer.compacted(spec, compact_unit(spec, SEGMENT_TABLES))
        assert set(load_state(store, "default").units) == set(committer.committed)  # commits when complete
    late = worker_batch(store, target, units, [(0, 3)])  # a straggler after its unit was committed
    committer.add(late)
    committer.finish()
    assert committer.incomplete == [] and compactions == 2 and store.list("_staging") == []
    assert sorted(committer.committed) == sorted(u.unit_id for u in units)
    # a plain dataset read (what DuckDB or pandas do) sees every image once, one file per table and unit
    masks = pads.dataset(str(tmp_path / "masks"), format="parquet").to_table()
    errors = pads.dataset(str(tmp_path / "errors"), format="parquet").to_table()
    assert sorted(masks["uri"].to_pylist() + errors["uri"].to_pylist()) == uris
    assert len(store.list("masks")) == 3 and read_committed(str(tmp_path), "masks").num_rows == 9
    assert errors["uri"].to_pylist() == ["s3://lake/03.jpg"] and errors["stage"].to_pylist() == ["decode"]
    assert set(masks["run_id"].to_pylist()) == {"default"} and set(masks["vocab_hash"].to_pylist()) == {"h"}
    done = load_state(store, "default")
    for unit in units:  # rows of a unit keep the unit's order, whatever parts it came in
        path = done.units[unit.unit_id]["files"]["masks"]["path"]
        assert path.startswith(f"masks/part-default-0123456789ab-{unit.unit_id}-")
        rows = pads.dataset(str(tmp_path / path)).to_table()["uri"].to_pylist()
        assert rows == [u for u in unit.uris if not u.endswith("3.jpg")]
    assert dict(committer.counts) == {"items": 10, "done": 9, "errors": 1, "mask_rows": 9, "stats_rows": 9,
                                      "errors_decode": 1, "errors_retryable": 0}
    assert len(done.done_keys()) == 10 and done.retryable().num_rows == 0
    # metadata only, never masks: per part its positions and the identity of its files (path, size, md5)
    assert committer.bytes_received < 800 * (len(batches) + 1)


def test_metadata_of_unknown_units_is_ignored(tmp_path):
    units = make_units(["s3://lake/a.jpg"], 4)
    store = OutputStore(str(tmp_path))
    target = WriteTarget(str(tmp_path), "default", "tiny", "h")
    committer = UnitCommitter(store, begun(store), units, background=False)
    other = make_units(["s3://lake/z.jpg"], 4)
    committer.add(worker_batch(store, target, other, [(0, 0)]))
    assert committer.committed == [] and committer.incomplete == [units[0].unit_id]
    committer.add(worker_batch(store, target, units, [(0, 0)]))
    assert committer.committed == [units[0].unit_id]


def test_background_committer_batches_units_into_few_entries_and_counts_them(tmp_path):
    uris = [f"s3://lake/{i:03d}.jpg" for i in range(60)]
    units = make_units(uris, 2)  # 30 units
    store = OutputStore(str(tmp_path))
    target = WriteTarget(str(tmp_path), "default", "tiny", "h", invocation="0123456789ab")
    metas = [worker_batch(store, target, units, [(u, 0), (u, 1)]) for u in range(len(units))]
    committer = UnitCommitter(store, begun(store), units)  # commit thread: group commit
    for meta in metas:
        assert committer.add(meta) == []
    committer.finish()
    done = load_state(store, "default")
    assert sorted(done.units) == sorted(u.unit_id for u in units) and committer.incomplete == []
    assert 1 <= committer.entries <= len(units) and committer.counts["items"] == 60
    assert sorted(done.done_keys().to_pylist()) == uris


def test_the_committer_writes_done_index_snapshots_while_it_commits(tmp_path):
    """A driver killed hard re-plans from a recent snapshot: it reads only the entries written since."""
    uris = [f"s3://lake/{i:03d}.jpg" for i in range(12)]
    units = make_units(uris, 2)
    store = OutputStore(str(tmp_path))
    target = WriteTarget(str(tmp_path), "default", "tiny", "h", invocation="0123456789ab")
    commit_log = begun(store)
    committer = UnitCommitter(store, commit_log, units, background=False, done=load_state(store, "default"),
                              index_every_s=0.0)
    for u in range(len(units)):
        committer.add(worker_batch(store, target, units, [(u, 0), (u, 1)]))
    assert committer.index_snapshots == len(units)
    # no finish, no final index: as if the driver were killed now
    done = load_state(store, "default")
    assert done.entries_read == 0 and sorted(done.done_keys().to_pylist()) == uris
    named = {f for s in done.segments for f in (s.keys, s.units)}  # the live segments (keys and units files)
    assert set(store.list("_index/default")) == named and len(done.segments) < len(units)  # merged ones are gone


def test_a_stored_plan_is_committed_from_the_keys_the_workers_send(tmp_path):
    """The committer holds only ids and sizes of the plan: each unit's keys come with its rows' metadata,
    and what it keeps of a committed unit is its count."""
    import pyarrow as pa
    import pytest

    from diffseg.lake.plan import plan_keys, units_of_plan

    uris = [f"s3://lake/{i:03d}.jpg" for i in range(40)]
    store = OutputStore(str(tmp_path))
    commit_log = begun(store)
    plan, _ = plan_keys(pa.array(uris), load_state(store, "default"), store, "default", commit_log.invocation, 8,
                        shards=4)
    units = list(units_of_plan(store, plan))
    target = WriteTarget(str(tmp_path), "default", "tiny", "h", invocation="0123456789ab")
    committer = UnitCommitter(store, commit_log, plan, background=False)
    assert committer.total_items == 40 and sorted(committer.incomplete) == sorted(u.unit_id for u in units)
    keyless = worker_batch(store, target, units, [(0, p) for p in range(len(units[0].uris))])
    with pytest.raises(ValueError, match="must send every row's key"):
        committer.add(keyless.set_column(8, "keys", pa.nulls(keyless.num_rows, keyless.schema.field("keys").type)))
    for u, unit in enumerate(units):
        picks = [(u, p) for p in range(len(unit.uris))]
        for half in (picks[::2], picks[1::2]):  # two parts: compacted with the keys the parts told
            for spec in committer.add(worker_batch(store, target, units, half)):
                committer.compacted(spec, compact_unit(spec, SEGMENT_TABLES))
    committer.finish()
    assert committer.incomplete == [] and sum(committer.committed_units.values()) == 40
    done = load_state(store, "default")
    assert sorted(done.done_keys().to_pylist()) == uris and len(done.units) == len(units)
