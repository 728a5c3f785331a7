"""Reading the lakes users have: listing INPUT and reading its images' bytes (the job's ``list`` and
``read`` stages), one module per input form, apart from the output's commit layer (diffseg.lake).

- :mod:`~diffseg.inputs.files`: loose image files (folder, prefix, glob, .txt/.parquet URI manifest);
- :mod:`~diffseg.inputs.read`: reading bytes with limits and retries;
- :mod:`~diffseg.inputs.uri`: one object per URI (no fsspec URL chaining), canonical URIs.
"""

from diffseg.inputs.errors import InputError, NonUtf8NameError, NotRegularFileError, ReadLimitError
from diffseg.inputs.files import list_inputs, list_inputs_array
from diffseg.inputs.read import READ_MAX_BYTES, READ_TIMEOUT_S, ReadLimits, read_uris
from diffseg.inputs.uri import escape_name, exact_fs, full_uri, open_exact, unescape_name

__all__ = [
    "READ_MAX_BYTES", "READ_TIMEOUT_S", "InputError", "NonUtf8NameError", "NotRegularFileError", "ReadLimitError",
    "ReadLimits", "escape_name", "exact_fs", "full_uri", "list_inputs", "list_inputs_array", "open_exact",
    "read_uris", "unescape_name",
]
