"""The one small interface the job consumes: sources, items, identities and the input format.

A **source** is what one read stream covers: a loose file, a WebDataset shard, a Parquet (or Hugging
Face) table file or some of its row groups. Reading a source gives **items**: one per image, each with
its identity, its encoded bytes or the error that stopped it, and (when asked) its metadata.

Identities (the ``uri`` of every output table, error row and the done index):

- a loose file: its canonical URI (``file:///lake/a.jpg``, ``s3://b/a.jpg``; diffseg.inputs.files);
- an image inside a container (a shard or a table file): ``<container URI>#<key>``, the shard's sample
  key (``s3://b/shards/00012.tar#000123``) or the row's key (``s3://b/data/train-00000.parquet#abc``),
  or the row index when the table has no key column (``...parquet#000000017``, 9 digits or more);
- what has no key of its own, at a position of its container: ``<container URI>#<name>@<position>``:
  a member without a key or repeating one (``...00012.tar#README@1536``, ``...00012.tar#000123.jpg@9216``:
  byte offset of its tar header), a row without a key or repeating one (``...parquet#@17``,
  ``...parquet#abc@40``: row index), and a container that cannot be read from some position on
  (``...00012.tar#@0``: missing; ``...00012.tar#@51200``: corrupt from byte 51,200 on; the items before
  it are read as usual).

A member identity is the container's URI, ``#``, then text: containers are named with their URI, so the
identities of one container sort together (``#`` sorts before every character a URI continues with but
``!``, ``"``, space and control characters), in key order. A loose-file URI can only spell the same
string if a file is named after a container plus ``#key`` (``00012.tar#000123``) and listed as a loose
file by a glob or a manifest; a folder listing never lists one (a member identity never ends with an
image extension: a WebDataset key stops at the first dot of the name, and a table's key column is the
user's choice). A run's INPUT is one form, so its done index never mixes the two.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from diffseg.inputs.errors import InputError
from diffseg.inputs.read import DEFAULT_LIMITS, ReadLimits

FORMATS = ("auto", "files", "webdataset", "parquet", "inventory")
"""``--input-format`` choices: ``auto`` detects the form from INPUT's name and contents."""

ROW_INDEX_DIGITS = 9  # a row index as a key: zero-padded to 9 digits (more when it needs more), as img2dataset's keys


@dataclass(frozen=True)
class InputOptions:
    """How a container form is read (``--input-format FORM:image=COL,key=COL,metadata=1``)."""

    image: str | None = None  # webdataset: the image member's extension (jpg); parquet: the image column
    # (binary, or a struct with a binary `bytes` field: Hugging Face Image()); None: detected (see the forms)
    key: str | None = None  # parquet: the key column; None: `key` or `__key__` when present, else the row index
    metadata: bool = False  # keep sidecars (webdataset: .json, .txt...) or the other columns (parquet) per item


DEFAULT_OPTIONS = InputOptions()


@dataclass(frozen=True)
class Source:
    """One read stream: a loose file, a shard, or a table file (all its row groups, or `row_groups`)."""

    id: str  # the object's canonical URI (a shard's, a table file's, a loose file's)
    form: str  # "files", "webdataset" or "parquet"
    count: int | None = None  # images in it when known without reading it (a loose file: 1; a table: after count_members)
    row_groups: tuple[int, ...] | None = None  # parquet: the row groups this source reads (None: every one)
    options: InputOptions = field(default_factory=InputOptions)


@dataclass(frozen=True)
class ItemError:
    """Why an item has no image bytes: the job's error row (stage, error_type, message) and whether
    reading again may succeed."""

    stage: str  # list, read or decode (diffseg.lake.schemas.STAGES)
    error_type: str  # the exception's class name
    message: str
    retryable: bool = False

    def as_tuple(self) -> tuple[str, str, str]:
        return self.stage, self.error_type, self.message


@dataclass(frozen=True)
class Item:
    """One image of a source: its identity, and its encoded bytes or the error that stopped it."""

    identity: str
    data: bytes | None = None  # the encoded image (JPEG, PNG...) as stored; None when `error` is set
    error: ItemError | None = None
    metadata: Mapping[str, object] | None = None  # sidecars or other columns, when InputOptions.metadata


def member_identity(container: str, key: str) -> str:
    """The identity of the image `key` of `container` (see the module docstring)."""
    return f"{container}#{key}"


def position_identity(container: str, position: int, name: str = "") -> str:
    """The identity of what has no key of its own at `position` of `container` (see the module docstring)."""
    return f"{container}#{name}@{position}"


def row_key(index: int) -> str:
    """A row index as a key (zero-padded to ROW_INDEX_DIGITS digits, so keys sort as rows do)."""
    return f"{index:0{ROW_INDEX_DIGITS}d}"


def error_item(identity: str, exc: BaseException, what: str | None = None) -> Item:
    """An item whose read stopped with `exc` (stage from the exception, ``read`` by default; the message
    redacted and prefixed as the job's read errors are: ``cannot read '<what>': Type: text``)."""
    from diffseg.inputs.read import transient
    from diffseg.redact import describe_error

    what = identity if what is None else what
    return Item(identity, error=ItemError(getattr(exc, "stage", "read"), type(exc).__name__,
                                          f"cannot read {what!r}: {describe_error(exc, [what])}", transient(exc)))


def parse_format(value: str) -> tuple[str, InputOptions]:
    """``FORM[:image=X,key=Y,metadata=1]`` -> (form, options); InputError naming the bad part."""
    form, _, rest = value.partition(":")
    form = form.strip().lower()
    if form not in FORMATS:
        raise InputError(f"--input-format {value!r}: the form must be one of {', '.join(FORMATS)}")
    options = InputOptions()
    for part in filter(None, (p.strip() for p in rest.split(","))):
        name, eq, val = part.partition("=")
        name, val = name.strip(), val.strip()
        if not eq or name not in ("image", "key", "metadata") or not val:
            raise InputError(f"--input-format {value!r}: {part!r} is not one of image=NAME, key=COLUMN, metadata=1")
        if name == "metadata":
            if val.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise InputError(f"--input-format {value!r}: metadata={val!r} must be 1 or 0")
            options = replace(options, metadata=val.lower() in ("1", "true", "yes"))
        else:
            options = replace(options, **{name: val})
    if options.key is not None and form not in ("parquet", "auto"):
        raise InputError(f"--input-format {value!r}: key= names a column of a table (parquet form only)")
    return form, options


def list_sources(spec: str, input_format: str = "auto") -> list[Source]:
    """The sources of INPUT `spec` in `input_format` (``auto`` detects it: diffseg.inputs.detect), sorted
    by id. Loose files are one source each (for a lake of loose files, plan from ``list_input(...).uris``,
    an Arrow array, instead). Raises InputError (missing, empty, or ambiguous INPUT: the message names
    ``--input-format``)."""
    from diffseg.inputs.detect import list_input

    listing = list_input(spec, input_format)
    if listing.form == "files":
        return [Source(u, "files", 1) for u in listing.uris.to_pylist()]
    return list(listing.sources)


def read_source(source: Source, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[Item]:
    """The items of `source`, in the order stored, read front to back (one request stream per shard or
    table file, never one per image). Every failure is an item error; nothing is raised."""
    if source.form == "files":
        from diffseg.inputs.read import read_uris

        value = read_uris([source.id], limits.max_bytes, limits.timeout)[source.id]
        yield error_item(source.id, value) if isinstance(value, Exception) else Item(source.id, value)
    elif source.form == "webdataset":
        from diffseg.inputs.webdataset import read_shard

        yield from read_shard(source, limits)
    elif source.form == "parquet":
        from diffseg.inputs.parquet import read_table_source

        yield from read_table_source(source, limits)
    else:
        raise ValueError(f"source form {source.form!r} is not one of files, webdataset, parquet")


def count_members(source: Source) -> int | None:
    """Images in `source` when known without reading it: a loose file 1, a Parquet file its rows (one
    footer read), a shard or an Arrow stream None (only reading it tells)."""
    if source.count is not None or source.form == "webdataset":
        return source.count
    from diffseg.inputs.parquet import table_row_groups

    groups = table_row_groups(source.id)
    if groups is None:  # an Arrow stream
        return None
    return sum(n for i, (_, n) in enumerate(groups) if source.row_groups is None or i in source.row_groups)


def split_source(source: Source) -> list[Source]:
    """`source` as several smaller ones when its form allows it without reading it (a Parquet file: one
    per row group, each with its row count; one footer read); otherwise ``[source]``."""
    if source.form != "parquet":
        return [source]
    from diffseg.inputs.parquet import table_row_groups

    groups = table_row_groups(source.id)
    if groups is None:  # an Arrow stream has no row groups to start at
        return [source]
    wanted = range(len(groups)) if source.row_groups is None else source.row_groups
    return [replace(source, row_groups=(i,), count=groups[i][1]) for i in wanted]
