"""The actor base class both jobs' Ray Data actors derive from (jobs.segment.actor, jobs.synthesize.actor).

:class:`ModelActor` holds what every model actor does the same way: it sets its torch threads and
loads the pipeline once, in ``__init__`` (heavy imports stay in the actor; the driver never loads the
model); it turns a batch into work items, runs the model on groups of them "batch first, then one by
one" (so one bad item never fails its neighbours), frees accelerator memory after a failure, encodes
each result and makes an error row of whatever fails (``model`` or ``encode``), one result row per item.
With a write target (the jobs) it then writes those rows to OUTPUT itself and returns only small metadata
per unit of the batch (diffseg.lake.commit.write_results: workers write, the driver commits); without one
(a stage dropped into another pipeline) it returns the result rows.

A job supplies only what differs: how a batch becomes items (:meth:`ModelActor.items`), which items go
through the model together (:meth:`ModelActor.groups`), one model call (:meth:`ModelActor.compute`), how
a result is encoded (:meth:`ModelActor.encode`) and how an error row looks (:meth:`ModelActor.error_row`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from diffseg.lake.commit import WriteTarget, write_results
from diffseg.lake.schemas import TableSet
from diffseg.lake.store import OutputStore

log = logging.getLogger("jobs.common.actor")


@dataclass(frozen=True)
class ActorConfig:
    """Where and how an actor runs its model (each job's actor config adds its own fields)."""

    dtype: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU (diffseg.runtime decides, as for jobs.bench)
    compile: bool = False  # torch.compile the U-Net's blocks once per actor (--compile)
    device: str = "cpu"  # "cuda" when the actor holds a GPU
    torch_threads: int = 1  # intra-op threads of this actor (its CPU share)
    batch_size: int = 8  # items per model call (a batch of the pipeline may hold a whole unit)
    target: WriteTarget | None = None  # write the rows to OUTPUT and return metadata; None: return the rows

    @classmethod
    def placed(cls, config, resources, target: WriteTarget | None = None, **fields):
        """The actor config for `resources` (a jobs.common.config.Resources: device, threads) with the
        job `config`'s dtype and batch size, its write `target` and the actor's own `fields`."""
        return cls(dtype=config.dtype, device=resources.device, torch_threads=resources.torch_threads,
                   batch_size=config.batch_size, target=target, compile=config.compile, **fields)


def describe(exc: BaseException) -> str:
    """``"TypeName: message"``, redacted (diffseg.redact.describe_error; only the type name when the
    message is empty)."""
    from diffseg.redact import describe_error

    return describe_error(exc) if str(exc) else type(exc).__name__


class ModelActor:
    """Ray Data callable class: a batch (dict of numpy columns) in, a pyarrow Table of result rows out.

    Subclasses set ``tables`` (their diffseg.lake.schemas.TableSet) and implement the hooks below.
    An item is a dict; one with an ``"error"`` entry ``(stage, error_type, message)`` failed before the
    actor (e.g. at decoding) and only becomes an error row.
    """

    tables: TableSet

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
        unit's size). Without one: the result rows (``tables.result_schema``), one per item, in row order."""
        results = self.results(batch)
        if self.config.target is None:
            return results
        return write_results(self.store, self.config.target, self.tables, results, batch["pos"], batch["unit_rows"],
                             send_keys="source" in batch)  # containers: the driver learns the keys from us

    def results(self, batch: dict[str, np.ndarray]):
        """Result rows (``tables.result_schema``), one per item, in the batch's row order."""
        items = self.items(batch)
        rows: list[dict | None] = [None] * len(items)
        for i, item in enumerate(items):
            if item.get("error"):
                stage, error_type, message = item["error"]
                rows[i] = self.error_row(item, stage, message, error_type)
        for group in self.groups(items, [i for i, row in enumerate(rows) if row is None]):
            for i, result in zip(group, self.compute_each([items[i] for i in group])):
                rows[i] = self._encode_or_error(items[i], result)
        return self.tables.to_table(rows)

    def compute_each(self, items: list[dict]) -> list:
        """Per item: its result or its exception. The items go through the model together first; when
        that call fails, one by one, so only the items that still fail get an exception."""
        if not items:
            return []
        try:
            return self.compute(items)
        except Exception as exc:
            log.warning("model failed on a batch of %d item(s) (%s); retrying them one by one", len(items),
                        describe(exc))
            self.free_memory()
        results = []
        for item in items:
            try:
                results.append(self.compute([item])[0])
            except Exception as exc:
                self.free_memory()
                results.append(exc)
        return results

    def _encode_or_error(self, item: dict, result) -> dict:
        if isinstance(result, Exception):
            return self.error_row(item, "model", result)
        try:
            return self.encode(item, result)
        except Exception as exc:
            return self.error_row(item, "encode", exc)

    def free_memory(self) -> None:
        """Returns cached accelerator memory after a failure (an out-of-memory batch, typically)."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
