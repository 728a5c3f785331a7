"""S3 Inventory reports (the ``inventory`` form): INPUT is a report's ``manifest.json``.

An inventory is a listing made by S3 itself (daily or weekly), so a lake of 10^8 objects is listed by
reading a few compressed files instead of 10^5 LIST requests. The manifest names its data files
(``files[].key`` in the destination bucket, ``destinationBucket`` as an ARN) and their format
(``fileFormat``): ``CSV`` (gzip, no header, columns named by ``fileSchema``, keys URL-encoded, decoded
here) or ``Parquet`` (``bucket``, ``key``... columns). ORC is refused with a clear message.

Each listed object is a loose file, ``s3://<bucket>/<key>``, kept as a folder listing keeps files: keys
with an image extension (any case), not a delete marker, the latest version when the report lists
versions. The result is the ``files`` form: the same identities as listing the bucket would give.

Where the data files are: with an ``s3://`` manifest, ``s3://<destination bucket>/<files[].key>``;
with a manifest elsewhere (a copy on local disk, another store), the report's own layout relative to
the manifest: ``<manifest folder>/../data/<file name>``.
"""

from __future__ import annotations

import gzip
import json
import urllib.parse

from diffseg.codecs.images import IMAGE_EXTENSIONS
from diffseg.inputs.errors import InputError
from diffseg.inputs.read import open_stream
from diffseg.inputs.uri import exact_fs, redact

MANIFEST_NAME = "manifest.json"


def is_inventory_manifest(document) -> bool:
    """True when parsed JSON `document` is an S3 Inventory manifest."""
    return isinstance(document, dict) and isinstance(document.get("files"), list) and "fileFormat" in document


def read_manifest(spec: str) -> dict:
    """The parsed manifest.json `spec` (InputError when it cannot be read or is not an inventory manifest)."""
    try:
        with open_stream(spec, block_size=1 << 20) as f:
            document = json.loads(f.read())
    except FileNotFoundError as exc:
        raise InputError(f"INPUT {redact(spec)!r} does not exist ({redact(exc)})") from exc
    except Exception as exc:
        raise InputError(f"INPUT {redact(spec)!r} cannot be read as an S3 Inventory manifest: "
                         f"{type(exc).__name__}: {redact(exc)}") from exc
    if not is_inventory_manifest(document):
        raise InputError(f"INPUT {redact(spec)!r} is not an S3 Inventory manifest (no 'files' and 'fileFormat')")
    return document


def data_file_uris(spec: str, manifest: dict) -> list[str]:
    """Where the manifest's data files are (see the module docstring)."""
    keys = [f["key"] for f in manifest["files"]]
    fs, path = exact_fs(spec)
    protocol = spec.split("://", 1)[0] if "://" in spec else "file"
    if protocol in ("s3", "s3a"):
        bucket = str(manifest.get("destinationBucket") or path.split("/", 1)[0]).rsplit(":", 1)[-1]
        return [f"s3://{bucket}/{key}" for key in keys]
    report = path.rstrip("/").rsplit("/", 2)[0]  # the folder above the manifest's (dated) folder
    prefix = "file://" if protocol == "file" else f"{protocol}://"
    return [f"{prefix}{report}/data/{key.rsplit('/', 1)[-1]}" for key in keys]


def inventory_uris(spec: str):
    """The image URIs an S3 Inventory manifest lists (a ``pyarrow.StringArray``, unsorted, see the module
    docstring); InputError when the manifest or a data file cannot be read."""
    import pyarrow as pa

    parts = list(inventory_batches(spec))
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def inventory_batches(spec: str):
    """:func:`inventory_uris` as a stream: one ``pyarrow.StringArray`` per data file (maybe empty), the
    data files read one at a time (only one is held). The manifest is read, and its format checked, at
    the call; a data file that cannot be read raises InputError when its turn comes."""
    manifest = read_manifest(spec)
    file_format = str(manifest["fileFormat"]).lower()
    if file_format not in ("csv", "parquet"):
        raise InputError(f"INPUT {redact(spec)!r}: S3 Inventory format {manifest['fileFormat']!r} is not read; "
                         "configure the inventory as CSV or Parquet")
    return _data_file_batches(spec, manifest, file_format)


def _data_file_batches(spec: str, manifest: dict, file_format: str):
    for uri in data_file_uris(spec, manifest):
        try:
            table = _read_csv(uri, manifest) if file_format == "csv" else _read_parquet(uri)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"INPUT {redact(spec)!r}: its data file {redact(uri)!r} cannot be read: "
                             f"{type(exc).__name__}: {redact(exc)}") from exc
        yield _image_uris(table, file_format == "csv")
        del table


def _read_csv(uri: str, manifest: dict):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    names = [n.strip() for n in str(manifest.get("fileSchema", "")).split(",") if n.strip()]
    lower = [n.lower() for n in names]
    if "bucket" not in lower or "key" not in lower:
        raise InputError(f"S3 Inventory fileSchema {manifest.get('fileSchema')!r} has no Bucket and Key columns")
    names = lower
    with open_stream(uri) as raw, (gzip.GzipFile(fileobj=raw) if uri.lower().endswith(".gz") else raw) as f:
        return pcsv.read_csv(f, read_options=pcsv.ReadOptions(column_names=names),
                             convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names}))


def _read_parquet(uri: str):
    import pyarrow.parquet as pq

    with open_stream(uri) as f:
        table = pq.read_table(f)
    return table.rename_columns([n.lower() for n in table.column_names])


def _image_uris(table, url_encoded: bool):
    """``s3://bucket/key`` of the rows that are current image objects (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = pc.invert(pc.ends_with(table.column("key"), "/"))
    for name, unwanted in (("isdeletemarker", True), ("is_delete_marker", True), ("islatest", False),
                           ("is_latest", False)):
        if name in table.column_names:
            column = table.column(name)
            if not pa.types.is_boolean(column.type):
                column = pc.equal(pc.utf8_lower(column.cast(pa.string())), "true")
            keep = pc.and_(keep, pc.fill_null(pc.invert(column) if unwanted else column, True))
    table = table.filter(keep)
    keys = table.column("key").combine_chunks()
    if url_encoded:  # CSV inventories URL-encode keys (a space is '+'); only those with '%' or '+' are decoded
        coded = pc.match_substring_regex(keys, r"[%+]")
        if pc.any(coded).as_py():
            values = keys.to_pylist()
            for i in pc.indices_nonzero(coded).to_pylist():
                values[i] = urllib.parse.unquote_plus(values[i])
            keys = pa.array(values, pa.string())
    pattern = "(" + "|".join(e.replace(".", r"\.") for e in IMAGE_EXTENSIONS) + ")$"
    images = pc.match_substring_regex(keys, pattern, ignore_case=True)
    buckets = table.column("bucket").combine_chunks().filter(images)
    return pc.binary_join_element_wise("s3://", buckets, "/", keys.filter(images), "").cast(pa.string())
