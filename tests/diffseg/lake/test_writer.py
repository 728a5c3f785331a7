"""The driver-side unit writer: rows arrive in any order, possibly twice; each unit is committed once,
when complete, with every image exactly once."""

from __future__ import annotations

import random

import pyarrow as pa

from diffseg.lake.schemas import error_result, results_to_table
from diffseg.lake.store import OutputStore
from diffseg.lake.units import load_commits, make_units, read_committed
from diffseg.lake.writer import UnitWriter


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


def test_units_commit_when_complete_whatever_the_order(tmp_path):
    uris = [f"s3://lake/{i:02d}.jpg" for i in range(10)]
    units = make_units(uris, 4)
    rows = [result_row(u, unit.unit_id, ok=not u.endswith("3.jpg")) for unit in units for u in unit.uris]
    random.Random(0).shuffle(rows)
    rows += rows[:3]  # a retried task delivers some rows again
    store = OutputStore(str(tmp_path))
    writer = UnitWriter(store, "default", units, model="tiny", vocab_hash="h")
    for start in range(0, len(rows), 3):
        writer.add(results_to_table(rows[start : start + 3]))
        committed = {m["unit_id"] for m in load_commits(store)}
        assert committed == set(writer.committed)  # markers appear exactly when units complete
    assert writer.incomplete == [] and sorted(writer.committed) == sorted(u.unit_id for u in units)
    assert writer.pending == {}
    masks, errors = read_committed(str(tmp_path), "masks"), read_committed(str(tmp_path), "errors")
    assert sorted(masks["uri"].to_pylist() + errors["uri"].to_pylist()) == uris
    assert errors["uri"].to_pylist() == ["s3://lake/03.jpg"] and errors["stage"].to_pylist() == ["decode"]
    assert set(masks["run_id"].to_pylist()) == {"default"} and set(masks["vocab_hash"].to_pylist()) == {"h"}
    assert read_committed(str(tmp_path), "stats").num_rows == 9
    assert dict(writer.counts) == {"items": 10, "done": 9, "errors": 1, "mask_rows": 9, "stats_rows": 9,
                                  "errors_decode": 1}


def test_rows_of_unknown_units_are_ignored(tmp_path):
    units = make_units(["s3://lake/a.jpg"], 4)
    writer = UnitWriter(OutputStore(str(tmp_path)), "default", units, model="tiny", vocab_hash="h")
    writer.add(results_to_table([result_row("s3://lake/z.jpg", "feedfeedfeedfeed", ok=True)]))
    assert writer.committed == [] and writer.incomplete == [units[0].unit_id]
    writer.add(pa.concat_tables([results_to_table([result_row("s3://lake/a.jpg", units[0].unit_id, ok=True)])]))
    assert writer.committed == [units[0].unit_id]
