"""A pipeline started again after a lost worker runs the planned units not committed, from the stored plan
(no list of every unit in the driver)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace

import pyarrow as pa

from diffseg.lake.done_index import empty_done
from diffseg.lake.plan import plan_keys, units_of_plan
from diffseg.lake.store import OutputStore
from jobs.common import restarts


@dataclass(frozen=True)
class Sized:  # what resolve_resources returns, as far as the restart reads it
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    counter: object = None


def test_restart_runs_the_units_not_committed(tmp_path, monkeypatch):
    store = OutputStore(str(tmp_path))
    plan, _ = plan_keys(pa.array([f"s3://lake/{i:03d}.jpg" for i in range(20)]), empty_done(), store, "r",
                        "0123456789ab", 4)
    units = list(units_of_plan(store, plan))
    calls = []

    class Writer:
        committed_units = {units[1].unit_id: 4, units[3].unit_id: 4}

        def flush(self):
            calls.append("flush")

        def abandon_in_flight(self):
            calls.append("abandon")

    monkeypatch.setattr(restarts, "wait_actors_gone", lambda name: 0)
    monkeypatch.setattr(restarts, "settled_nodes", lambda before: ["node"])
    monkeypatch.setattr("jobs.common.config.resolve_resources", lambda config, nodes: Sized())
    run = SimpleNamespace(planned=SimpleNamespace(units=plan), writer=Writer(), config=None, nodes_at_start=2,
                          resources=Sized(), pipeline_restarts=0,
                          job=SimpleNamespace(log=logging.getLogger("test")))
    again = restarts.restart_pipeline(run, "a node died")
    assert calls == ["flush", "abandon"] and run.pipeline_restarts == 1
    assert [u.unit_id for u in units_of_plan(store, again)] == [u.unit_id for i, u in enumerate(units) if i not in (1, 3)]
