"""Arrow schemas of both jobs' output tables (DESIGN.md "Output tables") and of their actors' result rows.

``jobs.segment`` writes three Parquet datasets under OUTPUT:

- ``masks/``: one row per (image, method);
- ``stats/``: one row per (image, method, class present);
- ``errors/``: one row per input that could not be processed.

``jobs.synthesize`` writes two (docs/synthesize.md shows how to load them as a training set):

- ``samples/``: one row per generated (class, seed): the image and its mask as PNG bytes, what produced
  them, and the mask's statistics (those of ``diffseg.codecs.stats.compute_class_stats``, flattened);
- ``errors/``: one row per (class, seed) that could not be generated or encoded.

An actor returns one result row per work item (:data:`RESULT_SCHEMA`: an image's mask and statistics
rows nested in list columns; :data:`SYNTH_RESULT_SCHEMA`: a sample's columns, null on an error row), so
an item's rows always travel together and a unit is complete when every one of its items has arrived;
the driver splits a unit's result rows into the job's tables (:func:`split_results`, :func:`split_samples`).

:class:`TableSet` bundles what the shared exactly-once machinery (diffseg.lake.units, diffseg.lake.writer)
needs to know about a job's tables: :data:`SEGMENT_TABLES` and :data:`SYNTH_TABLES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa

# Every table ends with these: the invocation whose worker wrote the row (the manifest history and the
# run's log name its host, start and outcome) and when (UTC). The row becomes visible when the driver
# commits its unit, within seconds after; the commit time itself is in the run's log (diffseg.lake.log).
WRITE_COLUMNS = [("invocation", pa.string()), ("written_at", pa.timestamp("ms", tz="UTC"))]
WRITE_NAMES = tuple(name for name, _ in WRITE_COLUMNS)

MASKS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("method", pa.string()),
        ("label_map_png", pa.binary()),  # uint8 PNG label map (uint16 beyond 255 classes) at the argmax size (<= 1024 px
        # on the long side); width/height are the photo's: diffseg.codecs.masks.decode_label_map gives it at that size
        ("classes", pa.list_(pa.string())),  # classes present in the label map
        ("scores_png", pa.binary()),  # optional (--save-scores): (1+K) x h x w uint8 scores as a tall grey PNG
        ("run_id", pa.string()),
        ("model", pa.string()),
        ("vocab_hash", pa.string()),
        *WRITE_COLUMNS,
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
        ("run_id", pa.string()),  # the run columns, as in masks
        ("model", pa.string()),
        ("vocab_hash", pa.string()),
        *WRITE_COLUMNS,
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("stage", pa.string()),  # one of STAGES
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("retryable", pa.bool_()),  # a transient cause (network, throttling, credentials, memory, device): retried
        ("run_id", pa.string()),
        ("model", pa.string()),
        ("vocab_hash", pa.string()),
        *WRITE_COLUMNS,
    ]
)

SCHEMAS = {"masks": MASKS_SCHEMA, "stats": STATS_SCHEMA, "errors": ERRORS_SCHEMA}
TABLES = tuple(SCHEMAS)
STAGES = ("list", "read", "decode", "model", "encode")

# What the actor computes per (image, method) and per (image, method, class); the driver adds uri and
# the run columns. Field order follows the output tables.
RUN_COLUMNS = ("run_id", "model", "vocab_hash", *WRITE_NAMES)
_MASK_ITEM = pa.struct([f for f in MASKS_SCHEMA if f.name not in ("uri", *RUN_COLUMNS)])
_STAT_ITEM = pa.struct([f for f in STATS_SCHEMA if f.name not in ("uri", *RUN_COLUMNS)])

RESULT_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("unit_id", pa.string()),
        ("stage", pa.string()),  # null when the image was segmented
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("retryable", pa.bool_()),  # error rows: whether a later invocation retries it (diffseg.lake.faults)
        ("masks", pa.list_(_MASK_ITEM)),  # one item per method; empty for an error row
        ("stats", pa.list_(_STAT_ITEM)),  # one item per (method, class present)
    ]
)
MASK_FIELDS = tuple(_MASK_ITEM.field(i).name for i in range(_MASK_ITEM.num_fields))
STAT_FIELDS = tuple(_STAT_ITEM.field(i).name for i in range(_STAT_ITEM.num_fields))


def error_result(uri: str, unit_id: str, stage: str, exc: BaseException | str, error_type: str | None = None,
                 retryable: bool | None = None) -> dict:
    """A RESULT_SCHEMA row for an input that failed at `stage` (the message names the reason). `retryable`:
    None classifies it (diffseg.lake.faults.is_retryable)."""
    from diffseg.lake.faults import is_retryable

    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    message = str(exc) if str(exc) else repr(exc)
    error_type = error_type or (type(exc).__name__ if isinstance(exc, BaseException) else "Error")
    return {
        "uri": uri,
        "unit_id": unit_id,
        "stage": stage,
        "error_type": error_type,
        "message": message[:4000],
        "retryable": is_retryable(stage, error_type, message) if retryable is None else bool(retryable),
        "masks": [],
        "stats": [],
    }


def results_to_table(rows: list[dict], schema: pa.Schema = RESULT_SCHEMA) -> pa.Table:
    """Result rows (dicts; missing columns are null) -> a pyarrow Table with exactly `schema`."""
    return pa.Table.from_pylist(rows, schema=schema)


def split_results(results: pa.Table, run_id: str, model: str, vocab_hash: str) -> dict[str, pa.Table]:
    """Flattens RESULT_SCHEMA rows into the three output tables (exact schemas, in input row order)."""
    rows = results.to_pylist()
    run = {"run_id": run_id, "model": model, "vocab_hash": vocab_hash}
    masks, stats, errors = [], [], []
    for row in rows:
        if row["stage"] is not None:
            errors.append({"uri": row["uri"], "stage": row["stage"], "error_type": row["error_type"],
                           "message": row["message"], "retryable": bool(row.get("retryable")), **run})
            continue
        for item in row["masks"]:
            masks.append({"uri": row["uri"], **item, **run})
        for item in row["stats"]:
            stats.append({"uri": row["uri"], **item, **run})
    return {
        "masks": pa.Table.from_pylist(masks, schema=MASKS_SCHEMA),
        "stats": pa.Table.from_pylist(stats, schema=STATS_SCHEMA),
        "errors": pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA),
    }


# jobs.synthesize

SAMPLES_SCHEMA = pa.schema(
    [
        ("image_png", pa.binary()),  # (height, width, 3) uint8 RGB image, PNG
        ("mask_png", pa.binary()),  # (height, width) uint8 label map PNG: 1 = the class, 0 = background
        ("class_name", pa.string()),
        ("class_id", pa.int32()),  # 1-based position of the class in --classes (0 stays background)
        ("prompt", pa.string()),  # the text the image was generated from
        ("seed", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("pixel_count", pa.int64()),  # mask pixels of the class (0: an empty mask)
        ("fraction", pa.float32()),  # pixel_count / (width * height)
        ("bbox_xywh", pa.list_(pa.int32())),  # COCO order, as pycocotools toBbox; [0, 0, 0, 0] when empty
        ("components", pa.int32()),  # 8-connected components of the mask
        ("rle_counts", pa.string()),  # COCO compressed RLE of the mask
        ("rle_size", pa.list_(pa.int32())),  # [height, width]
        ("model", pa.string()),
        ("run_id", pa.string()),
        *WRITE_COLUMNS,
    ]
)

SYNTH_ERRORS_SCHEMA = pa.schema(
    [
        ("class_name", pa.string()),
        ("class_id", pa.int32()),
        ("seed", pa.int64()),
        ("stage", pa.string()),  # one of SYNTH_STAGES
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("retryable", pa.bool_()),
        ("run_id", pa.string()),
        *WRITE_COLUMNS,
    ]
)

SYNTH_SCHEMAS = {"samples": SAMPLES_SCHEMA, "errors": SYNTH_ERRORS_SCHEMA}
SYNTH_STAGES = ("model", "encode")

# Sample columns the actor fills (the driver adds model and run_id).
_ITEM_FIELDS = [f for f in SAMPLES_SCHEMA if f.name not in ("model", "run_id", *WRITE_NAMES)]

SYNTH_RESULT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # "class\tseed": the work item
        ("unit_id", pa.string()),
        ("stage", pa.string()),  # null when the sample was generated
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("retryable", pa.bool_()),
        *_ITEM_FIELDS,
    ]
)


def synth_error(key: str, unit_id: str, class_name: str, class_id: int, seed: int, stage: str,
                exc: BaseException | str) -> dict:
    """A SYNTH_RESULT_SCHEMA row for a work item that failed at `stage` ("model" or "encode")."""
    from diffseg.lake.faults import is_retryable

    if stage not in SYNTH_STAGES:
        raise ValueError(f"stage {stage!r} is not one of {', '.join(SYNTH_STAGES)}")
    text = str(exc) if str(exc) else repr(exc)
    message = f"{type(exc).__name__}: {text}" if isinstance(exc, BaseException) else text
    error_type = type(exc).__name__ if isinstance(exc, BaseException) else "Error"
    return {
        "key": key,
        "unit_id": unit_id,
        "stage": stage,
        "error_type": error_type,
        "message": message[:4000],
        "retryable": is_retryable(stage, error_type, message),
        "class_name": class_name,
        "class_id": class_id,
        "seed": seed,
    }


def split_samples(results: pa.Table, run_id: str, model: str, run_hash: str = "") -> dict[str, pa.Table]:
    """A unit's SYNTH_RESULT_SCHEMA rows -> {"samples": ..., "errors": ...} with exact schemas."""
    samples, errors = [], []
    for row in results.to_pylist():
        if row["stage"] is not None:
            errors.append({k: row[k] for k in SYNTH_ERRORS_SCHEMA.names if k in row} | {"run_id": run_id})
        else:
            samples.append({f.name: row[f.name] for f in _ITEM_FIELDS} | {"model": model, "run_id": run_id})
    return {
        "samples": pa.Table.from_pylist(samples, schema=SAMPLES_SCHEMA),
        "errors": pa.Table.from_pylist(errors, schema=SYNTH_ERRORS_SCHEMA),
    }


@dataclass(frozen=True)
class TableSet:
    """A job's output tables, as the unit writer and the commit markers see them.

    ``schemas``: table name -> exact Arrow schema (one Parquet file per unit and table); it must hold an
    ``errors`` table with a ``stage`` column. ``result_schema``: the actors' result rows.
    ``split(results, run_id, model, run_hash)`` flattens the result rows of one unit into the tables.
    ``key_column``: the result column naming the work item (what commit markers list).
    ``row_counters``: table -> the ``UnitWriter.counts`` key that counts its rows. ``item_name``: what a
    work item is called in progress logs ("images", "samples").
    """

    schemas: Mapping[str, pa.Schema]
    result_schema: pa.Schema
    split: Callable[[pa.Table, str, str, str], dict[str, pa.Table]]
    key_column: str = "uri"
    row_counters: Mapping[str, str] = field(default_factory=dict)
    item_name: str = "items"

    def to_table(self, rows: list[dict]) -> pa.Table:
        """Result rows (dicts; missing columns are null) -> a pyarrow Table with exactly ``result_schema``."""
        return pa.Table.from_pylist(rows, schema=self.result_schema)


SEGMENT_TABLES = TableSet(SCHEMAS, RESULT_SCHEMA, split_results, "uri", {"masks": "mask_rows", "stats": "stats_rows"},
                          "images")
SYNTH_TABLES = TableSet(SYNTH_SCHEMAS, SYNTH_RESULT_SCHEMA, split_samples, "key", {"samples": "sample_rows"}, "samples")
