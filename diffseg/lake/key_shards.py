"""Which shard of a run's done index (and of a plan) a work-item key belongs to: a stable hash of its bytes.

``key_shard(keys)`` = ``fmix64(FNV-1a-64(UTF-8 bytes of the key)) % shards``: FNV-1a over every byte, then
MurmurHash3's 64-bit finalizer so every bit of the result depends on every byte (FNV-1a's low bits alone
are weak). It is part of the stored format (a done index written today is probed with it tomorrow): never
change it; a new function needs a new ``shards`` layout name in the index entry.

Vectorized with numpy over the Arrow string buffers (no Python string per key): about 0.4 s of CPU per
million keys of 60 bytes. Shards are for spreading work and bounding memory only; correctness never
depends on the hash (keys are always compared whole), so a collision costs nothing but balance.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

KEY_SHARDS = 256  # shards of a done index and of a plan: ~400k keys each at 10^8 keys

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)


def key_hash(keys) -> np.ndarray:
    """uint64 hash of each key of `keys` (a pyarrow string array, chunked array or a list of str)."""
    if isinstance(keys, pa.ChunkedArray):
        parts = [key_hash(c) for c in keys.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    if not isinstance(keys, pa.Array):
        keys = pa.array(keys, pa.string())
    if keys.null_count:
        raise ValueError("keys to hash must not be null")
    if pa.types.is_dictionary(keys.type):
        keys = keys.dictionary_decode()
    if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
        keys = keys.cast(pa.string())
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.uint64)
    _, offsets_buf, data_buf = keys.buffers()
    wide = pa.types.is_large_string(keys.type)
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if wide else np.int32)[keys.offset: keys.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None and data_buf.size else np.zeros(1, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = (offsets[1:] - offsets[:-1]).astype(np.int64)
    order = np.argsort(-lengths, kind="stable")  # longest first: byte j exists for a prefix of the order
    lengths, starts = lengths[order], starts[order]
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    active = n
    for j in range(int(lengths[0])):
        while active and lengths[active - 1] <= j:
            active -= 1
        h[:active] ^= data[starts[:active] + j]
        h[:active] *= _FNV_PRIME
    h ^= h >> np.uint64(33)  # MurmurHash3 fmix64
    h *= _M1
    h ^= h >> np.uint64(33)
    h *= _M2
    h ^= h >> np.uint64(33)
    out = np.empty(n, np.uint64)
    out[order] = h
    return out


def key_shard(keys, shards: int = KEY_SHARDS) -> np.ndarray:
    """The shard (0 .. shards-1, int32) of each key of `keys`."""
    if shards < 1:
        raise ValueError(f"shards={shards!r}: at least 1")
    return (key_hash(keys) % np.uint64(shards)).astype(np.int32)


def shard_order(keys, shards: int = KEY_SHARDS) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds) of `keys` grouped by shard: ``order`` sorts them by shard, stably (their own order
    kept within a shard), and the keys of shard s are ``order[bounds[s]:bounds[s + 1]]`` (bounds: shards + 1)."""
    shard = key_shard(keys, shards) if len(keys) else np.zeros(0, np.int32)
    order = np.argsort(shard, kind="stable")
    return order, np.searchsorted(shard[order], np.arange(shards + 1))


def reference_key_hash(key: str) -> int:
    """:func:`key_hash` of one key in plain Python (the definition; tests compare the two)."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for byte in key.encode("utf-8", "surrogateescape"):
        h = ((h ^ byte) * 0x100000001B3) & mask
    for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h ^= h >> 33
        h = (h * mult) & mask
    return h ^ (h >> 33)
