"""Outputs written by diffseg 0.2 (commit markers under ``_commits/<run_id>/``): imported into the run's log.

The first invocation of this version on a run that has markers but no log appends one ``commit`` entry per
512 markers, naming each unit's files as its marker lists them (sizes read from the store, no md5: files of
0.2 are identified by name and size) and its keys with their outcome (an error row of 0.2 is final: it had no
retryable flag). Files of the run that no marker names (debris of a killed 0.2 invocation) are removed, then
the markers and the 0.2 done index. From then on the run is an ordinary run of this version. A 0.2 job must
not run against the same OUTPUT at the same time (it would write markers nobody reads).
"""

from __future__ import annotations

import json
import logging
import re

from diffseg.lake.store import OutputStore

log = logging.getLogger("diffseg.lake.legacy")

COMMITS = "_commits"
_OLD_PART = re.compile(r"^part-(?P<run>[A-Za-z0-9][A-Za-z0-9._-]{0,63})-(?P<unit>[0-9a-f]{16})\.parquet$")


def import_markers(store: OutputStore, commit_log, tables, known: set[str] = frozenset()) -> int:
    """Imports the run's 0.2 markers into its (begun) log, but those of `known` units (an import cut short
    by a kill is finished by the next invocation); returns how many units it imported."""
    from diffseg.lake.commit import row_keys
    from diffseg.lake.units import read_file

    run_id = commit_log.run_id
    rels = [r for r in store.list(f"{COMMITS}/{run_id}") if r.endswith(".json") and not r.rsplit("/", 1)[1].startswith(".")]
    if not rels:
        return 0
    units, keep = [], set()
    for data in store.get_many(rels).values():
        if isinstance(data, Exception):
            raise data
        marker = json.loads(data)
        keep.update(marker["files"].values())
        if marker["unit_id"] in known:
            continue
        files = {}
        for table, path in marker["files"].items():
            files[table] = {"path": path, "bytes": store.fs.size(store.path(path)), "md5": None,
                            "rows": int(marker.get("rows", {}).get(table, 0))}
        errors = read_file(store, marker["files"]["errors"], tables.schemas["errors"])
        failed = set(row_keys(tables, "errors", errors).to_pylist()) if errors.num_rows else set()
        units.append({"unit_id": marker["unit_id"], "keys": marker["uris"], "files": files,
                      "errors": [i for i, k in enumerate(marker["uris"]) if k in failed], "retry": []})
    for start in range(0, len(units), 512):
        commit_log.append("commit", {"units": units[start: start + 512], "imported_from": "diffseg 0.2 markers"})
    debris = [r for t in tables.schemas for r in store.list(t)
              if (m := _OLD_PART.match(r.rsplit("/", 1)[-1])) and m["run"] == run_id and r not in keep]
    debris += store.list(f"_staging/{run_id}")
    store.remove(debris + rels + [r for r in store.list(f"_index/{run_id}") if r.endswith(("/uris.parquet", "/units.parquet"))])
    log.info("run %r: imported %d unit(s) committed by diffseg 0.2 into the run's log (removed %d uncommitted file(s))",
             run_id, len(units), len(debris))
    return len(units)


def has_markers(store: OutputStore, run_id: str) -> bool:
    return bool(store.list(f"{COMMITS}/{run_id}"))


