"""Containers as work units: a WebDataset shard or a Parquet row group is one unit, read front to back.

Planning (:func:`plan_containers`) makes one unit per container (a shard; a table file's row group), its id
a hash of the container's description, and its keys unknown: the workers discover them as they read
(``<container URI>#<key>``, diffseg.inputs.source) and tell the driver, which commits them with the unit
(diffseg.lake.writer). A container whose unit is committed is done; a committed one with retryable error
rows gets a unit of just those keys (the reader skips the other members). The read stage
(:func:`read_container`, a CPU task per unit) reads the container once, front to back, then decodes and
yields its images in blocks of at most ``chunk`` rows (``pos``: the member's position in the unit,
``unit_rows``: the unit's size), the columns the model stage takes from ``decode_batch``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict

import numpy as np
import pyarrow as pa

from diffseg.lake.units import Unit, unit_id_of


def source_json(source) -> str:
    """A diffseg.inputs.Source as the JSON a unit carries."""
    return json.dumps(asdict(source), sort_keys=True)


def source_of(text: str):
    """The diffseg.inputs.Source of :func:`source_json`."""
    from diffseg.inputs import InputOptions, Source

    d = json.loads(text)
    row_groups = tuple(d["row_groups"]) if d.get("row_groups") is not None else None
    return Source(d["id"], d["form"], d.get("count"), row_groups, InputOptions(**d.get("options", {})))


def plan_containers(sources, done, limit: int | None = None) -> tuple[list[Unit], dict]:
    """Units of the containers `done` (the run's diffseg.lake.done_index.DoneSet) does not hold, and of the
    retryable error keys of those it holds; at most `limit` containers. Returns (units, counts)."""
    from diffseg.inputs import split_source

    units, done_containers, retry_keys = [], 0, 0
    retry = done.retryable()
    retry_by_unit: dict[str, list[str]] = {}
    for uri, unit_id in zip(retry.column("uri").to_pylist(), retry.column("unit_id").to_pylist()):
        retry_by_unit.setdefault(unit_id, []).append(uri)
    for source in (part for s in sources for part in (split_source(s) if s.form == "parquet" else [s])):
        text = source_json(source)
        unit_id = unit_id_of([text])
        if unit_id in done.units:
            done_containers += 1
            keys = sorted(retry_by_unit.get(unit_id, ()))
            if keys:
                units.append(Unit(unit_id_of(keys), tuple(keys), text))
                retry_keys += len(keys)
            continue
        units.append(Unit(unit_id, (), text))
    limited_out = 0
    if limit is not None and len(units) > limit:
        limited_out, units = len(units) - limit, units[:limit]
    return units, {"containers_done": done_containers, "containers_to_process": len(units),
                   "retry_keys": retry_keys, "limited_out": limited_out}


def container_blocks(units: list[Unit]) -> list[pa.Table]:
    """One input row per container unit: its id, source and the keys to redo (empty: every member)."""
    return [pa.table({"unit_id": [u.unit_id], "source": [u.source], "keys": pa.array([list(u.uris)], pa.list_(pa.string()))})
            for u in units]


def read_container(batch: dict[str, np.ndarray], resolution: int, max_pixels: int, max_read_bytes: int,
                   read_timeout: float, chunk: int) -> Iterator[dict[str, np.ndarray]]:
    """The read and decode stages of container units (a CPU task; Ray Data batch of one unit row): yields the
    unit's images in blocks of at most `chunk` rows with decode_batch's columns plus ``pos``, ``unit_rows``
    and ``source`` (the metadata then carries the keys: diffseg.lake.commit.write_results(send_keys=True))."""
    from diffseg.codecs.images import decode_for_model
    from diffseg.inputs import ReadLimits, read_source

    limits = ReadLimits(max_bytes=max_read_bytes, timeout=read_timeout)
    for unit_id, text, only in zip(batch["unit_id"], batch["source"], batch["keys"]):
        wanted = [str(k) for k in only] if only is not None and len(only) else None
        items = list(read_source(source_of(str(text)), limits))
        if wanted is not None:
            by_key = {it.identity: it for it in items}
            items = [by_key.get(k) for k in wanted]
            missing = [k for k, it in zip(wanted, items) if it is None]
            if missing:
                from diffseg.inputs import Item, ItemError

                items = [it if it is not None else Item(k, error=ItemError(
                    "read", "MemberError", f"cannot read {k!r}: the member is no longer in its container", False))
                    for k, it in zip(wanted, items)]
        n = len(items)
        for start in range(0, n, chunk):
            part = items[start: start + chunk]
            m = len(part)
            images = np.zeros((m, resolution, resolution, 3), dtype=np.uint8)
            heights, widths = np.zeros(m, dtype=np.int32), np.zeros(m, dtype=np.int32)
            stage, etype, message = [""] * m, [""] * m, [""] * m
            for i, item in enumerate(part):
                if item.error is not None:
                    stage[i], etype[i], message[i] = item.error.as_tuple()
                    continue
                try:
                    images[i], (heights[i], widths[i]) = decode_for_model(item.data, resolution, name=item.identity,
                                                                          max_pixels=max_pixels)
                except Exception as exc:
                    stage[i], etype[i], message[i] = "decode", type(exc).__name__, str(exc) or repr(exc)
            yield {"uri": np.array([it.identity for it in part], dtype=object),
                   "unit_id": np.array([str(unit_id)] * m, dtype=object), "image": images, "height": heights,
                   "width": widths, "stage": np.array(stage, dtype=object), "error_type": np.array(etype, dtype=object),
                   "message": np.array(message, dtype=object),
                   "pos": np.arange(start, start + m, dtype=np.int32), "unit_rows": np.full(m, n, dtype=np.int32),
                   "source": np.ones(m, dtype=bool)}
