"""A batch that kills its actor is split until the image that does it is known (jobs.common.crashes): the
crash record survives the process, so each new attempt learns from the last one."""

from __future__ import annotations

from diffseg.lake.store import OutputStore
from jobs.common.crashes import CrashGuard, is_poisoning


def attempt(store, keys, deadly):
    """One attempt of the batch in a fresh process: None when the process dies, else {key: outcome}."""
    guard = CrashGuard(store, "_staging/r/0123456789ab", keys)
    if not guard.careful:
        if set(keys) & deadly:
            return None  # the whole batch together: the process dies, the record stays
        guard.done()
        return {k: "mask" for k in keys}
    out = {}
    for key in keys:
        if key in guard.killers:
            out[key] = "WorkerCrash"
            continue
        guard.running(key)
        if key in deadly:
            return None
        out[key] = "mask"
    guard.done()
    return out


def test_two_deadly_images_are_found_in_four_attempts_and_the_others_finish(tmp_path):
    store = OutputStore(str(tmp_path))
    keys = [f"s3://lake/{i}.jpg" for i in range(6)]
    deadly = {"s3://lake/1.jpg", "s3://lake/4.jpg"}
    results, attempts = None, 0
    while results is None:
        attempts += 1
        assert attempts <= 4
        results = attempt(store, keys, deadly)
    assert attempts == 4  # together, then alone until 1.jpg dies, then until 4.jpg dies, then the rest
    assert {k for k, v in results.items() if v == "WorkerCrash"} == deadly
    assert {k for k, v in results.items() if v == "mask"} == set(keys) - deadly
    assert store.list("_staging") == []  # the record goes with the batch


def test_a_healthy_batch_costs_one_record_written_and_removed(tmp_path):
    store = OutputStore(str(tmp_path))
    assert attempt(store, ["a", "b"], set()) == {"a": "mask", "b": "mask"}
    assert store.list("_staging") == []


def test_poisoned_device_errors_are_told_from_out_of_memory():
    assert is_poisoning(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_poisoning(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_poisoning(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_poisoning(ValueError("image has 0 pixels"))
