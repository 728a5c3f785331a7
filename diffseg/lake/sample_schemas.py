"""Arrow schemas of ``jobs.synthesize``'s output tables and of its actor's result rows.

Under OUTPUT, two Parquet datasets (docs/synthesize.md shows how to load them as a training set):

- ``samples/``: one row per generated (class, seed): the image and its mask as PNG bytes, what produced
  them, and the mask's statistics (those of ``diffseg.codecs.masks.compute_class_stats``, flattened);
- ``errors/``: one row per (class, seed) that could not be generated or encoded.

The actor returns one :data:`SYNTH_RESULT_SCHEMA` row per work item (sample columns null on an error
row); the driver splits a unit's rows into the two tables with :func:`split_samples`.
"""

from __future__ import annotations

import pyarrow as pa

from diffseg.lake.schemas import TableSet

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
        ("run_id", pa.string()),
    ]
)

SYNTH_SCHEMAS = {"samples": SAMPLES_SCHEMA, "errors": SYNTH_ERRORS_SCHEMA}
SYNTH_STAGES = ("model", "encode")

# Sample columns the actor fills (the driver adds model and run_id).
_ITEM_FIELDS = [f for f in SAMPLES_SCHEMA if f.name not in ("model", "run_id")]

SYNTH_RESULT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # "class\tseed": the work item
        ("unit_id", pa.string()),
        ("stage", pa.string()),  # null when the sample was generated
        ("error_type", pa.string()),
        ("message", pa.string()),
        *_ITEM_FIELDS,
    ]
)


def synth_error(key: str, unit_id: str, class_name: str, class_id: int, seed: int, stage: str,
                exc: BaseException | str) -> dict:
    """A SYNTH_RESULT_SCHEMA row for a work item that failed at `stage` ("model" or "encode")."""
    if stage not in SYNTH_STAGES:
        raise ValueError(f"stage {stage!r} is not one of {', '.join(SYNTH_STAGES)}")
    text = str(exc) if str(exc) else repr(exc)
    message = f"{type(exc).__name__}: {text}" if isinstance(exc, BaseException) else text
    return {
        "key": key,
        "unit_id": unit_id,
        "stage": stage,
        "error_type": type(exc).__name__ if isinstance(exc, BaseException) else "Error",
        "message": message[:4000],
        "class_name": class_name,
        "class_id": class_id,
        "seed": seed,
    }


def results_to_table(rows: list[dict]) -> pa.Table:
    """SYNTH_RESULT_SCHEMA rows (dicts; missing columns are null) -> a pyarrow Table."""
    return pa.Table.from_pylist(rows, schema=SYNTH_RESULT_SCHEMA)


def split_samples(results: pa.Table, run_id: str, model: str, run_hash: str = "") -> dict[str, pa.Table]:
    """A unit's SYNTH_RESULT_SCHEMA rows -> {"samples": ..., "errors": ...} with exact schemas."""
    samples, errors = [], []
    for row in results.to_pylist():
        if row["stage"] is not None:
            errors.append({k: row[k] for k in SYNTH_ERRORS_SCHEMA.names if k != "run_id"} | {"run_id": run_id})
        else:
            samples.append({f.name: row[f.name] for f in _ITEM_FIELDS} | {"model": model, "run_id": run_id})
    return {
        "samples": pa.Table.from_pylist(samples, schema=SAMPLES_SCHEMA),
        "errors": pa.Table.from_pylist(errors, schema=SYNTH_ERRORS_SCHEMA),
    }


SYNTH_TABLES = TableSet(SYNTH_SCHEMAS, split_samples, "key", {"samples": "sample_rows"}, "samples")
