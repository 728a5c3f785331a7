"""A local multi-node Ray cluster (ray.cluster_utils.Cluster) for the cluster tests."""

from __future__ import annotations

import pytest

STORE_MB = 80  # object store per node: three nodes fit the test machine's memory


def start_cluster(nodes: list[dict]):
    """A head with no CPU (it hosts no task, like a real head) and one worker node per entry of `nodes`
    (``add_node`` keyword arguments: num_cpus, num_gpus); the driver is not connected."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "object_store_memory": STORE_MB << 20, "include_dashboard": False})
    workers = [cluster.add_node(object_store_memory=STORE_MB << 20, **kw) for kw in nodes]
    cluster.wait_for_nodes()
    return cluster, workers


@pytest.fixture
def cluster_factory(s3_endpoint):
    started = []

    def make(nodes: list[dict]):
        cluster, workers = start_cluster(nodes)
        started.append(cluster)
        return cluster, workers

    yield make
    for cluster in started:
        cluster.shutdown()
