"""A checkpoint as files: pickle-only weights refused from a listing, the node cache keyed by the remote
files' versions (a checkpoint fixed in place is fetched again), a download complete only once it loads."""

from __future__ import annotations

import pytest
import torch

from diffseg.checkpoint import ModelLoadError, check_model_uri, downsampling, list_checkpoint, load_tokenizer
from diffseg.model import build_random_components, load_pipeline, save_pipeline


def _upload(folder, uri_path):
    import s3fs

    s3fs.S3FileSystem().put(str(folder) + "/", uri_path, recursive=True)


def test_a_checkpoint_with_only_pickle_weights_is_refused_from_its_listing(tiny_pipe, tmp_path, bucket):
    folder = save_pipeline(tiny_pipe, tmp_path / "sd")
    check_model_uri(str(folder))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(folder / "unet" / "diffusion_pytorch_model.bin")
    for uri in (str(folder), f"s3://{bucket}/sd/"):
        if uri.startswith("s3://"):
            _upload(folder, f"{bucket}/sd/")
        with pytest.raises(ModelLoadError, match=r"unet/ has only pickle weights \(unet/diffusion_pytorch_model.bin\)"):
            check_model_uri(uri)
        check_model_uri(uri, allow_pickle=True)  # listing only: nothing was loaded


def test_preflight_facts_come_from_configs_and_the_tokenizer(tiny_pipe, tmp_path):
    folder = save_pipeline(tiny_pipe, tmp_path / "sd")
    assert downsampling("tiny") == downsampling(str(folder)) == 64
    assert load_tokenizer(str(folder))("a cat").input_ids == tiny_pipe.tokenizer("a cat").input_ids
    assert "unet/diffusion_pytorch_model.safetensors" in list_checkpoint(str(folder))


def test_a_checkpoint_fixed_at_the_same_uri_is_fetched_again(tiny_pipe, tmp_path, bucket):
    other = build_random_components("tiny", seed=1)
    good = save_pipeline(tiny_pipe, tmp_path / "good")
    uri, cache = f"s3://{bucket}/sd/", tmp_path / "cache"
    broken = save_pipeline(tiny_pipe, tmp_path / "broken")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    _upload(broken, f"{bucket}/sd/")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_pipeline(uri, dtype="fp32", device="cpu", cache_dir=str(cache))
    assert not list((cache / "models").rglob(".complete"))  # a download that does not load is never complete

    _upload(good, f"{bucket}/sd/")  # fixed in place
    first = load_pipeline(uri, dtype="fp32", device="cpu", cache_dir=str(cache))
    assert all(torch.equal(a, b) for a, b in zip(tiny_pipe.unet.parameters(), first.unet.parameters()))

    other_folder = tmp_path / "other"
    other["unet"].save_pretrained(other_folder / "unet", safe_serialization=True)
    _upload(other_folder / "unet", f"{bucket}/sd/unet/")  # new weights, same URI
    second = load_pipeline(uri, dtype="fp32", device="cpu", cache_dir=str(cache))
    assert all(torch.equal(a, b) for a, b in zip(other["unet"].parameters(), second.unet.parameters()))
    entries = [p for p in (cache / "models").iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / ".complete").exists()  # the stale copy was removed
