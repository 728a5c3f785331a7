import pytest
import torch

from diffseg.model import ModelLoadError, load_pipeline, redact_uri, save_pipeline


def test_tiny_pipeline_has_sd15_structure(tiny_pipe):
    unet = tiny_pipe.unet
    assert len(unet.down_blocks) == 4 and len(unet.up_blocks) == 4
    names = list(unet.attn_processors)
    assert sum(".attn2." in n for n in names) == 16  # 2+2+2 down, 1 mid, 3+3+3 up, as SD 1.5
    assert tiny_pipe.vae_scale == 8
    assert tiny_pipe.is_random


def test_tiny_pipeline_is_deterministic():
    a = load_pipeline("tiny", dtype="fp32", device="cpu")
    b = load_pipeline("tiny", dtype="fp32", device="cpu")
    for pa, pb in zip(a.unet.parameters(), b.unet.parameters()):
        assert torch.equal(pa, pb)


def test_saved_checkpoint_round_trips(tiny_pipe, tmp_path):
    folder = save_pipeline(tiny_pipe, tmp_path / "ckpt")
    loaded = load_pipeline(str(folder), dtype="fp32", device="cpu")
    assert not loaded.is_random
    for pa, pb in zip(tiny_pipe.unet.parameters(), loaded.unet.parameters()):
        assert torch.equal(pa, pb)
    assert loaded.tokenizer("a cat").input_ids == tiny_pipe.tokenizer("a cat").input_ids


def test_folder_that_is_not_a_checkpoint_names_the_uri(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match=str(tmp_path)) as err:
        load_pipeline(str(tmp_path), device="cpu")
    assert "vae" in str(err.value)
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_pipeline(str(tmp_path / "missing"), device="cpu")


def test_redact_uri_drops_credentials():
    assert redact_uri("s3://key:secret@bucket/sd15") == "s3://bucket/sd15"
    assert redact_uri("s3://bucket/sd15") == "s3://bucket/sd15"


def test_auto_dtype_is_bf16_on_cuda_and_fp32_on_cpu():
    from diffseg.model import resolve_dtype

    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16  # what jobs.bench measures
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("fp16", torch.device("cuda")) == torch.float16
