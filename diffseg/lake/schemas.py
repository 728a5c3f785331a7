"""Arrow schemas of the job's output tables (DESIGN.md "Output tables") and of the actor's result rows.

Under OUTPUT, three Parquet datasets:

- ``masks/``: one row per (image, method);
- ``stats/``: one row per (image, method, class present);
- ``errors/``: one row per input that could not be processed.

The actor returns one :data:`RESULT_SCHEMA` row per input image (its mask and statistics rows nested in
list columns), so an image's rows always travel together and a unit is complete when every one of its
URIs has arrived; the driver flattens them into the three tables with :func:`split_results`.

:class:`TableSet` bundles what the shared exactly-once machinery (diffseg.lake.units, diffseg.lake.writer) needs to know
about a job's tables; :data:`SEGMENT_TABLES` is this job's, ``diffseg.lake.sample_schemas.SYNTH_TABLES`` the
generation job's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa

MASKS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("method", pa.string()),
        ("label_map_png", pa.binary()),  # uint8 PNG label map at the original size (uint16 beyond 255 classes)
        ("classes", pa.list_(pa.string())),  # classes present in the label map
        ("scores_png", pa.binary()),  # optional (--save-scores): (1+K) x h x w uint8 scores as a tall grey PNG
        ("run_id", pa.string()),
        ("model", pa.string()),
        ("vocab_hash", pa.string()),
    ]
)

STATS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("method", pa.string()),
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("pixel_count", pa.int64()),
        ("fraction", pa.float32()),
        ("bbox_xywh", pa.list_(pa.int32())),  # COCO order, as pycocotools toBbox
        ("score_mean", pa.float32()),
        ("score_max", pa.float32()),
        ("components", pa.int32()),
        ("rle_counts", pa.string()),  # COCO compressed RLE
        ("rle_size", pa.list_(pa.int32())),  # [height, width]
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("stage", pa.string()),  # one of STAGES
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("run_id", pa.string()),
    ]
)

SCHEMAS = {"masks": MASKS_SCHEMA, "stats": STATS_SCHEMA, "errors": ERRORS_SCHEMA}
TABLES = tuple(SCHEMAS)
STAGES = ("list", "read", "decode", "model", "encode")

# What the actor computes per (image, method) and per (image, method, class); the driver adds uri and
# the run columns. Field order follows the output tables.
_MASK_ITEM = pa.struct([f for f in MASKS_SCHEMA if f.name not in ("uri", "run_id", "model", "vocab_hash")])
_STAT_ITEM = pa.struct([f for f in STATS_SCHEMA if f.name != "uri"])

RESULT_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("unit_id", pa.string()),
        ("stage", pa.string()),  # null when the image was segmented
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("masks", pa.list_(_MASK_ITEM)),  # one item per method; empty for an error row
        ("stats", pa.list_(_STAT_ITEM)),  # one item per (method, class present)
    ]
)
MASK_FIELDS = tuple(_MASK_ITEM.field(i).name for i in range(_MASK_ITEM.num_fields))
STAT_FIELDS = tuple(_STAT_ITEM.field(i).name for i in range(_STAT_ITEM.num_fields))


def error_result(uri: str, unit_id: str, stage: str, exc: BaseException | str, error_type: str | None = None) -> dict:
    """A RESULT_SCHEMA row for an input that failed at `stage` (the message names the reason)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    message = str(exc) if str(exc) else repr(exc)
    return {
        "uri": uri,
        "unit_id": unit_id,
        "stage": stage,
        "error_type": error_type or (type(exc).__name__ if isinstance(exc, BaseException) else "Error"),
        "message": message[:4000],
        "masks": [],
        "stats": [],
    }


def results_to_table(rows: list[dict]) -> pa.Table:
    """RESULT_SCHEMA rows (dicts) -> a pyarrow Table with exactly RESULT_SCHEMA."""
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def split_results(results: pa.Table, run_id: str, model: str, vocab_hash: str) -> dict[str, pa.Table]:
    """Flattens RESULT_SCHEMA rows into the three output tables (exact schemas, in input row order)."""
    rows = results.to_pylist()
    masks, stats, errors = [], [], []
    for row in rows:
        if row["stage"] is not None:
            errors.append(
                {
                    "uri": row["uri"],
                    "stage": row["stage"],
                    "error_type": row["error_type"],
                    "message": row["message"],
                    "run_id": run_id,
                }
            )
            continue
        for item in row["masks"]:
            masks.append({"uri": row["uri"], **item, "run_id": run_id, "model": model, "vocab_hash": vocab_hash})
        for item in row["stats"]:
            stats.append({"uri": row["uri"], **item})
    return {
        "masks": pa.Table.from_pylist(masks, schema=MASKS_SCHEMA),
        "stats": pa.Table.from_pylist(stats, schema=STATS_SCHEMA),
        "errors": pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA),
    }


@dataclass(frozen=True)
class TableSet:
    """A job's output tables, as the unit writer and the commit markers see them.

    ``schemas``: table name -> exact Arrow schema (one Parquet file per unit and table); it must hold an
    ``errors`` table with a ``stage`` column. ``split(results, run_id, model, run_hash)`` flattens the
    actors' result rows of one unit into those tables. ``key_column``: the result column naming the
    work item (what commit markers list). ``row_counters``: table -> the ``UnitWriter.counts`` key that
    counts its rows. ``item_name``: what a work item is called in progress logs.
    """

    schemas: Mapping[str, pa.Schema]
    split: Callable[[pa.Table, str, str, str], dict[str, pa.Table]]
    key_column: str = "uri"
    row_counters: Mapping[str, str] = field(default_factory=dict)
    item_name: str = "images"


SEGMENT_TABLES = TableSet(SCHEMAS, split_results, "uri", {"masks": "mask_rows", "stats": "stats_rows"}, "images")
