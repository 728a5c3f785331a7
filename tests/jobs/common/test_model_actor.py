"""jobs.common.actor.ModelActor without a model: one result row per item in row order, "batch first,
then one by one", model and encode failures isolated to their items, items failed upstream kept."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from diffseg.lake.schemas import TableSet
from jobs.common.actor import ActorConfig, ModelActor, describe

SCHEMA = pa.schema([("key", pa.string()), ("stage", pa.string()), ("message", pa.string()), ("value", pa.int64())])
TABLES = TableSet({}, SCHEMA, split=lambda *a: {}, key_column="key")


class Doubler(ModelActor):
    """Items: integers; the "model" doubles them, fails on any call that holds 13, cannot encode 7."""

    tables = TABLES

    def __init__(self):  # no model to load
        self.config = ActorConfig()
        self.calls, self.freed = [], 0

    def items(self, batch):
        return [{"key": str(k), "group": int(k) % 2, "error": ("decode", "E", "unreadable") if k < 0 else None}
                for k in batch["key"]]

    def groups(self, items, todo):
        return [[i for i in todo if items[i]["group"] == g] for g in (0, 1) if any(items[i]["group"] == g for i in todo)]

    def compute(self, items):
        keys = [int(it["key"]) for it in items]
        self.calls.append(keys)
        if 13 in keys:
            raise RuntimeError("13 breaks the model")
        return [2 * k for k in keys]

    def encode(self, item, result):
        if result == 14:
            raise ValueError("cannot encode 7")
        return {"key": item["key"], "stage": None, "message": None, "value": result}

    def error_row(self, item, stage, exc, error_type=None):
        return {"key": item["key"], "stage": stage, "message": exc if isinstance(exc, str) else describe(exc)}

    def free_memory(self):
        self.freed += 1


def test_batch_first_then_one_by_one_and_every_failure_stays_with_its_item():
    actor = Doubler()
    out = actor({"key": np.array([4, 13, -1, 7, 2, 5])}).to_pylist()
    assert [r["key"] for r in out] == ["4", "13", "-1", "7", "2", "5"]  # one row per item, in row order
    assert actor.calls == [[4, 2], [13, 7, 5], [13], [7], [5]]  # groups first; the failing one item by item
    assert actor.freed == 2  # memory freed after the failed group call and after 13 failed alone
    by_key = {r["key"]: r for r in out}
    assert [by_key[k]["value"] for k in ("4", "2", "5")] == [8, 4, 10]
    assert (by_key["13"]["stage"], by_key["13"]["message"]) == ("model", "RuntimeError: 13 breaks the model")
    assert (by_key["7"]["stage"], by_key["7"]["message"]) == ("encode", "ValueError: cannot encode 7")
    assert (by_key["-1"]["stage"], by_key["-1"]["message"]) == ("decode", "unreadable")


def test_a_batch_whose_items_all_failed_upstream_never_calls_the_model():
    actor = Doubler()
    out = actor({"key": np.array([-3, -4])}).to_pylist()
    assert actor.calls == [] and [r["stage"] for r in out] == ["decode", "decode"]


class Recorder:
    """Stands in for the run's BatchCounter actor handle: ``counter.add.remote(items, errors)``."""

    def __init__(self):
        self.calls = []
        self.add = self

    def remote(self, items, errors):
        self.calls.append((items, errors))


def test_each_model_batch_is_counted_as_it_finishes():
    """Progress moves per model batch (jobs.common.progress.BatchCounter), not per committed unit: items
    failed upstream are counted as errors at once, then every group when the model is done with it."""
    from dataclasses import replace

    actor = Doubler()
    actor.config = replace(actor.config, counter=Recorder())
    batch = {"key": np.array([1, -1, 2, 3, 4, 13])}
    actor.results(batch)
    calls = actor.config.counter.calls
    assert calls[0] == (1, 1)  # the item that failed upstream
    assert sorted(calls[1:]) == [(2, 0), (3, 1)]  # the even group, then the odd group (13 fails alone)
    assert sum(n for n, _ in calls) == 6
