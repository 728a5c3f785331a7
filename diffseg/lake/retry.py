"""Handing retryable error rows back to planning: a fenced ``retry`` entry of the run's log.

A rerun retries the run's retryable error rows (network, throttling, credentials, memory, device:
diffseg.lake.faults), or with ``--retry-errors`` all its error rows. Before the keys are processed again, the
units holding their error rows get a new errors file without those rows (attempt-unique name) and one
``retry`` entry swaps it in and releases the keys (the old file is deleted after the entry is written). So
after a finished run each key is in exactly one of masks or errors, counting its latest attempt; if the
invocation dies before the keys are committed again, they are simply not done, and the next run plans them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from diffseg.lake.commit import file_metadata, final_files, new_attempt, row_keys
from diffseg.lake.store import OutputStore

log = logging.getLogger("diffseg.lake.retry")


def release_errors(store: OutputStore, commit_log, done, keys: pa.Array, tables) -> int:
    """Releases the error rows of `keys` (keys of `done` with an error status that this invocation will
    process again): rewrites their units' errors files without them and appends one ``retry`` entry.
    Returns how many keys were released. `tables`: the job's diffseg.lake.schemas.TableSet.

    Finds the error rows through the done index, shard by shard (diffseg.lake.done_index.DoneSet.held_rows):
    pass the planner's `held` keys (DoneSet.exclude_shard), not every key it plans, to read few shards; a run
    without error rows reads none."""
    from diffseg.lake.done_index import replay
    from diffseg.lake.units import read_file

    held = done.held_rows(keys)  # read shard by shard: only the shards `keys` fall in
    if not held.num_rows:
        return 0
    by_unit: dict[str, list[str]] = {}
    for uri, unit_id in zip(held.column("uri").to_pylist(), held.column("unit_id").to_pylist()):
        by_unit.setdefault(unit_id, []).append(uri)
    schema: Mapping = tables.schemas["errors"]
    units, old = [], []
    for unit_id, released in sorted(by_unit.items()):
        current = done.units[unit_id]["files"]["errors"]
        with store.fs.open(store.path(current["path"]), "rb") as f:
            metadata = file_metadata(f)
        data = read_file(store, current["path"], schema)
        kept = data.filter(pc.invert(pc.is_in(row_keys(tables, "errors", data), value_set=pa.array(released, pa.string()))))
        path = final_files(commit_log.run_id, commit_log.invocation, unit_id, new_attempt(), {"errors": schema})["errors"]
        info = {**store.put_parquet(path, kept, metadata), "rows": kept.num_rows}
        units.append({"unit_id": unit_id, "released": released, "files": {"errors": info}})
        old.append(current["path"])
    entry = commit_log.append("retry", {"units": units})
    replay(done, [entry])
    store.remove(old)
    log.info("run %r: retrying %d error row(s) of %d unit(s)", commit_log.run_id, held.num_rows, len(units))
    return held.num_rows
