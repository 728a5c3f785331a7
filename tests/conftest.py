"""Shared fixtures. Every test runs offline: no cloud metadata, no Ray usage stats, object storage on a
local moto server. HF_HUB_OFFLINE is not set: models load from local folders or object storage, never
from a hub, and setting it globally breaks `datasets.load_dataset(..., data_files="s3://...")`."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Ray binds every node it starts (local runtimes, ray.cluster_utils.Cluster raylets, `ray start`) to
# 127.0.0.1 in this mode instead of the machine's own address: the tests' traffic never leaves loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import logging  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402
from jobtest_utils import bad_images, free_port, good_images  # noqa: E402

# Ray 2.60 turns on token auth for a local runtime it starts (and writes ~/.ray/auth_token); the tests
# run a private runtime that nothing else can reach, so they switch it off for it and its clients.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request


@pytest.fixture(scope="session")
def tiny_pipe():
    """The offline tiny random pipeline on CPU in fp32 (built once per test session)."""
    from diffseg.model import load_pipeline

    return load_pipeline("tiny", dtype="fp32", device="cpu")


@pytest.fixture(scope="session")
def sample_photos():
    """Real photographs of different non-square sizes, from scikit-image's bundled data (HxWx3 uint8)."""
    from skimage import data

    return {
        "astronaut": data.astronaut(),  # 512x512
        "coffee": data.coffee(),  # 400x600
        "chelsea": data.chelsea(),  # 300x451 (a cat)
        "rocket": data.rocket(),  # 427x640
    }

@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1; AWS_ENDPOINT_URL points at it for this process and its children."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL",)}
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket(s3_endpoint):
    """A new empty bucket (created with boto3) on the moto server."""
    import boto3

    name = f"lake-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """A private local Ray runtime with 2 CPUs and a small object store, shut down after the session."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        runtime_env={"env_vars": {"AWS_ENDPOINT_URL": s3_endpoint, "RAY_AUTH_MODE": "disabled"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def lake_files(sample_photos):
    """Every test input: {relative name: bytes}, and the expected outcome of each."""
    good, bad = good_images(sample_photos), bad_images(sample_photos)
    files = {name: data for name, (data, _) in good.items()}
    files.update({name: data for name, (data, _) in bad.items()})
    return files, {n: size for n, (_, size) in good.items()}, {n: word for n, (_, word) in bad.items()}


