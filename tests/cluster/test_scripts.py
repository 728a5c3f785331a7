"""scripts/stage-model against moto's S3 server (the staged tiny checkpoint loads from s3:// as the job
loads it) and scripts/set-image on a copy of cluster/."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(ROOT / "scripts" / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_pipe):
    """The tiny pipeline saved as a diffusers folder, plus files the job never loads."""
    from diffseg.model import save_pipeline

    folder = save_pipeline(tiny_pipe, tmp_path_factory.mktemp("ckpt") / "tiny")
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"variant")
    (folder / "v1-5-pruned.ckpt").write_bytes(b"pickle")
    (folder / "README.md").write_text("model card")
    return folder


def test_stage_model_uploads_what_the_job_loads_and_it_loads_from_s3(tiny_checkpoint, bucket, capsys, tmp_path, monkeypatch):
    import s3fs

    from diffseg.model import load_pipeline

    stage = load_script("stage-model")
    dest = f"s3://{bucket}/models/tiny/"
    assert stage.main([str(tiny_checkpoint), dest, "--dry-run"]) == 0
    assert "would upload" in capsys.readouterr().out
    assert not s3fs.S3FileSystem().exists(f"{bucket}/models/tiny/model_index.json")
    assert stage.main([str(tiny_checkpoint), dest]) == 0
    assert f"--model {dest}" in capsys.readouterr().out
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    staged = sorted(p.split("/models/tiny/", 1)[1] for p in fs.find(f"{bucket}/models/tiny"))
    assert "model_index.json" in staged and "unet/diffusion_pytorch_model.safetensors" in staged
    assert not [p for p in staged if p.endswith((".ckpt", ".fp16.safetensors", "README.md"))]
    monkeypatch.setenv("DIFFSEG_CACHE", str(tmp_path / "cache"))
    pipe = load_pipeline(dest, dtype="fp32", device="cpu")
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    # a second stage to the same prefix is refused unless --overwrite
    assert stage.main([str(tiny_checkpoint), dest]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert stage.main([str(tiny_checkpoint), dest, "--overwrite"]) == 0


def test_stage_model_refuses_pickle_only_weights_and_non_checkpoints(tiny_checkpoint, tmp_path, capsys):
    stage = load_script("stage-model")
    pickled = shutil.copytree(tiny_checkpoint, tmp_path / "pickled")
    (pickled / "vae" / "diffusion_pytorch_model.safetensors").rename(pickled / "vae" / "diffusion_pytorch_model.bin")
    assert stage.main([str(pickled), str(tmp_path / "dest")]) == 2
    err = capsys.readouterr().err
    assert "vae has no .safetensors weights" in err and "safe_serialization=True" in err
    assert stage.main([str(tmp_path), str(tmp_path / "dest")]) == 2
    assert "missing" in capsys.readouterr().err and not (tmp_path / "dest").exists()


def test_set_image_rewrites_every_diffseg_image_and_nothing_else(tmp_path):
    cluster = shutil.copytree(ROOT / "cluster", tmp_path / "cluster")
    image = "registry.example.com/team/diffseg:0.1.0"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "set-image"), image, "--cluster-dir", str(cluster)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "rayjob.yaml: 2 image line(s)" in done.stdout and "ray-up.yaml: 1 image line(s)" in done.stdout
    texts = {p.name: p.read_text() for p in cluster.glob("*.yaml")}
    image_lines = [line for t in texts.values() for line in t.splitlines() if line.strip().startswith(("image:", "- image:"))]
    assert image_lines and not [line for line in image_lines if "your-org" in line]
    assert "image: curlimages/curl:" in texts["nightly.yaml"]
    job = yaml.safe_load(texts["rayjob.yaml"])
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == image
    assert texts["rayjob.yaml"].count("#") == (ROOT / "cluster" / "rayjob.yaml").read_text().count("#")  # comments kept
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "set-image"), "Not An Image", "--cluster-dir", str(cluster)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not an image name" in bad.stderr
