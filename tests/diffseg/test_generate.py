import numpy as np
import pytest
import torch

from diffseg import methods
from diffseg.capture import capture
from diffseg.generate import (
    GenerationConfig,
    denoise,
    generate_with_masks,
    generation_context,
    initial_latent,
)


def test_attention_averaged_over_steps_equals_the_mean_of_per_step_captures(tiny_pipe):
    cfg = GenerationConfig(steps=3, resolution=64, guidance=7.5)
    ctx, keep, _ = generation_context(tiny_pipe, "cat", 2, cfg)
    latents = torch.stack([initial_latent("cat", s, (4, 8, 8)) for s in (0, 1)])
    needs = methods.needs("seediff")
    with capture(tiny_pipe.unet, needs, keep=keep, self_mode="dense") as whole:
        denoise(tiny_pipe, ctx, latents, cfg.steps, cfg.guidance)
    per_step = []

    def one_step_capture():
        cap = capture(tiny_pipe.unet, needs, keep=keep)
        per_step.append(cap)
        return cap

    denoise(tiny_pipe, ctx, latents, cfg.steps, cfg.guidance, around_step=one_step_capture)
    assert len(per_step) == 3
    averaged = whole.maps()
    steps = [c.maps() for c in per_step]
    for r, cross in averaged.cross.items():
        assert cross.shape[0] == 2  # the conditional half only
        assert torch.allclose(cross, sum(m.cross[r] for m in steps) / 3, atol=1e-6)
    for r, sa in averaged.self_attn.items():
        assert not sa.entries  # running sums, no per-step queries and keys kept
        assert torch.allclose(sa.dense(), sum(m.self_attn[r].dense() for m in steps) / 3, atol=1e-6)


def test_generated_pairs_have_the_asked_shapes_and_are_reproducible(tiny_pipe):
    cfg = GenerationConfig(steps=2, resolution=64)
    first = generate_with_masks(tiny_pipe, "potted plant", [3, 4], cfg)
    again = generate_with_masks(tiny_pipe, "potted plant", [3, 4], cfg)
    for a, b in zip(first, again):
        assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
        assert a.label_map.shape == (64, 64) and set(np.unique(a.label_map)) <= {0, 1}
        assert a.prompt == "a photo of a potted plant"
        assert np.array_equal(a.image, b.image) and np.array_equal(a.label_map, b.label_map)
    assert not np.array_equal(first[0].image, first[1].image)  # different seeds, different images


def test_prompt_template_needs_a_placeholder(tiny_pipe):
    with pytest.raises(ValueError, match="must contain"):
        generate_with_masks(tiny_pipe, "cat", [0], GenerationConfig(steps=1, resolution=64, prompt="a photo"))
