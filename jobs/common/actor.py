"""The actor base class both jobs' Ray Data actors derive from (jobs.segment.actor, jobs.synthesize.actor),
and the CPU stage that encodes and writes what a device actor computed.

:class:`ModelActor` holds what every model actor does the same way: it sets its torch threads and
loads the pipeline once, in ``__init__`` (heavy imports stay in the actor; the driver never loads the
model); it turns a batch into work items, runs the model on groups of them "batch first, then one by
one" (so one bad item never fails its neighbours), frees accelerator memory after a failure, and makes
one outcome per item: the model's result, or a :class:`Failure` (``model``, or a stage before the actor).

**Stages by resource.** Encoding (label PNGs, RLE, statistics) and writing the unit's Parquet files cost
far more CPU per image than a GPU forward (issue 21: 6-70 ms against 3-5 ms), and an actor runs one call at
a time: done in the actor, they leave the device idle. So with ``config.encode_stage`` (the segment job)
the actor does device work only and returns, per unit of its batch, ONE row of compact outcomes
(:data:`COMPACT_SCHEMA`: the argmax-size label maps and the score channels the statistics read, pickled;
a unit never splits across Ray Data blocks because it is one row); :func:`encode_and_write`, plain CPU
tasks of the pipeline (jobs.common.ray_env.map_encode), encodes them with the job's encoder (the same
``encode``/``error_row`` code the actor would run), writes the unit's files
(diffseg.lake.commit.write_results) and returns the small META rows the driver commits. The device actor
is then free for the next batch while CPU tasks anywhere in the cluster encode the last one: how many CPUs
a GPU needs is a cluster sizing question, not an actor's (docs/job.md; measured by jobs.bench.pipeline).
A pool of threads inside the actor was the alternative; it is bounded by the actor's own CPUs and the
GIL, where the Ray Data stage scales with the cluster (docs/benchmarks.md, "Pipeline").

Without ``encode_stage`` (the synthesize job, whose generation takes seconds per image against
milliseconds of encoding) the actor encodes and writes itself, as before; without a write target (a
stage dropped into another pipeline) it returns the result rows.

A job supplies only what differs: how a batch becomes items (:meth:`ModelActor.items`), which items go
through the model together (:meth:`ModelActor.groups`), one model call (:meth:`ModelActor.compute`), the
compact form of a result that travels to the CPU stage (:meth:`ModelActor.compact`), how a result is
encoded (:meth:`ModelActor.encode`) and how an error row looks (:meth:`ModelActor.error_row`); with the
CPU stage, the encoder object that does the last two there (:meth:`ModelActor.encoder`).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from diffseg.lake.commit import WriteTarget, write_results
from diffseg.lake.schemas import TableSet
from diffseg.lake.store import OutputStore
from jobs.common.crashes import crash_message, exit_poisoned, is_poisoning

log = logging.getLogger("jobs.common.actor")

COMPACT_SCHEMA = pa.schema([
    ("unit_id", pa.string()),
    ("positions", pa.list_(pa.int32())),  # the batch's items of the unit, as positions in the unit
    ("unit_rows", pa.int32()),  # the unit's size
    ("outcomes", pa.large_binary()),  # pickle of [(item without its input arrays, result or Failure)] in positions' order
    ("send_keys", pa.bool_()),  # the META rows carry the keys (units whose keys only the workers know: containers)
])
"""What a device actor returns with ``encode_stage``: one row per (batch, unit). The payload is pickled
numpy arrays (a buffer copy each way); it only ever travels between two stages of one job."""


@dataclass(frozen=True)
class ActorConfig:
    """Where and how an actor runs its model (each job's actor config adds its own fields)."""

    dtype: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU (diffseg.runtime decides, as for jobs.bench)
    compile: bool = False  # torch.compile the U-Net's blocks once per actor (--compile)
    device: str = "cpu"  # "cuda" when the actor holds a GPU
    torch_threads: int = 1  # intra-op threads of this actor (its CPU share)
    batch_size: int = 8  # items per model call (a batch of the pipeline may hold a whole unit)
    target: WriteTarget | None = None  # write the rows to OUTPUT and return metadata; None: return the rows
    encode_stage: bool = False  # with a target: return compact outcomes; encode_and_write tasks encode and write
    counter: object = None  # where to count finished items per model batch (jobs.common.progress.BatchCounter)

    @classmethod
    def placed(cls, config, resources, target: WriteTarget | None = None, **fields):
        """The actor config for `resources` (a jobs.common.config.Resources: device, threads) with the
        job `config`'s dtype and batch size, its write `target` and the actor's own `fields`."""
        return cls(dtype=config.dtype, device=resources.device, torch_threads=resources.torch_threads,
                   batch_size=config.batch_size, target=target, compile=config.compile,
                   counter=getattr(resources, "counter", None), **fields)


@dataclass(frozen=True)
class Failure:
    """An item's outcome when it failed: at `stage` ("read", "decode", "model"...), with the exception's
    type name and its redacted message (what the error row records)."""

    stage: str
    error_type: str
    message: str


def describe(exc: BaseException) -> str:
    """``"TypeName: message"``, redacted (diffseg.redact.describe_error; only the type name when the
    message is empty)."""
    from diffseg.redact import describe_error

    return describe_error(exc) if str(exc) else type(exc).__name__


def encode_rows(encoder, items: list[dict], outcomes: list) -> pa.Table:
    """Result rows (``encoder.tables.result_schema``), one per item: ``encoder.error_row`` of a
    :class:`Failure`, else ``encoder.encode`` of the result (an ``encode`` error row when that raises).
    `encoder`: a ModelActor, or the job's CPU-stage encoder (same two methods and ``tables``)."""
    rows = []
    for item, outcome in zip(items, outcomes):
        if isinstance(outcome, Failure):
            rows.append(encoder.error_row(item, outcome.stage, outcome.message, outcome.error_type))
            continue
        try:
            rows.append(encoder.encode(item, outcome))
        except Exception as exc:
            rows.append(encoder.error_row(item, "encode", exc))
    return encoder.tables.to_table(rows)


def unpack_compact(batch: pa.Table) -> tuple[list[dict], list, np.ndarray, np.ndarray]:
    """:data:`COMPACT_SCHEMA` rows -> (items, outcomes, positions (N,) int32, unit_rows (N,) int32), one
    entry per item, unit after unit (``send_keys``: see :func:`encode_and_write`)."""
    items, outcomes, positions, unit_rows = [], [], [], []
    for pos, size, payload in zip(*(batch.column(c).to_pylist() for c in ("positions", "unit_rows", "outcomes"))):
        pairs = pickle.loads(payload)
        items += [item for item, _ in pairs]
        outcomes += [outcome for _, outcome in pairs]
        positions += pos
        unit_rows += [size] * len(pos)
    return items, outcomes, np.asarray(positions, np.int32), np.asarray(unit_rows, np.int32)


def encode_and_write(batch: pa.Table, encoder, target: WriteTarget) -> pa.Table:
    """The CPU stage (a Ray Data task): :data:`COMPACT_SCHEMA` rows in, the units' rows encoded with
    `encoder` (encode_rows) and written to `target` (diffseg.lake.commit.write_results), their
    diffseg.lake.commit.META_SCHEMA rows out."""
    items, outcomes, positions, unit_rows = unpack_compact(batch)
    results = encode_rows(encoder, items, outcomes)
    return write_results(OutputStore(target.output), target, encoder.tables, results, positions, unit_rows,
                         **send_keys_option(batch))


def send_keys_option(batch: pa.Table) -> dict:
    """``{"send_keys": True}`` for write_results when the units' keys travel in the metadata (container
    inputs, whose keys the workers discover), else ``{}``."""
    return {"send_keys": True} if any(batch.column("send_keys").to_pylist()) else {}


class ModelActor:
    """Ray Data callable class: a batch (dict of numpy columns) in, a pyarrow Table out (result rows,
    META rows, or with ``encode_stage`` :data:`COMPACT_SCHEMA` rows: see the module docstring).

    Subclasses set ``tables`` (their diffseg.lake.schemas.TableSet) and implement the hooks below.
    An item is a dict; one with an ``"error"`` entry ``(stage, error_type, message)`` failed before the
    actor (e.g. at decoding) and only becomes an error row.
    """

    tables: TableSet
    input_keys: tuple[str, ...] = ("image",)  # item entries the model reads that never leave the actor

    def __init__(self, model_uri: str, config: ActorConfig):
        import torch

        from diffseg.runtime import choose_runtime, load_runtime_pipeline

        torch.set_num_threads(max(1, int(config.torch_threads)))
        self.config = config
        self.pipe = load_runtime_pipeline(model_uri, choose_runtime(config.device, config.dtype, compile=config.compile))  # as jobs.bench
        self.store = None if config.target is None else OutputStore(config.target.output)

    # -- what each job supplies ----------------------------------------------------------------------
    def items(self, batch: dict[str, np.ndarray]) -> list[dict]:
        """The batch's work items, in row order."""
        raise NotImplementedError

    def groups(self, items: list[dict], todo: list[int]) -> list[list[int]]:
        """Indices (of `todo`, the items without an error) that one model call serves; default: runs of
        ``config.batch_size``."""
        size = max(1, self.config.batch_size)
        return [todo[i : i + size] for i in range(0, len(todo), size)]

    def compute(self, items: list[dict]) -> list:
        """One model call on `items`: one result per item (raises when the call fails)."""
        raise NotImplementedError

    def compact(self, item: dict, result):
        """What of a result travels to the CPU stage (picklable, small: no dense float maps unless they are
        stored); default: the result itself."""
        return result

    @classmethod
    def stage_encoder(cls, *constructor_args):
        """The object the CPU stage encodes with (``tables``, ``encode``, ``error_row``; picklable, no model),
        from the actor's constructor arguments (jobs.common.ray_env.map_actors adds the stage with it)."""
        raise NotImplementedError(f"{cls.__name__} has no CPU-stage encoder: run it without encode_stage")

    def encoder(self):
        """This actor's :meth:`stage_encoder`."""
        raise NotImplementedError(f"{type(self).__name__} has no CPU-stage encoder: run it without encode_stage")

    def encode(self, item: dict, result) -> dict:
        """The result row of an item the model served (may raise: the item gets an ``encode`` error row)."""
        raise NotImplementedError

    def error_row(self, item: dict, stage: str, exc: BaseException | str, error_type: str | None = None) -> dict:
        """The result row of an item that failed at `stage`."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]):
        """With a write target: the batch's rows written to OUTPUT, diffseg.lake.commit.META_SCHEMA rows
        returned (the batch carries ``pos`` and ``unit_rows``: each item's position in its unit and the
        unit's size), or with ``encode_stage`` the :data:`COMPACT_SCHEMA` rows that encode_and_write
        turns into them. Without one: the result rows (``tables.result_schema``), one per item, in row order."""
        if self.config.target is not None and self.config.encode_stage:
            return self.compact_outcomes(batch)
        results = self.results(batch)
        if self.config.target is None:
            return results
        return write_results(self.store, self.config.target, self.tables, results, batch["pos"], batch["unit_rows"],
                             send_keys="source" in batch)  # containers: the driver learns the keys from us

    def results(self, batch: dict[str, np.ndarray]):
        """Result rows (``tables.result_schema``), one per item, in the batch's row order."""
        items, outcomes = self.outcomes(batch)
        return encode_rows(self, items, outcomes)

    def outcomes(self, batch: dict[str, np.ndarray]) -> tuple[list[dict], list]:
        """The batch's items and, per item, the model's result or a :class:`Failure`, in row order."""
        items = self.items(batch)
        outcomes: list = [None] * len(items)
        for i, item in enumerate(items):
            if item.get("error"):
                outcomes[i] = Failure(*item["error"])
        todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
        self.count(len(items) - len(todo), len(items) - len(todo))  # failed upstream: done, as errors
        guard = self.crash_guard([self.key_of(items[i]) for i in todo])
        groups = self.groups(items, todo)
        if guard is not None and guard.careful:  # an earlier attempt of this batch killed its process
            killers = set(guard.killers)
            for i in todo:
                if self.key_of(items[i]) in killers:
                    outcomes[i] = Failure("model", "WorkerCrash",
                                          crash_message(self.key_of(items[i]), guard.record["attempts"]))
            groups = [[i] for i in todo if outcomes[i] is None]  # one at a time, each noted before it runs
        for group in groups:
            if guard is not None and guard.careful:
                guard.running(self.key_of(items[group[0]]))
            for i, result in zip(group, self.compute_each([items[i] for i in group])):
                outcomes[i] = Failure("model", type(result).__name__, describe(result)) if isinstance(result, Exception) else result
            self.count(len(group), sum(isinstance(outcomes[i], Failure) for i in group))
        if guard is not None:
            guard.done()
        return items, outcomes

    def count(self, items: int, errors: int) -> None:
        """Tells the run's progress counter that `items` more are done (fire and forget)."""
        if items and self.config.counter is not None:
            try:
                self.config.counter.add.remote(items, errors)
            except Exception:  # progress is a view: never a reason to fail a batch
                pass

    def key_of(self, item: dict) -> str:
        """An item's work-item key (its URI; ``class\\tseed`` for jobs.synthesize)."""
        return str(item.get(self.tables.key_column) or item.get("uri") or item.get("key"))

    def crash_guard(self, keys: list[str]):
        """The crash record of this batch (jobs.common.crashes), when the actor writes to OUTPUT."""
        from jobs.common.crashes import CrashGuard

        target = self.config.target
        if target is None or self.store is None or not keys:
            return None
        try:
            return CrashGuard(self.store, f"_staging/{target.run_id}/{target.invocation}", keys)
        except Exception as exc:  # the record is an aid: without it the batch runs as before
            log.warning("no crash record for this batch (%s)", describe(exc))
            return None

    def compact_outcomes(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """:data:`COMPACT_SCHEMA` rows of the batch: one per unit, its items (without their input arrays)
        and outcomes (:meth:`compact` of each result) in position order."""
        items, outcomes = self.outcomes(batch)
        unit_ids = [str(u) for u in batch["unit_id"]]
        positions = np.asarray(batch["pos"], np.int32)
        rows = []
        for unit_id in dict.fromkeys(unit_ids):
            members = sorted((i for i, u in enumerate(unit_ids) if u == unit_id), key=lambda i: positions[i])
            pairs = [({k: v for k, v in items[i].items() if k not in self.input_keys},
                      outcomes[i] if isinstance(outcomes[i], Failure) else self.compact(items[i], outcomes[i]))
                     for i in members]
            rows.append({"unit_id": unit_id, "positions": [int(positions[i]) for i in members],
                         "unit_rows": int(batch["unit_rows"][members[0]]),
                         "outcomes": pickle.dumps(pairs, protocol=pickle.HIGHEST_PROTOCOL),
                         "send_keys": "source" in batch})  # containers (jobs.segment.containers)
        return pa.Table.from_pylist(rows, schema=COMPACT_SCHEMA)

    def compute_each(self, items: list[dict]) -> list:
        """Per item: its result or its exception. The items go through the model together first; when
        that call fails, one by one, so only the items that still fail get an exception."""
        if not items:
            return []
        try:
            return self.compute(items)
        except Exception as exc:
            if self.config.device == "cuda" and is_poisoning(exc):  # every later CUDA call would fail: a fresh
                exit_poisoned(exc)  # process (Ray restarts it, bounded; the crash record isolates the image)
            log.warning("model failed on a batch of %d item(s) (%s); retrying them one by one", len(items),
                        describe(exc))
            self.free_memory()
        results = []
        for item in items:
            try:
                results.append(self.compute([item])[0])
            except Exception as exc:
                if self.config.device == "cuda" and is_poisoning(exc):
                    exit_poisoned(exc)
                self.free_memory()
                results.append(exc)
        return results

    def free_memory(self) -> None:
        """Returns cached accelerator memory after a failure (an out-of-memory batch, typically)."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
