"""A pipeline that lost a worker starts again on the nodes that remain.

Ray Data restarts a dead actor and retries its batches on it, which works when the actor can be placed
again (a crash: its resources are free). When its node is gone and not replaced, the restarted actor may
never be placed (the other nodes are full), and its batches would wait for it for ever; with bounded
retries (jobs.common.ray_env) they fail instead, and the dataset with them. The runner then starts a new
pipeline of the units not committed yet, sized from the alive nodes, at most :data:`PIPELINE_RESTARTS`
times; committed units are kept (the log), and the abandoned attempts' files are swept like any other
uncommitted file. So a lost node costs at most the units in flight, never an image twice.
"""

from __future__ import annotations

PIPELINE_RESTARTS = 3
NODE_SETTLE_S = 90.0  # after a lost worker, how long to wait for Ray to count its node dead


class PipelineStalled(RuntimeError):
    """Raised in the driver's main thread when the pool waits for actors sized for a node that is gone."""
# Ray's exceptions that mean "a worker, its node or an object it held is gone", not "the data is bad"
LOST_WORKER = frozenset({
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "ActorUnschedulableError", "NodeDiedError",
    "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError", "ObjectFetchTimedOutError",
    "WorkerCrashedError", "LocalRayletDiedError", "RaySystemError", "PipelineStalled",
})
LOST_WORKER_WORDS = ("actor is temporarily unavailable", "actor died", "node died", "owner died", "worker died",
                     "was lost", "connection reset by peer")


def lost_worker(exc: BaseException) -> bool:
    """True when `exc` (or an exception in its chain, or the cause a RayTaskError wraps) says a worker,
    its node or an object it held is gone."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e).__name__ in LOST_WORKER or any(w in str(e).lower() for w in LOST_WORKER_WORDS):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return False


def describe_lost(exc: BaseException) -> str:
    """A short, redacted description of a lost-worker exception (kept instead of the exception, whose frames
    would keep the dead pipeline alive)."""
    from diffseg.redact import describe_error

    return describe_error(exc)[:300]


def wait_actors_gone(class_name: str, wait_s: float = 30.0, poll_s: float = 1.0) -> int:
    """Waits (collecting garbage, so a dropped pipeline shuts down) until no actor whose class name holds
    `class_name` is alive or restarting, at most `wait_s`; returns how many still are."""
    import gc
    import time

    import ray._private.state as state

    deadline, killed = time.monotonic() + wait_s, False
    while True:
        gc.collect()
        try:
            alive = [aid for aid, a in state.actors().items() if class_name in str(a.get("ActorClassName", ""))
                     and a.get("State") != "DEAD"]
        except Exception:
            return 0
        if not alive or time.monotonic() >= deadline:
            return len(alive)
        if not killed and time.monotonic() >= deadline - wait_s / 2:  # not gone by itself: stop them
            _kill(alive)
            killed = True
        time.sleep(poll_s)


def _kill(actor_ids: list[str]) -> None:
    """Kills actors by id, without restart (the dead pipeline's: Ray Data owns no handle we could use)."""
    import ray
    from ray._private.worker import global_worker

    for aid in actor_ids:
        try:
            global_worker.core_worker.kill_actor(ray.ActorID.from_hex(aid), True)
        except Exception:
            pass


class StallAlarm:
    """Turns the placement watchdog's "a node is gone" (a driver thread) into :class:`PipelineStalled` in the
    main thread, where the pipeline is consumed: a SIGUSR1 delivered to ourselves, whose handler raises."""

    def __enter__(self):
        import signal
        import threading

        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGUSR1, self._raise)
        return self

    def __exit__(self, *exc):
        import signal

        if self._old is not None:
            signal.signal(signal.SIGUSR1, self._old)

    @staticmethod
    def _raise(signum, frame):
        raise PipelineStalled("actors wait for a node that is gone: the pipeline starts again on the nodes that remain")

    @staticmethod
    def ring() -> None:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGUSR1)


def restart_pipeline(run, reason: str):
    """After a pipeline lost a worker: commits what is whole, abandons the units in flight and returns the
    units to run again (the plan without the committed units: diffseg.lake.plan), with the actor pool
    re-sized from the alive nodes once the dead pipeline's actors are gone (jobs.common.restarts)."""
    import dataclasses

    from jobs.common.config import resolve_resources

    wait_actors_gone("MapWorker")
    run.writer.flush()
    run.writer.abandon_in_flight()
    units = run.planned.units.without(run.writer.committed_units)
    nodes = settled_nodes(run.nodes_at_start)
    run.resources = dataclasses.replace(resolve_resources(run.config, nodes), counter=run.resources.counter)
    run.pipeline_restarts += 1
    run.nodes_at_start = len(nodes)
    res = run.resources
    run.job.log.warning("the pipeline lost a worker (%s): starting it again with the %d unit(s) not committed on "
                        "%d alive node(s) -> %d actor(s) x (%g CPU, %g GPU)", reason, len(units),
                        len(nodes), res.actors, res.cpus_per_actor, res.gpus_per_actor)
    return units


def settled_nodes(before: int, wait_s: float = NODE_SETTLE_S, poll_s: float = 2.0) -> list:
    """The alive nodes once Ray has noticed a lost one: Ray marks a node dead only after missed health
    checks (tens of seconds), and a pool sized while it still counts a lost node would wait for an actor
    it can never place. Waits up to `wait_s` for fewer than `before` alive nodes (a crash on a node that
    is still there changes nothing: the view is taken as it is after the wait)."""
    import time

    from jobs.common.ray_env import alive_nodes

    deadline = time.monotonic() + wait_s
    nodes = alive_nodes()
    while len(nodes) >= before and time.monotonic() < deadline:
        time.sleep(poll_s)
        nodes = alive_nodes()
    return nodes
