import json

import pytest

from jobs.bench.cli import main


def test_bench_prints_every_configuration_as_a_ratio_to_the_floor(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--model", "tiny", "--resolution", "64", "--iters", "2", "--vocab-size", "3",
                 "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    figures = json.loads(out.read_text())["configs"]
    assert list(figures) == ["floor", "diffsegmenter", "seediff", "maskdiffusion", "all three"]
    assert figures["floor"]["time_ratio"] == 1.0 and figures["floor"]["memory_ratio"] == 1.0
    for name, fig in figures.items():
        assert len(fig["seconds"]) == 2 and fig["time_ratio"] == min(fig["seconds"]) / min(figures["floor"]["seconds"])
        row = next(line for line in text.splitlines() if line.startswith(f"  {name} "))
        assert f"{fig['time_ratio']:.2f}x" in row and f"{fig['memory_ratio']:.2f}x" in row
    assert set(figures["all three"]["stages"]) >= {"vae_encode", "unet_capture", "method", "labels"}
    assert set(figures["floor"]["stages"]) == {"vae_encode", "unet"}
    assert "floor FLOPs/image (VAE encode + U-Net forward)" in text


def test_bench_designs_print_stage_times_and_side_by_side_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--designs", "--model", "tiny", "--resolution", "64", "--iters", "1", "--vocab-size", "3",
                 "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "naive/diffseg U-Net+capture time" in text
    assert "per_class/joint time per image" in text
    figures = json.loads(out.read_text())
    assert [(r["capture"], r["context"]) for r in figures["runs"]] == [
        ("diffseg", "joint"), ("naive", "joint"), ("diffseg", "per_class")]
    stages = figures["runs"][0]["seconds_per_image"]
    assert set(stages) >= {"decode", "vae_encode", "unet_capture", "method", "labels", "encode_masks"}


def test_naive_capture_computes_the_same_maps_as_diffseg_capture(tiny_pipe, sample_photos):
    """The side-by-side compares two ways to compute the same thing, not two different results."""
    import torch

    from diffseg import Segmenter
    from jobs.bench.designs import patched_capture

    ours, _ = Segmenter(tiny_pipe, ["cat", "potted plant"], resolution=128).capture_maps([sample_photos["chelsea"]], ["k"])
    with patched_capture(naive=True):  # a Segmenter makes its capture when it is built
        seg = Segmenter(tiny_pipe, ["cat", "potted plant"], resolution=128)
    naive, _ = seg.capture_maps([sample_photos["chelsea"]], ["k"])
    values = torch.rand(1, 16 * 16, 3)
    assert set(ours.self_attn) == set(naive.self_attn) == {16}
    assert torch.allclose(ours.self_attn[16].propagate(values), naive.self_attn[16].propagate(values), atol=1e-5)
    assert torch.allclose(ours.cross[16], naive.cross[16], atol=1e-6)


def test_tree_rss_counts_the_memory_of_child_processes(tmp_path):
    """The scaling mode's peak memory is the whole process tree's (driver, Ray services, workers)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from jobs.bench.scaling import tree_rss_mb

    ready = tmp_path / "ready"
    child = f"b = bytearray(300 * 2**20); open({str(ready)!r}, 'w').close(); import time; time.sleep(30)"
    parent = subprocess.Popen(["bash", "-c", f"{sys.executable} -c \"{child}\"; true"], start_new_session=True)
    try:
        while not ready.exists():
            time.sleep(0.05)
        assert tree_rss_mb(parent.pid) >= 300  # bash itself holds a few MB; its child 300 MB
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # bash and its child: the group this test started
        parent.wait()
    assert tree_rss_mb(parent.pid) == 0.0  # a process that has gone counts as nothing


def test_bench_help_gives_examples_and_exit_codes_and_a_bad_model_exits_2(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "examples:" in out and "exit codes: 0 the figures were printed" in out
    assert main(["--model", str(tmp_path / "no-such-model"), "--iters", "1"]) == 2
    assert "error:" in capsys.readouterr().err


def test_bench_photos_are_jpegs_of_photo_sizes_and_need_no_test_extras():
    """The GPU machine gets torch, diffusers and transformers only: scikit-image blocked, the bench runs."""
    import io
    import subprocess
    import sys

    from PIL import Image

    from jobs.bench.photos import SIZES, sample_jpegs

    jpegs = sample_jpegs(5)
    assert [Image.open(io.BytesIO(j)).size[::-1] for j in jpegs] == [*SIZES, SIZES[0]]
    assert jpegs == sample_jpegs(5) and len(set(jpegs)) == 5  # deterministic, each image its own
    assert all(20_000 < len(j) < 200_000 for j in jpegs)  # photo-like compressed size, not flat or noise
    code = ("import sys; sys.modules['skimage'] = None; from jobs.bench.cli import main; sys.exit(main(["
            "'--model', 'tiny', '--resolution', '64', '--iters', '1', '--vocab-size', '2', '--threads', '1', "
            "'--configs', 'diffsegmenter']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "diffsegmenter" in run.stdout


def test_flips_prints_the_share_of_pixels_each_propagation_dtype_changes(tmp_path, capsys):
    from jobs.bench.flips import main

    out = tmp_path / "flips.json"
    assert main(["--models", "tiny", "--resolution", "64", "--images", "1", "--vocab-size", "3",
                 "--propagation", "bf16,fp32", "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "propagation in bf16, fp32 vs fp32" in printed
    figures = json.loads(out.read_text())["models"]["tiny"]
    for method in ("diffsegmenter", "seediff"):
        assert figures["bf16"][method]["pixels"] == 512 * 512  # the first photo, at its own size
        assert figures["fp32"][method]["flips"] == 0  # fp32 against itself: the same labels
        assert f"tiny         bf16        {method}" in printed


def test_flips_refuses_an_unknown_dtype(capsys):
    from jobs.bench.flips import main

    with pytest.raises(SystemExit):
        main(["--propagation", "bf16,int8"])
    assert "'bf16,int8': give a comma list of bf16, fp16, fp32, fp64" in capsys.readouterr().err
