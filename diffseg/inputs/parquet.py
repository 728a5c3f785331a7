"""Parquet files whose rows carry image bytes (the ``parquet`` form): Hugging Face datasets and
img2dataset's Parquet output.

INPUT is one ``.parquet`` file, a folder or prefix of them (recursive: a Hugging Face dataset folder
such as ``data/train-00000-of-00004.parquet``; other files are ignored), or a glob. Arrow IPC files
(``.arrow``: a folder written by ``datasets.Dataset.save_to_disk``) are read the same way, as one stream
each, with no row groups and no count before reading. Each file is one source;
:func:`diffseg.inputs.source.split_source` cuts a Parquet file into its row groups (counts from the footer).

Which columns (``--input-format parquet:image=COL,key=COL``; otherwise detected in this order):

- the image: the column Hugging Face's metadata declares an ``Image()`` feature (stored as
  ``struct<bytes: binary, path: string>``); else the one struct column with a binary ``bytes`` field,
  or the one binary column named like an image extension (img2dataset's ``jpg``; ``png``, ``webp``...)
  or ``image``/``img``; else the one binary column. None, or several: InputError naming the columns found.
- the key: a ``key`` (img2dataset) or ``__key__`` column when there is one, else the row index in the
  file (``...parquet#000000017``).

A file is read row group by row group with sequential reads of its column chunks (pyarrow through one
fsspec file with a large read-ahead block: a few requests per row group, never one per image). Bad rows
are error items: a null key or a key repeated in the file (``MemberError``, stage list), no image bytes
(``NoImageError``, stage decode; a struct with only a ``path``, as Hugging Face stores images it did not
embed, says so), bytes above the byte cap (``ReadLimitError``); a file or row group that cannot be read
ends its source with an error at ``<file>#@<row>``.
"""

from __future__ import annotations

import json

from diffseg.codecs.images import IMAGE_EXTENSIONS
from diffseg.inputs.errors import InputError, MemberError, NoImageError
from diffseg.inputs.files import files_named
from diffseg.inputs.read import DEFAULT_LIMITS, ReadLimits, open_stream, timed_out, too_large, with_timeout
from diffseg.inputs.source import (
    DEFAULT_OPTIONS,
    InputOptions,
    Item,
    Source,
    error_item,
    member_identity,
    position_identity,
    row_key,
)
from diffseg.inputs.uri import exact_fs, invalidate, redact

TABLE_SUFFIXES = (".parquet", ".arrow")  # .arrow: Arrow IPC streams, as datasets.save_to_disk writes
KEY_COLUMNS = ("key", "__key__")  # img2dataset, and webdataset-style keys kept as a column
IMAGE_NAMES = ("image", "img", *(e.lstrip(".") for e in IMAGE_EXTENSIONS))
BATCH_ROWS = 64  # rows decoded from Arrow to Python at a time


def is_table(path: str) -> bool:
    """True when `path` names a Parquet file by its extension (any case)."""
    return path.lower().endswith(TABLE_SUFFIXES)


def list_tables(spec: str, options: InputOptions = DEFAULT_OPTIONS,
                found: dict[str, dict] | None = None) -> list[Source]:
    """The Parquet files INPUT `spec` names, sorted, one Source each. InputError when there is none, or
    when the first has no image column (the message names its columns)."""
    try:
        fs, path = exact_fs(spec)
        invalidate(fs)
        uris = sorted(set(files_named(spec, fs, path, TABLE_SUFFIXES, found)))
    except FileNotFoundError as exc:
        raise InputError(f"INPUT {redact(spec)!r} does not exist ({redact(exc)})") from exc
    except Exception as exc:
        raise InputError(f"INPUT {redact(spec)!r} cannot be listed: {type(exc).__name__}: {redact(exc)}") from exc
    if not uris:
        raise InputError(f"INPUT {redact(spec)!r} holds no Parquet or Arrow files ({', '.join(TABLE_SUFFIXES)})")
    columns(read_schema(uris[0]), options, uris[0])  # the first file says now if its columns are not found
    return [Source(u, "parquet", options=options) for u in uris]


def is_arrow(uri: str) -> bool:
    """True when `uri` is an Arrow IPC file (``.arrow``) rather than Parquet."""
    return uri.lower().endswith(".arrow")


def _arrow_reader(f):
    """A record batch reader of an Arrow IPC stream (datasets.save_to_disk) or file."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(f)
    except pa.ArrowInvalid:
        f.seek(0)
        return pa.ipc.open_file(f)


def read_schema(uri: str):
    """The Arrow schema of table file `uri` (a Parquet footer, or an Arrow stream's first message);
    InputError when it is neither."""
    import pyarrow.parquet as pq

    try:
        with open_stream(uri, block_size=1 << 20) as f:
            return _arrow_reader(f).schema if is_arrow(uri) else pq.ParquetFile(f).schema_arrow
    except Exception as exc:
        kind = "Arrow IPC" if is_arrow(uri) else "Parquet"
        raise InputError(f"{redact(uri)!r} cannot be read as {kind}: {type(exc).__name__}: {redact(exc)}") from exc


def table_row_groups(uri: str) -> list[tuple[int, int]] | None:
    """(first row, rows) of each row group of Parquet file `uri`, from its footer; None for an Arrow
    stream (its row count is only known by reading it)."""
    import pyarrow.parquet as pq

    if is_arrow(uri):
        return None
    with open_stream(uri, block_size=1 << 20) as f:
        meta = pq.ParquetFile(f).metadata
    out, start = [], 0
    for i in range(meta.num_row_groups):
        rows = meta.row_group(i).num_rows
        out.append((start, rows))
        start += rows
    return out


def hf_image_columns(schema) -> list[str]:
    """Columns that Hugging Face's schema metadata declares as ``Image()`` features."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return []
    try:
        features = json.loads(raw).get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return []
    return [name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"]


def _is_binary(t) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _is_bytes_struct(t) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and _is_binary(t.field("bytes").type)


def has_image_column(schema) -> bool:
    """True when `schema` has a column that can hold image bytes (what format detection asks)."""
    return bool(hf_image_columns(schema)) or any(_is_binary(f.type) or _is_bytes_struct(f.type) for f in schema)


def describe_columns(schema) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema) or "no columns"


def columns(schema, options: InputOptions, uri: str) -> tuple[str, str | None]:
    """(image column, key column or None) of a table with `schema` (see the module docstring)."""
    names = schema.names
    fix = "name it with --input-format parquet:image=COLUMN (binary, or struct<bytes, path> as Hugging Face's Image())"
    if options.image is not None:
        if options.image not in names:
            raise InputError(f"{redact(uri)!r} has no column {options.image!r}; its columns: {describe_columns(schema)}")
        t = schema.field(options.image).type
        if not (_is_binary(t) or _is_bytes_struct(t)):
            raise InputError(f"column {options.image!r} of {redact(uri)!r} is {t}, not image bytes (binary, or "
                             "struct<bytes, path>)")
        image = options.image
    else:
        found = [c for c in hf_image_columns(schema) if c in names]
        if not found:
            found = [f.name for f in schema if _is_bytes_struct(f.type)
                     or (_is_binary(f.type) and f.name.lower() in IMAGE_NAMES)]
        if not found:
            found = [f.name for f in schema if _is_binary(f.type)]
        if len(found) != 1:
            what = f"several image columns ({', '.join(found)})" if found else "no image column"
            raise InputError(f"{redact(uri)!r} has {what}; its columns: {describe_columns(schema)}: {fix}")
        image = found[0]
    if options.key is not None:
        if options.key not in names:
            raise InputError(f"{redact(uri)!r} has no key column {options.key!r}; its columns: "
                             f"{describe_columns(schema)}")
        return image, options.key
    return image, next((k for k in KEY_COLUMNS if k in names), None)


def read_table_source(source: Source, limits: ReadLimits = DEFAULT_LIMITS):
    """The items of table source `source`, row by row (see the module docstring); never raises. A row
    group whose next rows take longer than ``limits.timeout`` ends the source with a ReadLimitError item."""
    state = {"row": 0}

    def stalled() -> Item:
        return error_item(position_identity(source.id, state["row"]), timed_out(source.id, limits.timeout))

    return with_timeout(_table_items(source, limits, state), limits.timeout, stalled)


def _table_items(source: Source, limits: ReadLimits, state: dict):
    uri, options = source.id, source.options
    try:
        handle = open_stream(uri)
    except Exception as exc:
        yield error_item(position_identity(uri, 0), exc)
        return
    seen: set[str] = set()
    with handle:
        try:
            for row, batch, image, key in _batches(handle, source, options, state):
                yield from _batch_items(uri, batch, image, key, options, limits, row, seen)
        except Exception as exc:
            yield error_item(position_identity(uri, state["row"]), exc)


def _batches(handle, source: Source, options: InputOptions, state: dict):
    """(first row, record batch of at most BATCH_ROWS rows, image column, key column) of the source's
    row groups (Parquet) or of the whole stream (Arrow), reading only the columns needed."""
    import pyarrow.parquet as pq

    if is_arrow(source.id):
        reader = _arrow_reader(handle)
        image, key = columns(reader.schema, options, source.id)
        for big in reader:
            for start in range(0, big.num_rows, BATCH_ROWS):
                batch = big.slice(start, BATCH_ROWS)
                yield state["row"], batch, image, key
                state["row"] += batch.num_rows
        return
    pf = pq.ParquetFile(handle)
    image, key = columns(pf.schema_arrow, options, source.id)
    read = pf.schema_arrow.names if options.metadata else [image] + ([key] if key else [])
    starts, start = [], 0
    for i in range(pf.metadata.num_row_groups):
        starts.append(start)
        start += pf.metadata.row_group(i).num_rows
    for g in range(pf.metadata.num_row_groups) if source.row_groups is None else source.row_groups:
        state["row"] = starts[g]
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g], columns=read):
            yield state["row"], batch, image, key
            state["row"] += batch.num_rows


def _batch_items(uri: str, batch, image: str, key: str | None, options: InputOptions, limits: ReadLimits,
                 first_row: int, seen: set[str]):
    cells = batch.column(image)
    paths = None
    if _is_bytes_struct(cells.type):
        if cells.type.get_field_index("path") >= 0:
            paths = cells.field("path").to_pylist()
        cells = cells.field("bytes")
    data = cells.to_pylist()
    keys = batch.column(key).to_pylist() if key else None
    others = None
    if options.metadata:
        others = {n: batch.column(n).to_pylist() for n in batch.schema.names if n not in (image, key)}
    for j, value in enumerate(data):
        row = first_row + j
        if keys is None:
            identity = member_identity(uri, row_key(row))
        else:
            k = keys[j]
            if k is None or str(k) == "":
                yield error_item(position_identity(uri, row),
                                 MemberError(f"row {row} of {uri!r} has no key (column {key!r} is empty)"))
                continue
            k = str(k)
            if k in seen:
                yield error_item(position_identity(uri, row, k),
                                 MemberError(f"row {row} of {uri!r} repeats the key {k!r} of an earlier row"))
                continue
            seen.add(k)
            identity = member_identity(uri, k)
        if not value:
            path = paths[j] if paths else None
            why = f" (only a path, {path!r}: list such images as loose files)" if path else ""
            yield error_item(identity, NoImageError(f"row {row} of {uri!r} has no image bytes in column {image!r}{why}"))
            continue
        if len(value) > limits.max_bytes:
            yield error_item(identity, too_large(identity, limits.max_bytes))
            continue
        metadata = None
        if others is not None:
            metadata = {n: v[j] for n, v in others.items()}
            if paths is not None:
                metadata[f"{image}.path"] = paths[j]
        yield Item(identity, value, metadata=metadata)
