import warnings

import pytest
import torch

from diffseg.capture import Needs, capture

ALL = Needs(cross_layers=True, self_attn=frozenset({(0, "all"), (1, "first_up"), (2, "first_up")}), features=True)


def _inputs(pipe, batch=2, side=32, tokens=77, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, side, side, generator=g)
    ctx = torch.randn(batch, tokens, pipe.unet.config.cross_attention_dim, generator=g)
    return x, ctx


def test_capture_does_not_change_the_unet_output_and_restores_processors(tiny_pipe):
    unet = tiny_pipe.unet
    x, ctx = _inputs(tiny_pipe)
    originals = dict(unet.attn_processors)
    ref = unet(x, 100, encoder_hidden_states=ctx).sample
    with capture(unet, ALL):
        out = unet(x, 100, encoder_hidden_states=ctx).sample
    assert (out - ref).abs().max().item() <= 1e-5
    after = unet.attn_processors
    assert all(after[k] is originals[k] for k in originals)
    assert not unet.up_blocks[-1].resnets[-1]._forward_pre_hooks


def test_capture_refuses_to_nest_and_restores_after_an_error(tiny_pipe):
    unet = tiny_pipe.unet
    originals = dict(unet.attn_processors)
    with capture(unet, Needs()):
        with pytest.raises(RuntimeError, match="do not nest"):
            with capture(unet, Needs()):
                pass
    with pytest.raises(ZeroDivisionError):
        with capture(unet, ALL):
            raise ZeroDivisionError("inside the capture")
    assert all(unet.attn_processors[k] is originals[k] for k in originals)
    with capture(unet, Needs()):  # usable again after the error
        pass


def test_only_the_layers_a_method_reads_are_swapped(tiny_pipe):
    unet = tiny_pipe.unet
    originals = dict(unet.attn_processors)
    with capture(unet, Needs(cross=True, self_attn=frozenset({(0, "all")}))):
        swapped = [k for k, v in unet.attn_processors.items() if v is not originals[k]]
    selfs = [k for k in swapped if ".attn1." in k]
    assert all(".attn2." in k for k in swapped if k not in selfs)
    # finest level self-attention: down_blocks.0 (2 layers) and up_blocks.3 (3 layers), as SD 1.5 at 64x64
    assert len(selfs) == 5 and all(k.startswith(("down_blocks.0", "up_blocks.3")) for k in selfs)


def test_captured_maps_have_contract_shapes_and_are_probabilities(tiny_pipe):
    x, ctx = _inputs(tiny_pipe, tokens=154)  # two concatenated 77-token chunks
    with capture(tiny_pipe.unet, ALL) as cap:
        tiny_pipe.unet(x, 100, encoder_hidden_states=ctx)
    maps = cap.maps()
    assert maps.levels == [32, 16, 8, 4]
    for r, c in maps.cross.items():
        assert c.shape == (2, r * r, 154)
        assert torch.allclose(c.sum(-1), torch.ones(2, r * r), atol=1e-5)
    assert {r: len(v) for r, v in maps.cross_layers.items()} == {32: 5, 16: 5, 8: 5, 4: 1}
    assert {r: f.shape[1:] for r, f in maps.features.items()} == {
        32: (64, 32, 32), 16: (96, 16, 16), 8: (128, 8, 8), 4: (128, 4, 4)
    }
    sa = maps.self_attn[32]
    values = torch.randn(2, 32 * 32, 3)
    dense = sa.dense(max_elements=100 * 2 * 2 * 32 * 32)  # 100 rows a chunk
    assert torch.allclose(dense.sum(-1), torch.ones(2, 1024), atol=1e-5)
    assert torch.allclose(sa.propagate(values), dense @ values, atol=1e-5)
    first = sa.select([maps.first_up[32]])
    assert first.layers == ["up_blocks.3.attentions.0.transformer_blocks.0.attn1"]


def test_several_forwards_are_averaged(tiny_pipe):
    x, ctx = _inputs(tiny_pipe)
    needs = Needs(cross=True)
    singles = []
    for t in (50, 150):
        with capture(tiny_pipe.unet, needs) as cap:
            tiny_pipe.unet(x, t, encoder_hidden_states=ctx)
        singles.append(cap.maps().cross[16])
    with capture(tiny_pipe.unet, needs) as cap:
        for t in (50, 150):
            tiny_pipe.unet(x, t, encoder_hidden_states=ctx)
    assert torch.allclose(cap.maps().cross[16], (singles[0] + singles[1]) / 2, atol=1e-6)


def test_keep_records_only_the_conditional_half(tiny_pipe):
    x, ctx = _inputs(tiny_pipe, batch=4)
    with capture(tiny_pipe.unet, Needs(cross=True, self_attn=frozenset({(1, "all")}), features=True), keep=slice(2, 4)) as cap:
        tiny_pipe.unet(x, 100, encoder_hidden_states=ctx)
    maps = cap.maps()
    assert maps.cross[8].shape[0] == 2 and maps.features[8].shape[0] == 2
    assert maps.self_attn[16].entries[0][1].shape[0] == 2


def test_dense_mode_keeps_running_sums_equal_to_the_mean_of_per_forward_maps(tiny_pipe):
    x, ctx = _inputs(tiny_pipe)
    needs = Needs(cross=True, self_attn=frozenset({(1, "first_up")}))
    per_step = []
    for t in (50, 150, 400):
        with capture(tiny_pipe.unet, needs) as cap:
            tiny_pipe.unet(x, t, encoder_hidden_states=ctx)
        per_step.append(cap.maps().self_attn[16].dense())
    with capture(tiny_pipe.unet, needs, self_mode="dense") as cap:
        for t in (50, 150, 400):
            tiny_pipe.unet(x, t, encoder_hidden_states=ctx)
    sa = cap.maps().self_attn[16]
    assert not sa.entries and len(sa.dense_maps) == 1  # no per-step Q/K kept
    expected = sum(per_step) / 3
    assert torch.allclose(sa.dense(), expected, atol=1e-6)
    values = torch.rand(2, 256, 4)
    assert torch.allclose(sa.propagate(values), expected @ values, atol=1e-5)


@pytest.mark.parametrize("head_width, classes", [(16, 3), (16, 16), (16, 40), (40, 20), (40, 150)])
def test_propagation_runs_a_fused_kernel_and_equals_the_materialised_product(head_width, classes):
    """Values of any width run through the fused kernel (the math fallback would materialise
    heads x N x N): restricted to the fused backends, SDPA raises rather than fall back to math."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from diffseg.capture import SelfAttention

    g = torch.Generator().manual_seed(head_width + classes)
    layers = [(f"layer{i}", torch.randn(2, 4, 256, head_width, generator=g),
               torch.randn(2, 4, 256, head_width, generator=g), head_width**-0.5) for i in range(2)]
    sa = SelfAttention(layers)
    values = torch.rand(2, 256, classes, generator=g)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        fused = sa.propagate(values)
        narrow = values[:, None, :, :3].expand(2, 4, 256, 3)  # 3 columns: narrower than every head
        with pytest.raises(RuntimeError), warnings.catch_warnings():  # the guard is real: no fused
            warnings.simplefilter("ignore")  # kernel takes unpadded values, and math is not allowed
            torch.nn.functional.scaled_dot_product_attention(layers[0][1], layers[0][2], narrow)
    assert fused.shape == (2, 256, classes) and fused.dtype == torch.float32
    assert torch.allclose(fused, sa.dense() @ values, atol=1e-5)  # S·c with S materialised


def test_a_capture_entered_again_starts_empty_with_the_same_processors(tiny_pipe):
    """A Segmenter keeps one capture: a compiled U-Net then sees the same processor objects."""
    x, ctx = _inputs(tiny_pipe)
    needs = Needs(cross=True, self_attn=frozenset({(0, "all")}))
    cap = capture(tiny_pipe.unet, needs)
    seen = []
    for t in (50, 150):
        with cap:
            seen.append(dict(tiny_pipe.unet.attn_processors))
            tiny_pipe.unet(x, t, encoder_hidden_states=ctx)
        maps = cap.maps()
        with capture(tiny_pipe.unet, needs) as fresh:
            tiny_pipe.unet(x, t, encoder_hidden_states=ctx)
        assert torch.equal(maps.cross[16], fresh.maps().cross[16])  # this entry's forward only
        assert len(maps.self_attn[32].entries) == 5
    assert all(seen[0][k] is seen[1][k] for k in seen[0])


def test_captured_maps_record_each_levels_cross_attention_head_count(tiny_pipe):
    """SeeDiff's flat-layer threshold depends on the head count at its seed level (SD 2.x: 20 at 16x16):
    each resolution gets the head count of its own cross-attention layers (a different one per level here)."""
    unet = tiny_pipe.unet
    n_levels = len(unet.down_blocks)
    per_level = {0: 1, 1: 2, 2: 4, 3: 8}  # each divides the level's channels (32, 64, 64, 64)
    originals = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            block, index = name.split(".")[:2]
            if block == "down_blocks":
                level = int(index)
            elif block == "up_blocks":
                level = n_levels - 1 - int(index)
            else:  # mid_block: the coarsest level
                level = n_levels - 1
            originals[module] = module.heads
            module.heads = per_level[level]
    latent, text = _inputs(tiny_pipe, batch=1, side=16)
    try:
        with capture(unet, Needs(cross=True)) as cap, torch.no_grad():
            unet(latent, 100, encoder_hidden_states=text)
    finally:  # the pipeline is shared by the whole session
        for module, heads in originals.items():
            module.heads = heads
    maps = cap.maps()
    assert set(maps.heads) == set(maps.cross)  # one count per captured level
    assert maps.heads == {16 >> level: heads for level, heads in per_level.items()}


def _near_uniform_layer(n=256, heads=4, d=16, seed=0):
    """Queries and keys of small norm: attention close to uniform, as in random-weight models, so S·c
    varies by ~1 % around its mean (the hard case for reduced precision)."""
    g = torch.Generator().manual_seed(seed)
    q, k = (0.3 * torch.randn(1, heads, n, d, generator=g) for _ in range(2))
    return [("layer0", q.bfloat16(), k.bfloat16(), d**-0.5)], torch.rand(1, n, 20, generator=g)


def test_propagation_is_fp32_by_default_and_in_bf16_only_when_asked():
    from diffseg.selfattention import SelfAttention

    layers, values = _near_uniform_layer()
    sa = SelfAttention(layers)  # bf16 queries and keys, as a bf16 U-Net keeps them
    assert sa.dtype == torch.float32 and sa.select(["layer0"]).dtype == torch.float32
    exact = sa.propagate(values)
    q, k = layers[0][1].float(), layers[0][2].float()
    reference = (torch.softmax(q @ k.transpose(-1, -2) * layers[0][3], -1) @ values[:, None]).mean(1)
    assert torch.allclose(exact, reference, atol=1e-6)
    reduced = sa.in_dtype(None).propagate(values)  # the queries' dtype: bf16
    assert reduced.dtype == torch.float32 and not torch.equal(reduced, exact)


def test_reduced_propagation_keeps_the_variation_that_a_plain_bf16_kernel_rounds_away():
    """Centring the values: the bf16 kernel's error stays a few % of the range of S·c over the pixels;
    a plain bf16 SDPA call (the values and its output rounded whole) is off by about the range itself."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from diffseg.selfattention import SelfAttention

    layers, values = _near_uniform_layer()
    sa = SelfAttention(layers)
    exact = sa.propagate(values)
    spread = (exact.amax(1) - exact.amin(1)).min()  # the smallest per-class range over the pixels
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):  # still a fused kernel
        reduced = sa.in_dtype(torch.bfloat16).propagate(values)
    _, q, k, scale = layers[0]
    plain = torch.nn.functional.scaled_dot_product_attention(
        q, k, values.bfloat16()[:, None].expand(1, 4, 256, 20)[..., :16], scale=scale).float().mean(1)
    assert (reduced - exact).abs().max() < 0.05 * spread
    assert (plain - exact[..., :16]).abs().max() > 0.3 * spread


def test_fp16_propagation_of_large_values_does_not_overflow():
    from diffseg.selfattention import SelfAttention

    layers, values = _near_uniform_layer()
    sa = SelfAttention(layers)
    big = values * 1e6  # beyond fp16's 65504, as SeeDiff's S^T (w / |S|) can be
    reduced = sa.in_dtype(torch.float16).propagate(big)
    assert torch.isfinite(reduced).all()
    assert torch.allclose(reduced, sa.propagate(big), rtol=1e-3)
