"""Which form INPUT is (``--input-format auto``), and its listing in that form.

``auto`` decides from INPUT's name, then from what it holds; it never guesses between two forms that
both hold images:

- a brace list of shards (``shards/{00000..00099}.tar``; other names in braces are one path, as before) or a single ``.tar``/``.tar.gz``/``.tgz``: webdataset;
- a file named ``manifest.json`` that is an S3 Inventory manifest: inventory (else: one loose file);
- a single ``.arrow``: parquet (an Arrow stream, as ``datasets.save_to_disk`` writes);
- a single ``.parquet``: rows with image bytes (parquet) when it has an image column or Hugging Face
  metadata; a URI manifest (files) when it has a ``uri``/``path`` or a single string column; both: ambiguous;
- a ``.txt`` manifest: webdataset when the entries in its first 64 KiB are all shards, else files;
- a folder, prefix or glob: listed once; its image files, shards (.tar...) and Parquet/Arrow files
  with an image column (the first one's schema is read) are counted. One kind: that form (other files are
  ignored: img2dataset's per-shard ``.parquet``/``.json`` beside its shards hold no image). Images and
  shards, or images and image tables, or shards and image tables: ambiguous. None: the files form (a
  glob then takes every file it matches, as before; a folder says it holds no images).

Ambiguous INPUT raises InputError naming what was found and the ``--input-format`` choices (the job
exits 2). Any explicit form skips detection.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffseg.inputs.errors import InputError
from diffseg.inputs.source import InputOptions, Source, parse_format
from diffseg.inputs.uri import exact_fs, has_magic, invalidate, redact

PEEK_BYTES = 64 << 10


@dataclass(frozen=True)
class Listing:
    """INPUT listed in its form: loose files as a sorted unique ``pyarrow.StringArray`` of URIs (`uris`;
    also an inventory's), containers as sources sorted by id (`sources`)."""

    form: str  # files, webdataset or parquet (an inventory lists loose files: files)
    options: InputOptions
    uris: object = None  # files: pyarrow.StringArray, sorted, unique
    sources: tuple[Source, ...] = ()
    detected: str = ""  # how the form was chosen (for the log): "--input-format webdataset", "auto: 3 shards"

    def __len__(self) -> int:
        return len(self.uris) if self.form == "files" else len(self.sources)


def list_input(spec: str, input_format: str = "auto") -> Listing:
    """INPUT `spec` listed in `input_format` (``FORM[:options]``, diffseg.inputs.source.parse_format);
    InputError when it is missing, empty or ambiguous."""
    form, options = parse_format(input_format)
    if form == "auto":
        return _auto(spec, options)
    return _list(spec, form, options, None, f"--input-format {input_format}")


def _list(spec: str, form: str, options: InputOptions, found, detected: str) -> Listing:
    from diffseg.inputs.files import list_inputs_array, listed

    if form == "files":
        return Listing("files", options, uris=list_inputs_array(spec, listed(spec, found)), detected=detected)
    if form == "webdataset":
        from diffseg.inputs.webdataset import list_shards

        return Listing(form, options, sources=tuple(list_shards(spec, options, found)), detected=detected)
    if form == "parquet":
        from diffseg.inputs.parquet import list_tables

        return Listing(form, options, sources=tuple(list_tables(spec, options, found)), detected=detected)
    if form == "inventory":
        from diffseg.inputs.inventory import inventory_uris

        uris = inventory_uris(spec)
        if len(uris) == 0:
            raise InputError(f"INPUT {redact(spec)!r}: the S3 Inventory lists no image objects")
        return Listing("files", options, uris=list_inputs_array(spec, uris), detected=detected)
    raise InputError(f"--input-format {form!r}: unknown form")


def _auto(spec: str, options: InputOptions) -> Listing:
    from diffseg.inputs.webdataset import is_shard, is_shard_list

    if is_shard_list(spec):
        return _list(spec, "webdataset", options, None, "auto: a brace list of shards")
    try:
        fs, path = exact_fs(spec)
    except (ImportError, ValueError):
        return _list(spec, "files", options, None, "auto")  # files says why
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    if not has_magic(path):
        if is_shard(name):
            return _list(spec, "webdataset", options, None, "auto: one shard")
        if name == "manifest.json" and _is_inventory(spec):
            return _list(spec, "inventory", options, None, "auto: an S3 Inventory manifest")
        if name.endswith(".arrow"):
            return _list(spec, "parquet", options, None, "auto: one Arrow file")
        if name.endswith(".parquet"):
            return _list(spec, _table_form(spec), options, None, "auto: one Parquet file")
        if name.endswith(".txt"):
            return _list(spec, "webdataset" if _lists_shards(spec) else "files", options, None, "auto: a manifest")
    return _auto_listed(spec, fs, path, options)


def _auto_listed(spec: str, fs, path: str, options: InputOptions) -> Listing:
    from diffseg.inputs.files import find_below, image_extensions
    from diffseg.inputs.parquet import is_table
    from diffseg.inputs.uri import full_uri
    from diffseg.inputs.webdataset import is_shard

    try:
        invalidate(fs)
        found = fs.glob(path, detail=True) if has_magic(path) else find_below(fs, path, spec)
    except Exception:
        return _list(spec, "files", options, None, "auto")  # files says why (missing, unreadable)
    if found is None:  # one file
        return _list(spec, "files", options, None, "auto: one file")
    files = [p for p, info in found.items() if info.get("type") != "directory"]
    images = sum(p.lower().endswith(image_extensions()) for p in files)
    shards = sum(is_shard(p) for p in files)
    tables = sorted(p for p in files if is_table(p))
    image_tables = len(tables) if tables and _holds_images(full_uri(fs, tables[0])) else 0
    kinds = [(form, n, what) for form, n, what in (
        ("files", images, "image files"), ("webdataset", shards, "WebDataset shards (.tar)"),
        ("parquet", image_tables, "Parquet/Arrow files with image bytes")) if n]
    if len(kinds) > 1:
        held = " and ".join(f"{n} {what}" for _, n, what in kinds)
        choices = " or ".join(f"--input-format {form}" for form, _, _ in kinds)
        raise InputError(f"INPUT {redact(spec)!r} is ambiguous: it holds {held}; choose one with {choices}")
    form = kinds[0][0] if kinds else "files"
    return _list(spec, form, options, found, f"auto: {kinds[0][1]} {kinds[0][2]}" if kinds else "auto")


def _holds_images(uri: str) -> bool:
    """True when table file `uri` has an image column (False when it cannot be read as a table)."""
    from diffseg.inputs.parquet import has_image_column, read_schema

    try:
        return has_image_column(read_schema(uri))
    except InputError:
        return False


def _is_inventory(spec: str) -> bool:
    from diffseg.inputs.inventory import read_manifest

    try:
        read_manifest(spec)
    except InputError:
        return False
    return True


def _table_form(spec: str) -> str:
    """parquet or files for the single Parquet file `spec` (InputError when it could be either)."""
    from diffseg.inputs.parquet import has_image_column, hf_image_columns, read_schema

    try:
        schema = read_schema(spec)
    except InputError:
        return "files"  # the manifest reader says why
    images = has_image_column(schema) or bool((schema.metadata or {}).get(b"huggingface"))
    strings = [f.name for f in schema if str(f.type) in ("string", "large_string")]
    listed = any(n in schema.names for n in ("uri", "path")) or (len(strings) == 1 and not images)
    if images and listed and not hf_image_columns(schema):
        raise InputError(f"INPUT {redact(spec)!r} is ambiguous: it has image bytes and a 'uri'/'path' column "
                         "(a manifest of URIs); choose one with --input-format parquet (the rows' images) or "
                         "--input-format files (the URIs it lists)")
    return "parquet" if images else "files"


def _lists_shards(spec: str) -> bool:
    """True when every entry of the first PEEK_BYTES of .txt manifest `spec` is a shard."""
    from diffseg.inputs.read import open_stream
    from diffseg.inputs.webdataset import is_shard

    try:
        with open_stream(spec, block_size=PEEK_BYTES) as f:
            head = f.read(PEEK_BYTES)
    except Exception:
        return False
    lines = head.decode("utf-8", "replace").splitlines()
    if len(head) == PEEK_BYTES:
        lines = lines[:-1]  # maybe cut
    entries = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    return bool(entries) and all(is_shard(e) for e in entries)
