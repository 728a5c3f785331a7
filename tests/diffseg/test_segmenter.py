import numpy as np
import pytest
from PIL import Image

from diffseg import Segmenter, Vocabulary

VOCAB = ["cat", "potted plant", "tv monitor"]


@pytest.fixture(scope="module")
def segmenter(tiny_pipe):
    return Segmenter(tiny_pipe, Vocabulary(VOCAB), method="diffsegmenter", resolution=128)


def test_label_maps_match_input_sizes_of_real_photos(segmenter, sample_photos):
    photos = list(sample_photos.values())
    results = segmenter.segment(photos)
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
    alone = segmenter.segment([cat])[0]
    batched = segmenter.segment([coffee, cat, cat])
    assert np.allclose(alone.scores, batched[1].scores, atol=1e-4)
    assert (alone.label_map != batched[1].label_map).mean() < 1e-3
    assert (batched[1].label_map != batched[2].label_map).mean() < 1e-3
    again = segmenter.segment([cat])[0]
    assert np.array_equal(alone.label_map, again.label_map)  # same call, same bits


def test_pil_images_and_keys(segmenter, sample_photos):
    photo = sample_photos["rocket"]
    a = segmenter.segment([Image.fromarray(photo)], keys=["s3://lake/rocket.jpg"])[0]
    b = segmenter.segment([photo], keys=["s3://lake/rocket.jpg"])[0]
    assert np.array_equal(a.label_map, b.label_map)


def test_presized_inputs_with_original_sizes(segmenter, sample_photos):
    from diffseg.codecs.images import resize_square

    photo = sample_photos["coffee"]
    small = resize_square(photo, 128)
    direct = segmenter.segment([photo], keys=["k"])[0]
    presized = segmenter.segment([small], keys=["k"], sizes=[photo.shape[:2]])[0]
    assert presized.label_map.shape == photo.shape[:2]
    assert np.array_equal(direct.label_map, presized.label_map)


def test_large_images_are_labelled_at_their_full_size(tiny_pipe):
    seg = Segmenter(tiny_pipe, VOCAB, resolution=64, max_label_side=256)
    big = np.random.default_rng(0).integers(0, 255, (300, 2000, 3), dtype=np.uint8)
    res = seg.segment([big])[0]
    assert res.label_map.shape == (300, 2000)


def test_several_methods_share_one_forward_and_per_class_context(tiny_pipe, sample_photos):
    photo = sample_photos["chelsea"]
    single = Segmenter(tiny_pipe, VOCAB, method="diffsegmenter", resolution=128).segment([photo])[0]
    multi = Segmenter(tiny_pipe, VOCAB, method=["diffsegmenter"], resolution=128).segment([photo])
    assert np.array_equal(multi["diffsegmenter"][0].label_map, single.label_map)
    per_class = Segmenter(tiny_pipe, VOCAB, context="per_class", resolution=128).segment([photo])[0]
    assert per_class.label_map.shape == photo.shape[:2]
    assert per_class.scores.shape == single.scores.shape


def test_several_timesteps_are_averaged_into_one_result(tiny_pipe, sample_photos):
    seg = Segmenter(tiny_pipe, VOCAB, resolution=128, timesteps=(20, 100, 200))
    res = seg.segment([sample_photos["coffee"]])[0]
    assert res.label_map.shape == (400, 600)


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
