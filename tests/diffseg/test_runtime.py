import numpy as np
import pytest
import torch

from diffseg import Segmenter
from diffseg.runtime import apply_runtime, choose_runtime, compile_blocks

VOCAB = ["cat", "potted plant", "tv monitor"]


def test_auto_is_bf16_with_channels_last_on_cuda_and_plain_fp32_on_cpu():
    gpu = choose_runtime("cuda")  # deciding needs no GPU: nothing is loaded
    assert (gpu.dtype, gpu.channels_last, gpu.tf32, gpu.compile) == (torch.bfloat16, True, False, False)
    assert gpu.describe() == "cuda bf16 channels_last"
    cpu = choose_runtime("cpu")
    assert (cpu.dtype, cpu.channels_last, cpu.tf32) == (torch.float32, False, False)
    asked = choose_runtime("cuda", "fp16", channels_last=False, tf32=True, compile=True)
    assert asked.describe() == "cuda fp16 tf32 compile"


def test_bad_choices_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match="'fp8' is not one of auto"):
        choose_runtime("cpu", "fp8")
    with pytest.raises(ValueError, match="tf32=True needs a CUDA device, got device 'cpu'"):
        choose_runtime("cpu", tf32=True)


def test_a_pipeline_in_another_dtype_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match=r"in torch.float32 does not match the runtime \(cpu bf16\)"):
        apply_runtime(tiny_pipe, choose_runtime("cpu", "bf16"))


@pytest.mark.slow
def test_compile_happens_once_per_model_whatever_the_methods(sample_photos):
    """--compile: the floor and every Segmenter configuration share the compiled blocks (no graph is
    added after the first call) and the scores equal eager. The aot_eager backend traces what inductor
    would compile, without inductor's C++ build."""
    import torch._dynamo

    from diffseg.model import load_pipeline

    pipe = load_pipeline("tiny", dtype="fp32", device="cpu")  # its own: compiling changes the U-Net
    configs = [["diffsegmenter"], ["seediff"], ["diffsegmenter", "seediff", "maskdiffusion"]]
    segs = [Segmenter(pipe, VOCAB, method=m, resolution=64) for m in configs]
    photos = [sample_photos["chelsea"]]
    eager = [seg.segment(photos, keys=["k"]) for seg in segs]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        assert compile_blocks(pipe.unet, backend="aot_eager", fullgraph=True) == 22 + 16  # resnets, feed-forwards
        segs[0].forward_plain(photos, ["k"])  # the benchmark's floor compiles the blocks
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert graphs > 0
        compiled = [seg.segment(photos, keys=["k"]) for seg in segs]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # no configuration recompiles
        for before, after in zip(eager, compiled):
            for method, results in before.items():
                assert np.allclose(results[0].scores, after[method][0].scores, atol=1e-5), method
                assert np.array_equal(results[0].label_map, after[method][0].label_map), method
    finally:
        torch._dynamo.reset()


def test_channels_last_changes_the_maps_only_by_float_rounding(sample_photos):
    from diffseg.runtime import load_runtime_pipeline

    plain = load_runtime_pipeline("tiny", choose_runtime("cpu"))
    fast = load_runtime_pipeline("tiny", choose_runtime("cpu", channels_last=True))
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    photos = [sample_photos["chelsea"]]
    before = Segmenter(plain, VOCAB, resolution=64).capture_maps(photos, ["k"])[0]
    after = Segmenter(fast, VOCAB, resolution=64).capture_maps(photos, ["k"])[0]
    for r, cross in before.cross.items():
        assert torch.allclose(cross, after.cross[r], atol=1e-5), r


def test_tf32_sets_cublas_and_cudnn_together_and_off_means_ieee():
    from diffseg.runtime import set_tf32

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    try:
        set_tf32(True)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        set_tf32(False)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
    finally:
        matmul.fp32_precision, conv.fp32_precision = before
