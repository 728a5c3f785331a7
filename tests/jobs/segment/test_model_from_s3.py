"""Loading a checkpoint from object storage: downloaded once per node, never used half-downloaded."""

import threading

import torch

from diffseg.model import load_pipeline, save_pipeline


def test_checkpoint_from_s3_is_downloaded_once_and_shared_by_concurrent_loaders(tiny_pipe, bucket, tmp_path):
    import s3fs

    folder = save_pipeline(tiny_pipe, tmp_path / "ckpt")
    # what published checkpoints also carry, which loading never reads: none of it is downloaded
    (folder / "v1-5-pruned.ckpt").write_bytes(b"x" * 1000)
    (folder / "safety_checker").mkdir()
    (folder / "safety_checker" / "model.safetensors").write_bytes(b"x" * 1000)
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"x" * 1000)
    fs = s3fs.S3FileSystem()
    fs.put(str(folder) + "/", f"{bucket}/models/tiny/", recursive=True)
    uri = f"s3://{bucket}/models/tiny/"
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    loaded, errors = [], []

    def load():
        try:
            loaded.append(load_pipeline(uri, dtype="fp32", device="cpu", cache_dir=str(cache)))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]  # actors starting together on one node
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(loaded) == 3
    for pipe in loaded:
        assert not pipe.is_random and pipe.name == uri
        for a, b in zip(tiny_pipe.unet.parameters(), pipe.unet.parameters()):
            assert torch.equal(a, b)
    entries = [p for p in (cache / "models").iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / ".complete").exists()  # one download, no partial left
    fetched = {p.relative_to(entries[0]).as_posix() for p in entries[0].rglob("*") if p.is_file()}
    assert "unet/diffusion_pytorch_model.safetensors" in fetched and "tokenizer/tokenizer.json" in fetched
    assert not {"v1-5-pruned.ckpt", "safety_checker/model.safetensors", "unet/diffusion_pytorch_model.bin",
                "unet/diffusion_pytorch_model.fp16.safetensors"} & fetched

    fs.rm(f"{bucket}/models/tiny/", recursive=True)  # the cache alone serves later loads on this node
    again = load_pipeline(uri, dtype="fp32", device="cpu", cache_dir=str(cache))
    assert again.tokenizer("a cat").input_ids == tiny_pipe.tokenizer("a cat").input_ids


def test_interrupted_download_is_never_used(tiny_pipe, bucket, tmp_path):
    import s3fs

    folder = save_pipeline(tiny_pipe, tmp_path / "ckpt")
    s3fs.S3FileSystem().put(str(folder) + "/", f"{bucket}/sd/", recursive=True)
    uri = f"s3://{bucket}/sd/"
    cache = tmp_path / "cache"
    load_pipeline(uri, dtype="fp32", device="cpu", cache_dir=str(cache))
    final = next(p for p in (cache / "models").iterdir() if p.is_dir())
    (final / ".complete").unlink()  # as if the process died before marking the download complete
    (final / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    pipe = load_pipeline(uri, dtype="fp32", device="cpu", cache_dir=str(cache))  # downloads again
    for a, b in zip(tiny_pipe.unet.parameters(), pipe.unet.parameters()):
        assert torch.equal(a, b)
