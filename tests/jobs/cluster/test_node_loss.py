"""A run on a 3-node cluster (a head with no CPU, two worker nodes) with OUTPUT on S3, whose second
worker node is removed after the first commits: the run finishes with every input exactly once in masks
xor errors and the same label maps as a clean single-node run. The same with nodes that declare one
logical GPU each and the model forced onto the CPU (``--device cpu``): one actor per GPU, spread over
the nodes; losing a node shrinks the pool without losing or duplicating an image."""

from __future__ import annotations

import time

import numpy as np
import pytest
from clusterjob import job_process
from jobtest_utils import MAX_PIXELS, RESOLUTION, check_exactly_once, put_files, read_output

from diffseg.codecs.masks import decode_label_png
from diffseg.lake.store import OutputStore

pytestmark = pytest.mark.slow

NAMES = ["astronaut.jpg", "coffee.png", "chelsea.JPG", "sub/rocket.jpeg", "odd/gray.png", "bad/truncated.jpg"]


def label_maps(output: str) -> dict[str, np.ndarray]:
    masks = read_output(output, "masks")
    return {r["uri"].rsplit("/images/", 1)[1]: decode_label_png(r["label_map_png"]) for r in masks.to_pylist()}


@pytest.mark.parametrize("nodes, extra", [
    ([{"num_cpus": 2}, {"num_cpus": 2}], {}),
    ([{"num_cpus": 2, "num_gpus": 1}, {"num_cpus": 2, "num_gpus": 1}], {"device": "cpu"}),
], ids=["cpu-nodes", "gpu-nodes"])
def test_a_node_removed_half_way_loses_and_duplicates_nothing(cluster_factory, bucket, lake_files, tmp_path, nodes,
                                                             extra):
    files, _, _ = lake_files
    uris = put_files(f"s3://{bucket}/images", {f"{i}/{n}": files[n] for i in range(3) for n in NAMES})
    config = dict(input=f"s3://{bucket}/images/", vocab="cat, person", model="tiny", resolution=RESOLUTION,
                  batch_size=2, unit_size=2, max_pixels=MAX_PIXELS, max_error_fraction=1.0, **extra)
    cluster, workers = cluster_factory(nodes)
    output = f"s3://{bucket}/seg"
    proc = job_process("segment", {**config, "output": output}, cluster.address, tmp_path / "job.log")
    store = OutputStore(output)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and len(store.list("_commits/default")) < 2:
        time.sleep(0.5)
    assert proc.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
    cluster.remove_node(workers[1], allow_graceful=False)  # half-way: some units committed, others in flight
    assert proc.wait(timeout=400) == 0, (tmp_path / "job.log").read_text()[-3000:]
    log = (tmp_path / "job.log").read_text()
    assert "-> 2 actor(s)" in log  # one per node (per GPU on the GPU nodes), sized from one node
    tables = check_exactly_once(output, uris)
    assert tables["errors"].num_rows == 3 and tables["masks"].num_rows == 15
    assert store.list("_staging") == []

    clean = str(tmp_path / "clean")  # the same lake on one local node
    single = job_process("segment", {**config, "output": clean, "num_cpus": 2, "device": None}, "local",
                         tmp_path / "clean.log")
    assert single.wait(timeout=400) == 0, (tmp_path / "clean.log").read_text()[-3000:]
    ours, reference = label_maps(output), label_maps(clean)
    assert sorted(ours) == sorted(reference)
    for name, labels in reference.items():
        assert np.array_equal(ours[name], labels), name
