"""Which form INPUT is (``--input-format auto``), and its listing in that form.

``auto`` decides from INPUT's name, then from what it holds; it never guesses between two forms that
both hold images:

- a brace list of shards (``shards/{00000..00099}.tar``; other names in braces are one path, as before) or a single ``.tar``/``.tar.gz``/``.tgz``: webdataset;
- a file named ``manifest.json`` that is an S3 Inventory manifest: inventory (else: one loose file);
- a single ``.arrow``: parquet (an Arrow stream, as ``datasets.save_to_disk`` writes);
- a single ``.parquet``: rows with image bytes (parquet) when it has an image column or Hugging Face
  metadata; a URI manifest (files) when it has a ``uri``/``path`` or a single string column; both: ambiguous;
- a ``.txt`` manifest: webdataset when the entries in its first 64 KiB are all shards, else files;
- a folder or prefix: a bounded look, never the whole listing: its first PEEK_KEYS (10,000) keys
  (:func:`~diffseg.inputs.listing.peek_keys`: on S3 in key order, one flat chain of 10 ListObjectsV2
  requests; locally the first folders listed, one at a time; the same keys on every run for an
  unchanged lake); all of it when it holds fewer. Its image files, shards (.tar...) and Parquet/Arrow files with an image column
  (the first one's schema is read) are counted. One kind: that form (other files are ignored:
  img2dataset's per-shard ``.parquet``/``.json`` beside its shards hold no image); two kinds: ambiguous
  (the counts are those of the look). When the look holds none of the three (captions first, say),
  every key is counted (streamed, none held) before deciding. A lake that mixes forms only beyond its
  first keys is taken in the form of its first keys, and the other form's files are ignored (as any
  non-image file is): name the form with ``--input-format`` for such a lake;
- a glob: fs.glob, the whole match listed once and counted the same way (globs are for small inputs; a
  folder, prefix or manifest is the way for big lakes). None of the three kinds: the files form (a glob
  then takes every file it matches, as before; a folder says it holds no images).

Ambiguous INPUT raises InputError naming what was found and the ``--input-format`` choices (the job
exits 2). Any explicit form skips detection.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from diffseg.inputs.errors import InputError
from diffseg.inputs.source import InputOptions, Source, parse_format
from diffseg.inputs.uri import exact_fs, has_magic, invalidate, redact

PEEK_BYTES = 64 << 10
PEEK_KEYS = 10_000  # keys of a folder or prefix looked at to decide its form (10 LIST pages on S3)


class Listing:
    """INPUT listed in its form (``form``: files, webdataset or parquet; an inventory lists loose files:
    files), and how the form was chosen (``detected``, for the log: ``"--input-format webdataset"``,
    ``"auto: 3 WebDataset shards (.tar)"``).

    Loose files (the files form):

    - :meth:`batches`: the URIs as a stream of ``pyarrow.StringArray`` batches, unsorted, possibly with
      repeats (a manifest may repeat lines), only the batch in flight held. A folder or prefix streams
      straight from :func:`~diffseg.inputs.listing.list_keys` (``streamed`` is True), as does an
      inventory (one data file at a time); a manifest's or a glob's list comes in batches. The first
      batch was read by :func:`list_input` (so a missing or empty INPUT raised there); the first call
      continues that listing, a later call lists INPUT again (or hands out `uris` when they are held).
    - ``uris``: the same URIs as a sorted unique ``pyarrow.StringArray``, built on first use from
      :meth:`batches` and then held (the whole listing in memory: what ``len()`` also needs).

    Containers (webdataset, parquet): ``sources``, sorted by id (``uris`` is None)."""

    def __init__(self, form: str, options: InputOptions, uris=None, sources: tuple[Source, ...] = (),
                 detected: str = "", stream=None, reopen=None, streamed: bool = False):
        self.form, self.options, self.sources, self.detected = form, options, tuple(sources), detected
        self.streamed = streamed  # True: batches() comes from a live listing, not from a list in memory
        self._uris, self._stream, self._reopen = uris, stream, reopen

    @property
    def uris(self):
        """files form: the URIs, sorted and unique (``pyarrow.StringArray``); None for containers."""
        if self.form != "files":
            return None
        if self._uris is None:
            from diffseg.inputs.files import sorted_unique

            self._uris = sorted_unique(list(self.batches()))
        return self._uris

    def batches(self) -> Iterator:
        """files form: the URIs as ``pyarrow.StringArray`` batches (see the class docstring)."""
        if self.form != "files":
            raise ValueError(f"a {self.form} listing has sources, not URI batches")
        if self._stream is not None:
            stream, self._stream = self._stream, None
            return stream
        if self._uris is not None:
            from diffseg.inputs.files import BATCH_ROWS

            return (self._uris.slice(i, BATCH_ROWS) for i in range(0, len(self._uris), BATCH_ROWS))
        return self._reopen()

    def __len__(self) -> int:
        return len(self.uris) if self.form == "files" else len(self.sources)

    def __repr__(self) -> str:
        return f"Listing(form={self.form!r}, detected={self.detected!r}, streamed={self.streamed})"


def list_input(spec: str, input_format: str = "auto") -> Listing:
    """INPUT `spec` listed in `input_format` (``FORM[:options]``, diffseg.inputs.source.parse_format);
    InputError when it is missing, empty or ambiguous (raised here, before any batch is consumed)."""
    form, options = parse_format(input_format)
    if form == "auto":
        return _auto(spec, options)
    return _list(spec, form, options, None, f"--input-format {input_format}")


def _list(spec: str, form: str, options: InputOptions, found, detected: str, look=None) -> Listing:
    if form == "files":
        from diffseg.inputs.files import file_batches
        from diffseg.inputs.uri import has_magic

        streamed = not spec.lower().endswith((".txt", ".parquet")) and not has_magic(spec)
        return Listing("files", options, detected=detected, stream=file_batches(spec, found, look),
                       reopen=lambda: file_batches(spec), streamed=streamed)
    if form == "webdataset":
        from diffseg.inputs.webdataset import list_shards

        return Listing(form, options, sources=tuple(list_shards(spec, options, found)), detected=detected)
    if form == "parquet":
        from diffseg.inputs.parquet import list_tables

        return Listing(form, options, sources=tuple(list_tables(spec, options, found)), detected=detected)
    if form == "inventory":
        return Listing("files", options, detected=detected, stream=_inventory_batches(spec),
                       reopen=lambda: _inventory_batches(spec), streamed=True)
    raise InputError(f"--input-format {form!r}: unknown form")


def _inventory_batches(spec: str) -> Iterator:
    """The inventory's image URIs, one batch per data file; InputError here when it lists none."""
    from diffseg.inputs.inventory import inventory_batches

    batches = (b for b in inventory_batches(spec) if len(b))
    head = next(batches, None)
    if head is None:
        raise InputError(f"INPUT {redact(spec)!r}: the S3 Inventory lists no image objects")
    return itertools.chain([head], batches)


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
        return _auto_below(spec, fs, path, options)
    return _auto_glob(spec, fs, path, options)


def _auto_below(spec: str, fs, path: str, options: InputOptions) -> Listing:
    """The form of folder or prefix `spec`, from a bounded look at its listing (see the module docstring)."""
    from diffseg.inputs.files import below_kind, listing_uri

    try:
        invalidate(fs)
        kind = below_kind(fs, path, spec)
        if kind == "file":
            return _list(spec, "files", options, None, "auto: one file")
        uri = listing_uri(fs, path, kind)
        look, complete = look_at(uri)
    except Exception:
        return _list(spec, "files", options, None, "auto")  # files says why (missing, unreadable)
    counts = count_kinds(look)
    if not complete and not any(counts[:3]):  # nothing recognisable in view: every key is counted (none held)
        from diffseg.inputs.listing import list_keys

        counts, complete = count_kinds(b.column("uri") for b in list_keys(uri)), True
    form, what = _decide(spec, counts, "" if complete else f" in the first {PEEK_KEYS:,} keys listed")
    return _list(spec, form, options, None, what, look=(look, complete) if form == "files" else None)


def look_at(uri: str, keys: int | None = None) -> tuple[list, bool]:
    """The first `keys` (default PEEK_KEYS) URIs under `uri` (:func:`~diffseg.inputs.listing.peek_keys`:
    on S3 one flat chain of ListObjectsV2 pages in key order, locally one folder at a time) as a list of
    ``pyarrow.StringArray``, and whether that is everything under `uri`."""
    from diffseg.inputs import listing

    found, complete = listing.peek_keys(uri, PEEK_KEYS if keys is None else keys)
    return ([found] if len(found) else []), complete


def count_kinds(batches) -> tuple[int, int, int, str | None]:
    """(image files, shards, table files, the first table file's URI in sorted order) among the URI
    `batches` (``pyarrow.StringArray``)."""
    import pyarrow.compute as pc

    from diffseg.inputs.files import image_extensions, pc_ends_with_any
    from diffseg.inputs.parquet import TABLE_SUFFIXES
    from diffseg.inputs.webdataset import TAR_SUFFIXES

    images = shards = tables = 0
    first = None
    for batch in batches:
        images += pc.sum(pc_ends_with_any(batch, image_extensions())).as_py() or 0
        shards += pc.sum(pc_ends_with_any(batch, TAR_SUFFIXES)).as_py() or 0
        found = batch.filter(pc_ends_with_any(batch, TABLE_SUFFIXES))
        if len(found):
            tables += len(found)
            least = pc.min(found).as_py()
            first = least if first is None else min(first, least)
    return images, shards, tables, first


def _auto_glob(spec: str, fs, path: str, options: InputOptions) -> Listing:
    """The form of glob `spec`: its whole match is listed once (fs.glob; for small inputs) and counted."""
    from diffseg.inputs.files import image_extensions
    from diffseg.inputs.parquet import is_table
    from diffseg.inputs.uri import full_uri
    from diffseg.inputs.webdataset import is_shard

    try:
        invalidate(fs)
        found = fs.glob(path, detail=True)
    except Exception:
        return _list(spec, "files", options, None, "auto")  # files says why (missing, unreadable)
    files = [p for p, info in found.items() if info.get("type") != "directory"]
    tables = sorted(p for p in files if is_table(p))
    counts = (sum(p.lower().endswith(image_extensions()) for p in files), sum(is_shard(p) for p in files),
              len(tables), full_uri(fs, tables[0]) if tables else None)
    form, what = _decide(spec, counts)
    return _list(spec, form, options, found, what)


def _decide(spec: str, counts: tuple[int, int, int, str | None], where: str = "") -> tuple[str, str]:
    """(form, how it was chosen) from the kinds counted (`where`: which keys were looked at, for the
    log); InputError when two forms hold images."""
    images, shards, tables, first_table = counts
    image_tables = tables if tables and _holds_images(first_table) else 0
    kinds = [(form, n, what) for form, n, what in (
        ("files", images, "image files"), ("webdataset", shards, "WebDataset shards (.tar)"),
        ("parquet", image_tables, "Parquet/Arrow files with image bytes")) if n]
    if len(kinds) > 1:
        held = " and ".join(f"{n} {what}" for _, n, what in kinds)
        choices = " or ".join(f"--input-format {form}" for form, _, _ in kinds)
        raise InputError(f"INPUT {redact(spec)!r} is ambiguous: it holds {held}; choose one with {choices}")
    if not kinds:
        return "files", "auto"
    return kinds[0][0], f"auto: {kinds[0][1]:,} {kinds[0][2]}{where}"


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
