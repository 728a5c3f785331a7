"""Every refusal of every command exits with its documented code every time, as a scheduler sees it: in
a process of its own, many times, several at once (the load under which a native thread alive at
interpreter exit used to turn a refused export's exit 2 into an abort, 134; jobs.common.process_exit)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VOCAB = ["cat", "dog"]


def two_method_run(root: Path) -> str:
    """A committed OUTPUT of one unit with masks of two methods (as jobs.segment writes them)."""
    from diffseg.codecs.masks import encode_label_png
    from diffseg.codecs.stats import compute_class_stats
    from diffseg.lake.schemas import SCHEMAS
    from diffseg.lake.store import OutputStore
    from diffseg.lake.units import Unit, unit_id_of, write_unit

    store = OutputStore(str(root))
    labels = np.zeros((16, 24), np.uint8)
    labels[2:9, 3:12], labels[10:14, 14:22] = 1, 2
    scores = np.random.default_rng(0).random((1 + len(VOCAB), 8, 8)).astype(np.float32)
    uris = ("s3://lake/a.jpg", "s3://lake/b.jpg")
    masks, stats = [], []
    for uri in uris:
        for method in ("diffsegmenter", "seediff"):
            present = compute_class_stats(labels, VOCAB, scores)
            masks.append({"uri": uri, "width": 24, "height": 16, "method": method, "label_map_png": encode_label_png(labels),
                          "classes": [s["class_name"] for s in present], "run_id": "r1", "model": "tiny", "vocab_hash": "h"})
            stats += [{"uri": uri, "method": method, **s} for s in present]
    tables = {"masks": pa.Table.from_pylist(masks, schema=SCHEMAS["masks"]),
              "stats": pa.Table.from_pylist(stats, schema=SCHEMAS["stats"]),
              "errors": pa.Table.from_pylist([], schema=SCHEMAS["errors"])}
    write_unit(store, "r1", Unit(unit_id_of(uris), uris), tables)
    store.put_json("manifest.json", {"run_id": "r1", "status": "succeeded", "model": {"uri": "tiny"},
                                     "vocabulary": {"classes": VOCAB, "hash": "h"}})
    return str(root)


def refusals(tmp: Path) -> dict[str, tuple[list[str], int, int, str]]:
    """name -> (argv after `python -m`, expected exit code, times, a phrase of the message)."""
    run = two_method_run(tmp / "run")
    (tmp / "dest" / "coco").mkdir(parents=True)
    (tmp / "dest" / "coco" / "instances.json").write_text("{}")
    missing = str(tmp / "missing")
    return {
        # Parquet readers (Arrow I/O threads): the abort's home (without jobs.common.process_exit the first one aborted in 2 of 40 and 9 of 80 runs)
        "export unknown method": (["jobs.export", run, str(tmp / "x"), "--format", "coco", "--method", "nope", "-q"],
                                  2, 40, "has no masks of it"),
        "export DEST holds one": (["jobs.export", run, str(tmp / "dest" / "coco"), "--format", "coco",
                                   "--method", "seediff", "-q"], 2, 10, "--overwrite"),
        "export no OUTPUT": (["jobs.export", missing, str(tmp / "x"), "--format", "coco"], 2, 10, "no manifest.json"),
        "status no OUTPUT": (["jobs.status", missing], 2, 10, "no manifest.json"),
        "status no run": (["jobs.status", run, "--run-id", "r9"], 2, 10, "r9"),
        "report no run": (["jobs.report", run, "--run-id", "r9", "--out", str(tmp / "r.html")], 2, 10, "r9"),
        # refused before anything is read
        "segment no INPUT": (["jobs.segment", missing, str(tmp / "new" / "out"), "--vocab", "cat", "--model", "tiny",
                              "-q"], 2, 5, "does not exist"),
        "synthesize same class twice": (["jobs.synthesize", str(tmp / "syn"), "--classes", "cat, Cat", "--per-class",
                                         "1", "--model", "tiny"], 2, 5, "cat"),
        "evaluate no OUTPUT": (["jobs.evaluate", missing, "--gt", missing, "--class-map", missing], 2, 5, "missing"),
        "diffseg export misspelt": (["jobs.cli", "export", run, str(tmp / "x"), "--fromat", "coco"], 2, 10,
                                    "did you mean --format?"),
    }


def run_once(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_every_refusal_exits_with_its_code_every_time(tmp_path):
    cases = refusals(tmp_path)
    jobs = [(name, argv) for name, (argv, _, times, _) in cases.items() for _ in range(times)]
    with ThreadPoolExecutor(max_workers=4) as pool:  # several at once: a loaded machine
        results = list(pool.map(lambda job: (job[0], run_once(job[1])), jobs))
    wrong = []
    for name, done in results:
        _, code, _, phrase = cases[name]
        if done.returncode != code or phrase not in done.stderr:
            wrong.append(f"{name}: exit {done.returncode} (expected {code}): {done.stderr[-600:]}")
    assert not wrong, f"{len(wrong)} of {len(results)} runs:\n" + "\n".join(wrong[:10])
    assert not (tmp_path / "new").exists()  # a refused segment run creates nothing under OUTPUT
    for name in ("export unknown method", "status no OUTPUT", "report no run"):  # each error printed once
        done = next(d for n, d in results if n == name)
        assert done.stderr.count("error:") == 1, done.stderr
