import numpy as np
import pyarrow as pa
import pytest

from diffseg.lake.key_shards import KEY_SHARDS, key_hash, key_shard, reference_key_hash

KEYS = ["", "a", "s3://bucket/images/0001.jpg", "file:///lake/ünïcödé/😀.png", "x" * 300,
        "s3://b/shards/00012.tar#000123", "s3://bucket/images/0002.jpg"]


def test_vectorized_hash_is_the_documented_function():
    assert key_hash(pa.array(KEYS)).tolist() == [reference_key_hash(k) for k in KEYS]


def test_hash_does_not_depend_on_the_array_form():
    expected = key_hash(pa.array(KEYS))
    assert key_hash(KEYS).tolist() == expected.tolist()
    assert key_hash(pa.array(KEYS, pa.large_string())).tolist() == expected.tolist()
    assert key_hash(pa.chunked_array([KEYS[:3], KEYS[3:]])).tolist() == expected.tolist()
    assert key_hash(pa.array(KEYS).slice(2, 3)).tolist() == expected[2:5].tolist()
    assert key_hash(pa.array(KEYS).dictionary_encode()).tolist() == expected.tolist()


def test_a_known_value_never_changes():
    # stored indexes are probed with this function: a change would make done images look new
    assert reference_key_hash("s3://bucket/images/0001.jpg") == int(key_hash(["s3://bucket/images/0001.jpg"])[0])
    assert key_shard(["s3://bucket/images/0001.jpg"]).tolist() == [reference_key_hash("s3://bucket/images/0001.jpg") % KEY_SHARDS]


def test_sequential_names_spread_over_every_shard():
    shards = key_shard([f"s3://bucket/images/{i:08d}.jpg" for i in range(100_000)])
    counts = np.bincount(shards, minlength=KEY_SHARDS)
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_empty_and_null_inputs():
    assert key_shard(pa.array([], pa.string())).tolist() == []
    with pytest.raises(ValueError):
        key_hash(pa.array(["a", None]))


def test_shard_order_groups_keys_by_shard_keeping_their_order():
    from diffseg.lake.key_shards import shard_order

    keys = [f"s3://b/{i}.jpg" for i in range(500)]
    order, bounds = shard_order(keys, 7)
    shards = key_shard(keys, 7)
    assert len(bounds) == 8 and bounds[0] == 0 and bounds[-1] == 500
    for s in range(7):
        members = order[bounds[s]: bounds[s + 1]].tolist()
        assert members == [i for i in range(500) if shards[i] == s]
    empty_order, empty_bounds = shard_order(pa.array([], pa.string()), 7)
    assert len(empty_order) == 0 and empty_bounds.tolist() == [0] * 8
