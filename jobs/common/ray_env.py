"""Ray wiring both jobs share: connecting to (or starting) Ray, progress output, the alive nodes and
their resources (actors are sized per node: jobs.common.config.resolve_resources), a watchdog that says
when the actor pool cannot be placed, the model actor stage of their pipelines and the CPU stage that
encodes and writes its results (map_encode)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings

from jobs.common.config import JobConfig, Node, Resources


def accept_remote_args() -> None:
    """Ray 2.60 warns that max_retries/max_restarts/max_task_retries passed to map_batches as keyword
    arguments are deprecated (removal in 2.64); they are still how Ray Data takes them, the job pins Ray
    2.60, and `-q` shows only our lines. Called after Ray is imported (Ray installs its own filter then)."""
    warnings.filterwarnings("ignore", message=r".*`ray_remote_args` is deprecated")

log = logging.getLogger("jobs.common.ray_env")


class QuietRay:
    """``-q`` for the Ray part of a job (see :func:`quiet_ray`): what Ray itself prints in this process
    goes to files in the session's logs folder (``diffseg-driver-ray.log``: Ray's Python lines such as
    "Started a local Ray instance"; ``diffseg-driver-stderr.log``: what its C++ core worker writes to
    this process's stderr, such as ``E ... core_worker.cc`` lines), while our own log records and prints
    keep the terminal. Ray's Python errors still show."""

    def __init__(self):
        self.terminal = None  # a text stream on a duplicate of the original stderr (fd 2)
        self.saved_fd: int | None = None
        self.swapped: list = []  # (owner, attribute, original) to put back
        self.handler_levels: list = []  # (handler, level) of Ray's console handlers
        self.file_handler: logging.Handler | None = None

    def quiet_ray_loggers(self) -> None:
        """Ray's console handlers show errors only (called before ray.init: its connection lines)."""
        for name in ("ray", "ray.data"):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    self.handler_levels.append((handler, handler.level))
                    handler.setLevel(logging.ERROR)

    def route_to_logs(self, logs_dir: str) -> None:
        """Sends Ray's Python lines and this process's fd 2 to files in `logs_dir`; our streams and
        logging handlers keep writing to the terminal."""
        import sys

        os.makedirs(logs_dir, exist_ok=True)
        self.file_handler = logging.FileHandler(os.path.join(logs_dir, "diffseg-driver-ray.log"))
        self.file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("ray").addHandler(self.file_handler)
        original = sys.__stderr__
        if original is None:
            return
        original.flush()
        sys.stderr.flush()
        self.saved_fd = os.dup(2)
        self.terminal = os.fdopen(os.dup(self.saved_fd), "w", buffering=1, encoding=original.encoding,
                                  errors="backslashreplace")
        self._swap(original, self.terminal)
        target = os.open(os.path.join(logs_dir, "diffseg-driver-stderr.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                         0o644)
        os.dup2(target, 2)
        os.close(target)

    def _swap(self, old, new) -> None:
        """Every stream of ours that writes to `old` (sys.stderr, a redacting wrapper around it, the
        stream of a logging handler) writes to `new` instead."""
        import sys

        holders = [(sys, "stderr")]
        stream = sys.stderr
        while hasattr(stream, "_stream"):  # diffseg.redact.RedactingStream and the like
            holders.append((stream, "_stream"))
            stream = stream._stream
        for owner, attribute in holders:
            if getattr(owner, attribute) is old:
                self.swapped.append((owner, attribute, old))
                setattr(owner, attribute, new)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                self.swapped.append((handler, "stream", old))
                handler.stream = new

    def restore(self) -> None:
        """Puts fd 2, the streams and Ray's handlers back as they were."""
        import sys

        if self.terminal is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
                self.terminal.flush()
        if self.saved_fd is not None:
            os.dup2(self.saved_fd, 2)
            os.close(self.saved_fd)
            self.saved_fd = None
        for owner, attribute, original in reversed(self.swapped):
            setattr(owner, attribute, original)
        self.swapped.clear()
        if self.terminal is not None:
            with contextlib.suppress(OSError):
                self.terminal.close()
            self.terminal = None
        for handler, level in self.handler_levels:
            handler.setLevel(level)
        self.handler_levels.clear()
        if self.file_handler is not None:
            logging.getLogger("ray").removeHandler(self.file_handler)
            self.file_handler.close()
            self.file_handler = None


_quiet: QuietRay | None = None  # set inside quiet_ray(True)


@contextlib.contextmanager
def quiet_ray(enabled: bool = True):
    """Inside (``-q``): :func:`init_ray` routes Ray's own output of this process to its session logs
    (QuietRay); on exit everything is put back. Does nothing when not `enabled`."""
    global _quiet
    if not enabled or _quiet is not None:
        yield
        return
    _quiet = QuietRay()
    try:
        yield
    finally:
        quiet, _quiet = _quiet, None
        quiet.restore()


def init_ray(config: JobConfig) -> None:
    """Connects to the cluster (``--address`` or ``$RAY_ADDRESS``, as ``ray job submit`` sets) or starts
    a local runtime with ``--num-cpus`` / ``--object-store-mb``. Does nothing when Ray is already up.
    Inside :func:`quiet_ray` (``-q``) Ray's own lines go to its session logs (Ray 2.60's warning that it
    turned token authentication on for a local runtime included)."""
    import ray

    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"log_to_driver": True}
    if address in (None, "local"):
        if config.num_cpus is not None:
            kwargs["num_cpus"] = config.num_cpus
        if config.object_store_mb is not None:
            kwargs["object_store_memory"] = int(config.object_store_mb) * 1024 * 1024
        kwargs["include_dashboard"] = False
        address = "local"  # a fresh runtime: never join a cluster someone else started on this machine
    quiet = _quiet
    if quiet is not None:
        quiet.quiet_ray_loggers()
    ray.init(address=address, **kwargs)
    if quiet is not None:
        quiet.route_to_logs(_logs_dir())


def _logs_dir() -> str:
    """This Ray session's logs folder (where Ray's own files are), or a temporary folder if unknown."""
    import tempfile

    try:
        import ray._private.worker as worker

        return worker.global_worker.node.get_logs_dir_path()
    except Exception:
        return tempfile.mkdtemp(prefix="diffseg-ray-logs-")


def alive_nodes() -> list[Node]:
    """The alive nodes of the connected cluster and their total logical resources."""
    import ray

    return [Node(n["NodeID"], float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)),
                 int(n["Resources"].get("memory", 0))) for n in ray.nodes() if n.get("Alive")]


def batch_counter():
    """The run's progress counter: a BatchCounter actor that takes no CPU (jobs.common.progress)."""
    import ray

    from jobs.common.progress import BatchCounter

    return ray.remote(num_cpus=0, max_restarts=0)(BatchCounter).remote()


def pending_actors(class_name: str) -> int:
    """Actors of `class_name` (Ray Data names them ``MapWorker(...Class)``) waiting to be placed: new ones,
    and restarting ones (an actor whose node is gone waits in RESTARTING for a node that can hold it)."""
    import ray._private.state as state

    try:
        table = state.actors()
    except Exception:
        return 0
    return sum(1 for a in table.values() if class_name in str(a.get("ActorClassName", ""))
               and a.get("State") in ("PENDING_CREATION", "DEPENDENCIES_UNREADY", "RESTARTING"))


class PlacementWatchdog:
    """A driver thread that logs a warning when actors of the pool have waited for a node for more than
    `after_s` seconds (the request and the largest alive node named), then again every `after_s`. When
    fewer nodes are alive than `nodes_at_start` (a node lost, not replaced), it calls `on_lost_node` once
    instead of waiting on: the runner starts the pipeline again, sized for the nodes that remain. So it
    does when no item finished for `after_s` (`progress`) while a node is gone (a stall Ray Data does not
    report: a task or actor waiting for the lost node)."""

    def __init__(self, class_name: str, resources: Resources, after_s: float = 60.0, poll_s: float = 5.0,
                 nodes_at_start: int | None = None, on_lost_node=None, progress=None):
        self.class_name, self.resources, self.after_s, self.poll_s = class_name, resources, after_s, poll_s
        self.nodes_at_start, self.on_lost_node = nodes_at_start, on_lost_node  # see _watch
        self.progress = progress  # () -> items done so far: no progress for after_s with a node gone is a stall
        self.warnings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="placement-watchdog", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=self.poll_s + 1)

    def _watch(self) -> None:
        since = None
        last_done, last_change = None, time.monotonic()
        while not self._stop.wait(self.poll_s):
            if self.progress is not None and self.on_lost_node is not None and self.nodes_at_start:
                done = self.progress()
                if done != last_done:
                    last_done, last_change = done, time.monotonic()
                elif time.monotonic() - last_change >= self.after_s and len(alive_nodes()) < self.nodes_at_start:
                    log.warning("no image finished for %.0f s and a node is gone: starting the pipeline again on the "
                                "nodes that remain", time.monotonic() - last_change)
                    self.on_lost_node()
                    return
            waiting = pending_actors(self.class_name)
            if not waiting:
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= self.after_s:
                nodes = alive_nodes()
                largest = max(nodes, key=lambda n: (n.gpus, n.cpus)).describe() if nodes else "none"
                res = self.resources
                log.warning("%d actor(s) of %g CPU(s), %g GPU(s) could not be placed for %.0f s: %d alive node(s), the "
                            "largest has %s. The pool runs with the actors it has; add nodes or lower --actors",
                            waiting, res.cpus_per_actor, res.gpus_per_actor, time.monotonic() - since, len(nodes),
                            largest)
                self.warnings += 1
                since = time.monotonic()
                if self.on_lost_node is not None and self.nodes_at_start and len(nodes) < self.nodes_at_start:
                    # actors sized for a node that is gone: Ray Data would wait for them for ever
                    self.on_lost_node()
                    return


ACTOR_RESTARTS = 8  # restarts of one actor (a segfault, a host OOM kill, a poisoned device) before Ray gives up
ACTOR_TASK_RETRIES = 5  # retries of one batch on a restarted actor: enough to isolate up to 3 killing images (jobs.common.crashes)
TASK_RETRIES = 3  # retries of one decode or encode task


def map_actors(ds, actor_class, constructor_args: tuple, resources, batch_size: int | None):
    """`ds` -> ``map_batches(actor_class)`` on an elastic pool of up to ``resources.actors`` actors (at least
    one), each holding ``resources.cpus_per_actor`` CPUs and ``resources.gpus_per_actor`` GPUs (a
    jobs.common.config.Resources). A node lost and not replaced shrinks the pool instead of leaving it
    waiting for an actor it can never place; restarts and retries are bounded (Ray Data's defaults retry
    for ever). When the actor config (the last constructor argument) has ``encode_stage`` and a write
    target, the CPU stage that encodes and writes follows (:func:`map_encode`, with the class's
    ``stage_encoder``), so every pipeline built on this stage gets it."""
    from ray.data import ActorPoolStrategy

    accept_remote_args()
    ds = ds.map_batches(
        actor_class,
        fn_constructor_args=constructor_args,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=resources.actors, initial_size=resources.actors),
        num_cpus=resources.cpus_per_actor,
        num_gpus=resources.gpus_per_actor,
        max_restarts=ACTOR_RESTARTS,
        max_task_retries=ACTOR_TASK_RETRIES,
    )
    config = constructor_args[-1] if constructor_args else None
    if getattr(config, "encode_stage", False) and getattr(config, "target", None) is not None:
        ds = map_encode(ds, actor_class.stage_encoder(*constructor_args), config.target, resources.decode_cpus)
    return ds


def map_encode(ds, encoder, target, cpus: float = 1.0):
    """`ds` (a device actor stage with ``encode_stage``: jobs.common.actor.COMPACT_SCHEMA rows, one per
    unit) -> ``map_batches(encode_and_write)`` on plain CPU tasks of `cpus` CPUs each: the units' rows
    encoded with `encoder` and written to `target`, META rows out. One block per call, so a unit (one row)
    always arrives whole; a task that dies is retried :data:`TASK_RETRIES` times (its files have new
    attempt names, so a repeat can only leave an uncommitted file). The device actors never wait for it:
    Ray Data queues their outputs while these tasks run wherever CPUs are free."""
    from jobs.common.actor import encode_and_write

    return ds.map_batches(encode_and_write, batch_size=None, batch_format="pyarrow",
                          fn_kwargs={"encoder": encoder, "target": target}, num_cpus=cpus, max_retries=TASK_RETRIES)


def commit_stream(committer, dataset, tables) -> int:
    """Feeds the metadata batches of `dataset` to `committer` (a diffseg.lake.writer.UnitCommitter), runs
    the compactions it asks for as Ray tasks in the cluster and queues their units as they finish; returns
    once every queued unit is committed. Returns the number of compactions it ran (units that arrived in
    several parts: the pipelines keep a unit in one block, so normally 0; jobs.bench.pipeline reports it)."""
    import ray

    from diffseg.lake.commit import compact_unit

    compact = ray.remote(num_cpus=0, max_retries=3)(compact_unit)
    running: dict = {}
    compactions = 0

    def collect(block: bool) -> None:
        ready, _ = ray.wait(list(running), num_returns=len(running), timeout=None if block else 0)
        for ref in ready:
            committer.compacted(running.pop(ref), ray.get(ref))

    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        for spec in committer.add(batch):
            running[compact.remote(spec, tables)] = spec
            compactions += 1
        if running:
            collect(block=False)
    if running:
        collect(block=True)
    committer.flush()
    return compactions
