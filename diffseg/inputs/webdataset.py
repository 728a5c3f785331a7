"""WebDataset tar shards (the ``webdataset`` form): img2dataset, LAION, DataComp lakes.

INPUT is a folder or prefix holding ``.tar`` shards (recursive; also ``.tar.gz``/``.tgz``), a glob of
them, a brace list (``s3://b/shards/{00000..00099}.tar``, expanded as webdataset expands it: the
``braceexpand`` package), one shard, or a ``.txt`` manifest of shard URIs. Each shard is one source.

A shard is read front to back as one stream (:class:`~diffseg.inputs.read.ResumingReader`: a few large
ranged requests, reopened where it broke after a transient error) and its members are grouped into
samples exactly as webdataset's ``group_by_keys`` groups them: a regular member ``dir/000123.seg.png``
has the key ``dir/000123`` (up to the first dot of its base name) and the extension ``seg.png``
(lower-cased); adjacent members with one key form one sample; names like ``__index__`` are skipped.
The sample's image is its member whose extension is an image extension (jpg, jpeg, png, gif, bmp, tif,
tiff, webp) or, with ``image=EXT``, the member of that extension; the other members (``.json``,
``.txt``...) are the sample's metadata when asked (UTF-8 text as ``str``, else ``bytes``).

Bad members become error items (diffseg.inputs.source has the identities), never a failed shard:

- a sample without an image member (``NoImageError``, stage decode) or with several (``MemberError``);
- an image member above the byte cap (``ReadLimitError``: not read);
- a member without a key (``README``, ``.jpg``) or repeating one (``MemberError``, stage list): a key
  seen earlier in the shard (webdataset would yield a second sample with the same key), or an
  extension repeated within a sample (webdataset raises): the first is the sample, each later member
  its own error at ``<shard>#<member name>@<offset>``;
- a corrupt image member is read as it is (its decode fails later, as a bad loose file's does);
- a shard that cannot be opened, or whose tar stream breaks: the samples before the break as usual,
  then one error at ``<shard>#@<byte offset>``.
"""

from __future__ import annotations

import re
import tarfile

from diffseg.codecs.images import IMAGE_EXTENSIONS
from diffseg.inputs.errors import CorruptContainerError, InputError, MemberError, NoImageError
from diffseg.inputs.files import files_named, manifest_entries, resolve_entry
from diffseg.inputs.read import DEFAULT_LIMITS, ReadLimits, ResumingReader, timed_out, too_large, with_timeout
from diffseg.inputs.source import (
    DEFAULT_OPTIONS,
    InputOptions,
    Item,
    Source,
    error_item,
    member_identity,
    position_identity,
)
from diffseg.inputs.uri import exact_fs, full_uri, has_magic, invalidate, redact

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_MEMBER_EXTENSIONS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_BRACES = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}")
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator skip_meta


def is_shard(path: str) -> bool:
    """True when `path` names a tar shard by its extension (any case)."""
    return path.lower().endswith(TAR_SUFFIXES)


def has_braces(spec: str) -> bool:
    """True when `spec` holds a brace list or range (``{a,b}``, ``{00000..00099}``)."""
    return _BRACES.search(spec) is not None


def is_shard_list(spec: str) -> bool:
    """True when `spec` is a brace list whose every name is a shard (``shards/{00000..00099}.tar``)."""
    from braceexpand import braceexpand

    return has_braces(spec) and all(is_shard(name) for name in braceexpand(spec))


def base_plus_ext(name: str) -> tuple[str | None, str | None]:
    """(key, extension) of a member name as webdataset splits it; (None, None) when it has no key."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match.group(1), match.group(2)) if match else (None, None)


def list_shards(spec: str, options: InputOptions = DEFAULT_OPTIONS,
                found: dict[str, dict] | None = None) -> list[Source]:
    """The shards INPUT `spec` names (see the module docstring), sorted by URI, one Source each.
    `found`: a listing of `spec` already made. InputError when there is none."""
    try:
        if has_braces(spec):
            uris = _expand(spec)
        else:
            fs, path = exact_fs(spec)
            invalidate(fs)
            if spec.lower().endswith(".txt") and not has_magic(path):
                base = path.rsplit("/", 1)[0] if "/" in path else "."
                uris = [resolve_entry(fs, base, e) for e in manifest_entries(fs, path, spec)]
                others = [u for u in uris if not is_shard(u)]
                if others:
                    raise InputError(f"INPUT manifest {redact(spec)!r} lists {len(others)} URI(s) that are not "
                                     f".tar shards (e.g. {redact(others[0])!r}) in --input-format webdataset")
            else:
                uris = files_named(spec, fs, path, TAR_SUFFIXES, found)
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputError(f"INPUT {redact(spec)!r} does not exist ({redact(exc)})") from exc
    except Exception as exc:
        raise InputError(f"INPUT {redact(spec)!r} cannot be listed: {type(exc).__name__}: {redact(exc)}") from exc
    if not uris:
        raise InputError(f"INPUT {redact(spec)!r} holds no WebDataset shards ({', '.join(TAR_SUFFIXES)} files)")
    return [Source(u, "webdataset", options=options) for u in sorted(set(uris))]


def _expand(spec: str) -> list[str]:
    """The shard URIs of brace list `spec`; InputError when none exists (the missing ones are kept:
    each becomes a read error of its shard)."""
    import logging

    from braceexpand import braceexpand

    names = list(braceexpand(spec))
    resolved = []
    for name in names:
        fs, path = exact_fs(name)
        resolved.append((fs, path, full_uri(fs, path)))
    parents: dict[str, set] = {}
    for fs, path, _ in resolved:
        parent = path.rsplit("/", 1)[0]
        if parent not in parents:
            invalidate(fs)
            try:
                parents[parent] = set(fs.ls(parent, detail=False))
            except FileNotFoundError:
                parents[parent] = set()
    missing = [uri for fs, path, uri in resolved if path not in parents[path.rsplit("/", 1)[0]]]
    if len(missing) == len(resolved):
        raise InputError(f"INPUT {redact(spec)!r}: none of its {len(names)} shard(s) exists (e.g. {redact(missing[0])!r})")
    if missing:
        logging.getLogger("diffseg.inputs").warning(
            "INPUT %s: %d of %d shard(s) do not exist (e.g. %s): each becomes one read error", redact(spec),
            len(missing), len(names), redact(missing[0]))
    return [uri for _, _, uri in resolved]


def read_shard(source: Source, limits: ReadLimits = DEFAULT_LIMITS):
    """The items of shard `source` in stored order (see the module docstring); never raises. A shard
    whose next sample takes longer than ``limits.timeout`` ends with a ReadLimitError item."""
    state = {"offset": 0}

    def stalled() -> Item:
        return error_item(position_identity(source.id, state["offset"]), timed_out(source.id, limits.timeout))

    return with_timeout(_shard_items(source, limits, state), limits.timeout, stalled)


class _Sample:
    def __init__(self, key: str, repeat: bool = False):
        self.key, self.repeat = key, repeat
        self.members: dict[str, bytes | BaseException | None] = {}  # extension -> data, error, or None (not read)


def _shard_items(source: Source, limits: ReadLimits, state: dict):
    uri, options = source.id, source.options
    try:
        stream = ResumingReader(uri)
    except Exception as exc:
        yield error_item(position_identity(uri, 0), exc)
        return
    seen: set[str] = set()
    sample: _Sample | None = None
    try:
        with stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isreg() or _SKIP_META.match(info.name) or (
                        "/" not in info.name and info.name.startswith("__") and info.name.endswith("__")):
                    continue
                key, ext = base_plus_ext(info.name)
                where = position_identity(uri, info.offset, info.name)
                if key is None:
                    yield error_item(where, MemberError(
                        f"member {info.name!r} of shard {uri!r} has no key (WebDataset members are named KEY.EXT)"))
                    continue
                ext = ext.lower()
                if sample is None or key != sample.key:
                    if sample is not None and not sample.repeat:
                        yield _finish(uri, sample, options, limits)
                    sample = _Sample(key, repeat=key in seen)
                    seen.add(key)
                if sample.repeat or ext in sample.members:
                    why = (f"its key {key!r} appeared earlier in shard {uri!r} (a sample's members must be adjacent)"
                           if sample.repeat else f"sample {key!r} of shard {uri!r} already has a {ext!r} member")
                    yield error_item(where, MemberError(f"member {info.name!r} is not read: {why}"))
                    continue
                sample.members[ext] = _member_data(tar, info, ext, options, limits, member_identity(uri, key))
                state["offset"] = info.offset_data + info.size
                tar.members = []  # a stream keeps every TarInfo otherwise (as webdataset, memory stays flat)
            last, sample = sample, None
            if last is not None and not last.repeat:
                yield _finish(uri, last, options, limits)
    except Exception as exc:
        cause = exc if _retryable_read(exc) else CorruptContainerError(
            f"the tar stream of shard {uri!r} breaks after byte {state['offset']} ({type(exc).__name__}: {exc}); "
            "the samples after it are not read")
        if sample is not None and sample.repeat:
            pass  # its members were error items already
        elif sample is not None and any(isinstance(v, bytes) and _is_image(e, options) for e, v in sample.members.items()):
            yield _finish(uri, sample, options, limits)  # its image was read before the break
        elif sample is not None:
            yield error_item(member_identity(uri, sample.key), cause)
        yield error_item(position_identity(uri, state["offset"]), cause)


def _retryable_read(exc: BaseException) -> bool:
    """True for a storage error (kept as it is, retryable), False for a corrupt tar (final)."""
    from diffseg.inputs.read import transient

    return not isinstance(exc, (tarfile.TarError, EOFError)) and transient(exc)


def _is_image(ext: str, options: InputOptions) -> bool:
    return ext == options.image.lower().lstrip(".") if options.image else ext in IMAGE_MEMBER_EXTENSIONS


def _member_data(tar, info, ext: str, options: InputOptions, limits: ReadLimits, identity: str):
    """A member's bytes when they are needed (the image; sidecars when metadata is asked), an error when
    over the byte cap, else None (the stream skips it unread)."""
    if not (_is_image(ext, options) or options.metadata):
        return None
    if info.size > limits.max_bytes:
        return too_large(identity, limits.max_bytes)
    return tar.extractfile(info).read()


def _finish(uri: str, sample: _Sample, options: InputOptions, limits: ReadLimits) -> Item:
    identity = member_identity(uri, sample.key)
    images = [e for e in sample.members if _is_image(e, options)]
    if len(images) != 1:
        members = ", ".join(sample.members) or "none"
        if images:
            exc: Exception = MemberError(f"sample {sample.key!r} of shard {uri!r} has several image members "
                                         f"({', '.join(images)}): name one with --input-format webdataset:image=EXT")
        else:
            wanted = options.image or ", ".join(IMAGE_MEMBER_EXTENSIONS)
            exc = NoImageError(f"sample {sample.key!r} of shard {uri!r} has no image member (its members: "
                               f"{members}; images: {wanted})")
        return error_item(identity, exc)
    data = sample.members[images[0]]
    if isinstance(data, BaseException):
        return error_item(identity, data)
    metadata = None
    if options.metadata:
        metadata = {e: _text_or_bytes(v) for e, v in sample.members.items() if e != images[0] and isinstance(v, bytes)}
    return Item(identity, data, metadata=metadata)


def _text_or_bytes(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data
