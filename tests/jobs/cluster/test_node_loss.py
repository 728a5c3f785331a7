"""A run on a 3-node cluster (a head with no CPU, two worker nodes) with OUTPUT on S3, one of whose worker
nodes is removed and not replaced: the run finishes on the other with every input exactly once in masks xor
errors and the same label maps as a clean single-node run. Varied: which node (the first or the second), the
moment (while the actors start, before any commit; between commits; mid-unit), the unit size (2, or 8 so
that the loss falls mid-unit), and nodes that declare one logical GPU each with the model forced onto the CPU
(``--device cpu``): one actor per GPU, spread over the nodes. The actor pool is elastic (at least one
actor), so losing a node shrinks it instead of leaving it waiting for an actor it can never place."""

from __future__ import annotations

import time

import numpy as np
import pytest
from clusterjob import job_process
from jobtest_utils import MAX_PIXELS, RESOLUTION, check_exactly_once, committed_units, put_files, read_output

from diffseg.codecs.masks import decode_label_png
from diffseg.lake.store import OutputStore

pytestmark = pytest.mark.slow

NAMES = ["astronaut.jpg", "coffee.png", "chelsea.JPG", "sub/rocket.jpeg", "odd/gray.png", "bad/truncated.jpg"]


def label_maps(output: str) -> dict[str, np.ndarray]:
    masks = read_output(output, "masks")
    return {r["uri"].rsplit("/images/", 1)[1]: decode_label_png(r["label_map_png"]) for r in masks.to_pylist()}


def clean_label_maps(config: dict, tmp_path) -> dict[str, np.ndarray]:
    """The label maps of a clean single-node run of the same lake with the same settings. The runs use
    batches of one image: which images share a model batch changes a mask by float rounding, which flips
    whole regions of the random tiny model's near-uniform scores, and a unit redone after a node loss may
    come in other batches."""
    clean = str(tmp_path / "clean")
    single = job_process("segment", {**config, "output": clean, "num_cpus": 2, "device": None}, "local",
                         tmp_path / "clean.log")
    assert single.wait(timeout=400) == 0, (tmp_path / "clean.log").read_text()[-3000:]
    return label_maps(clean)


CPU = [{"num_cpus": 2}, {"num_cpus": 2}]
GPU = [{"num_cpus": 2, "num_gpus": 1}, {"num_cpus": 2, "num_gpus": 1}]


@pytest.mark.parametrize("nodes, extra, removed, after_commits, unit_size", [
    (CPU, {}, 1, 2, 2),
    (GPU, {"device": "cpu"}, 1, 2, 2),
    (CPU, {}, 0, 1, 8),  # units of 8 images: the loss falls mid-unit
    (CPU, {}, 0, 0, 2),  # while the actors start: nothing committed yet
], ids=["cpu-second-between-commits", "gpu-second-between-commits", "cpu-first-mid-unit-of-8", "cpu-first-at-start"])
def test_a_node_removed_and_not_replaced_loses_and_duplicates_nothing(cluster_factory, bucket, lake_files, tmp_path,
                                                                     nodes, extra, removed, after_commits, unit_size):
    files, _, _ = lake_files
    uris = put_files(f"s3://{bucket}/images", {f"{i}/{n}": files[n] for i in range(3) for n in NAMES})
    config = dict(input=f"s3://{bucket}/images/", vocab="cat, person", model="tiny", resolution=RESOLUTION,
                  batch_size=1, unit_size=unit_size, max_pixels=MAX_PIXELS, max_error_fraction=1.0, **extra)
    cluster, workers = cluster_factory(nodes)
    output = f"s3://{bucket}/seg"
    proc = job_process("segment", {**config, "output": output}, cluster.address, tmp_path / "job.log")
    store = OutputStore(output)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and committed_units(output) < after_commits:
        time.sleep(0.5)
    while not after_commits and proc.poll() is None and "cluster:" not in (tmp_path / "job.log").read_text():
        time.sleep(0.2)  # the actors are being placed
    assert proc.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
    cluster.remove_node(workers[removed], allow_graceful=False)
    assert proc.wait(timeout=400) == 0, (tmp_path / "job.log").read_text()[-3000:]
    log = (tmp_path / "job.log").read_text()
    assert "-> 2 actor(s)" in log  # one per node (per GPU on the GPU nodes), sized from one node
    tables = check_exactly_once(output, uris)
    assert tables["errors"].num_rows == 3 and tables["masks"].num_rows == 15
    assert store.list("_staging") == []

    ours, reference = label_maps(output), clean_label_maps(config, tmp_path)
    assert sorted(ours) == sorted(reference)
    for name, labels in reference.items():
        assert np.array_equal(ours[name], labels), name
