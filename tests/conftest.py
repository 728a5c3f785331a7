"""Shared fixtures. Every test runs offline: no hub, no cloud metadata, no Ray usage stats."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import pytest  # noqa: E402


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
