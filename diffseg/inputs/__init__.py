"""Reading the lakes users have: listing INPUT and reading its images (the job's ``list`` and ``read``
stages), one module per input form, apart from the output's commit layer (diffseg.lake).

Forms (``--input-format``; ``auto`` detects them, :mod:`~diffseg.inputs.detect`):

- ``files`` (:mod:`~diffseg.inputs.files`): loose image files: a folder, prefix, glob, or a .txt/.parquet
  manifest of URIs;
- ``webdataset`` (:mod:`~diffseg.inputs.webdataset`): tar shards (a folder, glob or brace list of them);
- ``parquet`` (:mod:`~diffseg.inputs.parquet`): Parquet files (Hugging Face datasets, img2dataset)
  whose rows carry image bytes;
- ``inventory`` (:mod:`~diffseg.inputs.inventory`): an S3 Inventory manifest.json (its objects are loose files).

The contract (:mod:`~diffseg.inputs.source`; docs/inputs.md):

- ``list_input(spec, input_format) -> Listing``: the form and its listing: loose files as a stream of
  Arrow batches of URIs (``batches()``, bounded memory) or a sorted unique Arrow array (``uris``, built
  on first use), containers as sources. ``list_sources(spec, input_format) -> list[Source]``: the same as
  sources (a loose file is one source). Raises InputError: missing, empty or ambiguous INPUT (the job
  exits 2; the message names ``--input-format`` when the form is ambiguous).
- ``read_source(source, limits) -> Iterator[Item]``: the images of one source in stored order, read front
  to back (one request stream per shard or table file, never one request per image). An Item has an
  ``identity`` (a loose file's URI, or ``<container URI>#<key>``: source.py's docstring), ``data`` (the
  encoded bytes) or ``error`` (``ItemError``: the job's (stage, error_type, message) and whether it is
  retryable), and ``metadata`` when asked. It never raises: every failure is an error item.
- ``count_members(source)``: its images when known without reading it (a loose file 1, a table file
  from its footer; a shard None); ``split_source(source)``: a table file's row groups as sources.
- ``read_uris(uris, max_bytes, timeout)``: loose files' bytes, many at a time (:mod:`~diffseg.inputs.read`).
"""

from diffseg.inputs.detect import Listing, list_input
from diffseg.inputs.errors import (
    InputError,
    MemberError,
    NoImageError,
    NonUtf8NameError,
    NotRegularFileError,
    ReadLimitError,
)
from diffseg.inputs.files import list_inputs, list_inputs_array
from diffseg.inputs.read import READ_MAX_BYTES, READ_TIMEOUT_S, ReadLimits, read_uris
from diffseg.inputs.source import (
    FORMATS,
    InputOptions,
    Item,
    ItemError,
    Source,
    count_members,
    list_sources,
    parse_format,
    read_source,
    split_source,
)
from diffseg.inputs.uri import escape_name, exact_fs, full_uri, open_exact, unescape_name

__all__ = [
    "FORMATS", "READ_MAX_BYTES", "READ_TIMEOUT_S", "InputError", "InputOptions", "Item", "ItemError", "Listing",
    "MemberError", "NoImageError", "NonUtf8NameError", "NotRegularFileError", "ReadLimitError", "ReadLimits",
    "Source", "count_members", "escape_name", "exact_fs", "full_uri", "list_input", "list_inputs",
    "list_inputs_array", "list_sources", "open_exact", "parse_format", "read_source", "read_uris", "split_source",
    "unescape_name",
]
