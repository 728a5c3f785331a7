"""HF_HUB_OFFLINE is not needed and not set: models never touch a hub, and `datasets` reads s3:// data.

The project's environment once exported HF_HUB_OFFLINE=1, which makes Hugging Face `datasets` refuse
every remote URL ("Offline mode is enabled. Tried to reach s3://..."), including the documented
`load_dataset("parquet", data_files="s3://...")` of a run's tables.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_entry_points_does_not_set_hf_hub_offline():
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    code = ("import os, jobs.demo, jobs.cli, jobs.bench.cli, jobs.stage, diffseg; "
            "print(os.environ.get('HF_HUB_OFFLINE', 'unset'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "unset"


@pytest.mark.slow
def test_datasets_reads_a_runs_parquet_from_s3(bucket, s3_endpoint, tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") in (None, "", "0"), (
        "HF_HUB_OFFLINE is set in this test process (the Makefile's export, or an import of a module that sets "
        "it, such as jobs.bench.cli): datasets then refuses every s3:// URL")
    import datasets
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    with fs.open(f"{bucket}/seg/stats/part-0.parquet", "wb") as f:
        pq.write_table(pa.table({"uri": ["s3://lake/a.jpg", "s3://lake/b.jpg"], "pixel_count": [12, 30]}), f)
    # the endpoint comes from AWS_ENDPOINT_URL (set by the s3_endpoint fixture), as in a user's shell
    ds = datasets.load_dataset("parquet", data_files=f"s3://{bucket}/seg/stats/*.parquet", split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 2 and ds["pixel_count"] == [12, 30]


def test_a_checkpoint_folder_loads_with_no_network_and_no_offline_flag(tiny_pipe, tmp_path, monkeypatch):
    from diffseg.model import load_pipeline, save_pipeline

    folder = save_pipeline(tiny_pipe, tmp_path / "sd")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    attempts = []

    def no_network(self, address):
        attempts.append(address)
        raise OSError(f"test: no network ({address})")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    pipe = load_pipeline(str(folder), dtype="fp32", device="cpu")
    assert attempts == []
    assert pipe.unet.config.cross_attention_dim == tiny_pipe.unet.config.cross_attention_dim
    assert len(pipe.tokenizer) == len(tiny_pipe.tokenizer)
