"""The errors of listing INPUT and reading its images.

:class:`InputError` is about INPUT as a whole (the job exits 2 before reading any image). The others
are about one image: each carries the ``stage`` its error row records (``list``, ``read`` or
``decode``; see diffseg.lake.schemas.STAGES).
"""

from __future__ import annotations


class InputError(ValueError):
    """INPUT cannot be listed, does not exist, holds no images, or is ambiguous (the message names the fix)."""


class ReadLimitError(OSError):
    """A read passed the byte cap or the timeout (the message names the limit and its option)."""

    stage = "read"


class NotRegularFileError(OSError):
    """The URI names a FIFO, a device or a socket: reading it could block forever or never end."""

    stage = "read"


class NonUtf8NameError(OSError):
    """The file's name is not valid UTF-8; its URI is the escaped name (see escape_name)."""

    stage = "list"


class MemberError(ValueError):
    """A member of a shard or a row of a table file that is not one image: no key, a repeated key, no
    image member, no image bytes (final: the content is wrong, reading again gives the same)."""

    stage = "list"


class NoImageError(MemberError):
    """A sample or row holds no image (only sidecars, or a null image cell)."""

    stage = "decode"


class CorruptContainerError(ValueError):
    """A shard's tar stream or a table file is corrupt from some position on (final: reading again gives
    the same); what was read before it is kept."""

    stage = "read"
