import numpy as np
import pytest
import torch
from PIL import Image

from diffseg import Segmenter, Vocabulary

VOCAB = ["cat", "potted plant", "tv monitor"]


@pytest.fixture(scope="module")
def segmenter(tiny_pipe):
    return Segmenter(tiny_pipe, Vocabulary(VOCAB), method="diffsegmenter", resolution=128)


def test_label_maps_match_input_sizes_of_real_photos(segmenter, sample_photos):
    photos = list(sample_photos.values())
    results = segmenter.segment_method(photos)
    assert len(results) == len(photos)
    for photo, res in zip(photos, results):
        assert res.label_map.shape == photo.shape[:2]
        assert res.label_map.dtype == np.uint8
        assert res.label_map.max() <= len(VOCAB)
        assert res.scores.shape == (1 + len(VOCAB), 16, 16)  # 128 px / 8 = 16x16 latent, the finest level
        assert res.method == "diffsegmenter"
        present = sorted(int(i) for i in np.unique(res.label_map) if i)
        assert res.classes == [VOCAB[i - 1] for i in present]


def test_same_image_gives_the_same_mask_whatever_the_batch(segmenter, sample_photos):
    """The noise is seeded per image, so batch composition cannot change the result beyond float
    rounding: CPU kernels sum in a different order for other batch shapes (~1e-8 in the attention),
    which can only flip pixels whose classes tie to that precision."""
    cat, coffee = sample_photos["chelsea"], sample_photos["coffee"]
    alone = segmenter.segment_method([cat])[0]
    batched = segmenter.segment_method([coffee, cat, cat])
    assert np.allclose(alone.scores, batched[1].scores, atol=1e-4)
    assert (alone.label_map != batched[1].label_map).mean() < 1e-3
    assert (batched[1].label_map != batched[2].label_map).mean() < 1e-3
    again = segmenter.segment_method([cat])[0]
    assert np.array_equal(alone.label_map, again.label_map)  # same call, same bits


def test_pil_images_and_keys(segmenter, sample_photos):
    photo = sample_photos["rocket"]
    a = segmenter.segment_method([Image.fromarray(photo)], keys=["s3://lake/rocket.jpg"])[0]
    b = segmenter.segment_method([photo], keys=["s3://lake/rocket.jpg"])[0]
    assert np.array_equal(a.label_map, b.label_map)


def test_presized_inputs_with_original_sizes(segmenter, sample_photos):
    from diffseg.codecs.images import resize_square

    photo = sample_photos["coffee"]
    small = resize_square(photo, 128)
    direct = segmenter.segment_method([photo], keys=["k"])[0]
    presized = segmenter.segment_method([small], keys=["k"], sizes=[photo.shape[:2]])[0]
    assert presized.label_map.shape == photo.shape[:2]
    assert np.array_equal(direct.label_map, presized.label_map)


def test_large_images_are_labelled_at_their_full_size(tiny_pipe):
    seg = Segmenter(tiny_pipe, VOCAB, resolution=64, max_label_side=256)
    big = np.random.default_rng(0).integers(0, 255, (300, 2000, 3), dtype=np.uint8)
    res = seg.segment_method([big])[0]
    assert res.label_map.shape == (300, 2000) and res.size == (300, 2000)
    assert res.labels.shape == (38, 256)  # the argmax size: 256 on the long side, what the job stores
    # label_map is the argmax map resized as the Segmenter always did it: torch's nearest, on the device
    torch_full = torch.nn.functional.interpolate(
        torch.from_numpy(res.labels)[None, None].float(), size=(300, 2000), mode="nearest")[0, 0]
    assert np.array_equal(res.label_map, torch_full.long().numpy().astype(np.uint8))
    present = [VOCAB[i - 1] for i in np.unique(res.label_map) if i]
    assert res.classes == present


def count_forwards(monkeypatch, unet) -> list:
    """Wraps unet.forward with a counter; returns the list of batch sizes of the calls made."""
    calls, forward = [], unet.forward

    def counted(sample, *args, **kwargs):
        calls.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", counted)
    return calls


def test_segment_returns_one_type_whatever_the_methods(tiny_pipe, sample_photos):
    photo = sample_photos["chelsea"]
    one = Segmenter(tiny_pipe, VOCAB, method="diffsegmenter", resolution=128)
    listed = Segmenter(tiny_pipe, VOCAB, method=["diffsegmenter"], resolution=128)
    by_method = one.segment([photo])
    assert list(by_method) == ["diffsegmenter"] and list(listed.segment([photo])) == ["diffsegmenter"]
    assert np.array_equal(by_method["diffsegmenter"][0].label_map, one.segment_method([photo])[0].label_map)
    assert one.segment([]) == {"diffsegmenter": []} and one.segment_method([]) == []
    several = Segmenter(tiny_pipe, VOCAB, method=["diffsegmenter", "seediff"], resolution=128)
    with pytest.raises(ValueError, match="runs diffsegmenter, seediff: pass method="):
        several.segment_method([photo])
    with pytest.raises(ValueError, match="'maskdiffusion' is not in use"):
        several.segment_method([photo], method="maskdiffusion")
    assert several.segment_method([photo], method="seediff")[0].method == "seediff"


def test_all_methods_share_one_unet_forward_per_timestep(tiny_pipe, sample_photos, monkeypatch):
    photos = [sample_photos["chelsea"], sample_photos["coffee"]]
    methods = ["diffsegmenter", "seediff", "maskdiffusion", "maskdiffusion-unsupervised"]
    calls = count_forwards(monkeypatch, tiny_pipe.unet)
    out = Segmenter(tiny_pipe, VOCAB, method=methods, resolution=128).segment(photos)
    assert calls == [2]  # one forward for both images and all four methods
    assert {m: len(r) for m, r in out.items()} == {m: 2 for m in methods}
    calls.clear()
    Segmenter(tiny_pipe, VOCAB, method=methods, resolution=128, timesteps=(50, 150)).segment(photos)
    assert calls == [2, 2]  # one per timestep
    calls.clear()
    per_class = Segmenter(tiny_pipe, VOCAB, context="per_class", resolution=128).segment_method(photos)
    assert calls == [2 * len(VOCAB)]  # the paper's protocol: one batch row per (image, class)
    assert per_class[0].label_map.shape == photos[0].shape[:2]


def test_several_timesteps_average_the_maps_of_each_timestep(tiny_pipe, sample_photos):
    """Maps captured at timesteps (a, b) are the mean of the maps captured at a and at b."""
    photo, a, b = [sample_photos["coffee"]], 50, 300
    both, spans = Segmenter(tiny_pipe, VOCAB, resolution=128, timesteps=(a, b)).capture_maps(photo, ["k"])
    at_a, _ = Segmenter(tiny_pipe, VOCAB, resolution=128, timesteps=(a,)).capture_maps(photo, ["k"])
    at_b, _ = Segmenter(tiny_pipe, VOCAB, resolution=128, timesteps=(b,)).capture_maps(photo, ["k"])
    assert not torch.allclose(at_a.cross[16], at_b.cross[16], atol=1e-4)  # the timesteps do differ
    for r in both.cross:
        assert torch.allclose(both.cross[r], (at_a.cross[r] + at_b.cross[r]) / 2, atol=1e-6), r
    values = torch.rand(1, 16 * 16, len(spans))
    mean = (at_a.self_attn[16].propagate(values) + at_b.self_attn[16].propagate(values)) / 2
    assert torch.allclose(both.self_attn[16].propagate(values), mean, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resolution": 100}, "multiple of 64"),
        ({"context": "nope"}, "context 'nope'"),
        ({"timesteps": (5000,)}, "timestep 5000"),
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"bogus": 1}, "unknown Segmenter option"),
    ],
)
def test_bad_options_name_the_bad_value(tiny_pipe, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Segmenter(tiny_pipe, VOCAB, **kwargs)


def test_bad_image_input_is_refused(segmenter):
    with pytest.raises(ValueError, match="shape"):
        segmenter.segment([np.zeros((4, 4, 7), dtype=np.uint8)])


def test_class_tokens_are_upweighted_as_compel_does(tiny_pipe):
    """per_class context (the paper's protocol): the context is encode_context's with w = 1.21 (Compel's
    z_empty + w (z - z_empty) on class tokens), not the class embeddings scaled by w."""
    from diffseg.vocabulary import encode_context

    seg = Segmenter(tiny_pipe, VOCAB, context="per_class", resolution=64)
    prompt = Vocabulary(VOCAB).encode(tiny_pipe.tokenizer, "per_class")
    expected = encode_context(tiny_pipe.text_encoder, tiny_pipe.tokenizer, prompt, "cpu", torch.float32, 1.21)
    plain = encode_context(tiny_pipe.text_encoder, tiny_pipe.tokenizer, prompt, "cpu", torch.float32, 1.0)
    assert seg.recipe["class_token_weight"] == 1.21
    assert torch.equal(seg.context, expected)
    scaled = plain.clone()
    for row, spans in enumerate(prompt.spans):
        scaled[row, spans[0]] *= 1.21
    assert not torch.allclose(seg.context, scaled, atol=1e-3)  # the old scaling of z is gone
    assert Segmenter(tiny_pipe, VOCAB, resolution=64).recipe["class_token_weight"] == 1.0  # joint: 1.0


def decoded_prompt(seg) -> str:
    ids = [i for i in seg.prompt.input_ids[0].tolist() if i not in (seg.pipe.tokenizer.pad_token_id,)]
    return seg.pipe.tokenizer.decode(ids, skip_special_tokens=True).replace(" ,", ",")  # CLIP decodes "cat ,"


def test_maskdiffusion_alone_runs_its_paper_recipe(tiny_pipe, sample_photos, monkeypatch):
    """One pass at t=0 on the posterior-mean latent itself: no noise drawn or added."""
    seg = Segmenter(tiny_pipe, VOCAB, method="maskdiffusion", resolution=64)
    assert seg.recipe["timesteps"] == [0] and seg.recipe["noise"] is False and seg.recipe["template"] == "{classes}"
    added, seen = [], []
    monkeypatch.setattr(tiny_pipe.scheduler, "add_noise", lambda *a: added.append(a) or a[0])
    forward = tiny_pipe.unet.forward

    def spy(sample, t, *args, **kwargs):
        seen.append((sample.clone(), t.clone()))
        return forward(sample, t, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe.unet, "forward", spy)
    photo = sample_photos["coffee"]
    seg.segment([photo])
    from diffseg.codecs.images import resize_square

    x = torch.from_numpy(resize_square(photo, 64).copy()).permute(2, 0, 1)[None].float() / 255.0
    mean = tiny_pipe.vae.encode(x * 2 - 1).latent_dist.mean * tiny_pipe.vae.config.scaling_factor
    assert added == [] and len(seen) == 1
    assert seen[0][1].tolist() == [0] and torch.allclose(seen[0][0], mean, atol=1e-6)


def test_maskdiffusion_alone_joins_classes_with_and(tiny_pipe):
    seg = Segmenter(tiny_pipe, VOCAB, method="maskdiffusion", resolution=64)
    assert seg.recipe["separator"] == " and "
    assert decoded_prompt(seg) == "cat and potted plant and tv monitor"


def test_each_method_alone_and_several_together_report_their_recipe(tiny_pipe):
    alone = Segmenter(tiny_pipe, VOCAB, method="diffsegmenter", resolution=64)
    assert alone.recipe == {"name": "diffsegmenter", "timesteps": [100], "template": "a photograph of {classes}",
                            "separator": ", ", "context": "joint", "class_token_weight": 1.0, "noise": True}
    assert decoded_prompt(alone) == "a photograph of cat, potted plant, tv monitor"
    seediff = Segmenter(tiny_pipe, VOCAB, method="seediff", resolution=64)
    assert seediff.recipe["template"] == "a photo of {classes}" and seediff.recipe["timesteps"] == [100]
    assert decoded_prompt(seediff) == "a photo of cat, potted plant, tv monitor"
    several = Segmenter(tiny_pipe, VOCAB, method=["maskdiffusion", "seediff"], resolution=64)
    assert several.recipe == {**alone.recipe, "name": "shared (diffsegmenter)"}
    assert decoded_prompt(several) == decoded_prompt(alone)


def test_explicit_options_override_the_recipe(tiny_pipe):
    seg = Segmenter(tiny_pipe, VOCAB, method="maskdiffusion", resolution=64, timesteps=50,
                    template="a picture of {classes}", class_token_weight=1.1)
    assert seg.recipe["timesteps"] == [50] and seg.recipe["noise"] is True  # explicit t: noised at t
    assert seg.recipe["class_token_weight"] == 1.1
    assert decoded_prompt(seg).startswith("a picture of cat")
    custom = Vocabulary(VOCAB, template="an image of {classes}")
    assert decoded_prompt(Segmenter(tiny_pipe, custom, resolution=64)).startswith("an image of cat")
    per_class = Segmenter(tiny_pipe, VOCAB, method="seediff", context="per_class", resolution=64)
    assert per_class.recipe["template"] == "a photo of a {class}"
    with pytest.raises(ValueError, match="must contain"):
        Segmenter(tiny_pipe, VOCAB, context="per_class", template="a photo of {classes}", resolution=64)
