"""Keeping credentials out of everything diffseg prints, logs or writes: the one place that redacts.

Users pass credentials inside URLs (``s3://KEY:SECRET@bucket/x``, ``http://user:password@host/x``,
presigned ``?X-Amz-Signature=...``), and storage clients echo those URLs in their own error messages
(botocore's "Invalid endpoint: ...", "Could not connect to the endpoint URL: ..."). So:

- :func:`redact_uri` is the form of a URI that names it in a message, a log or a manifest: the
  ``user:password@`` part dropped and secret query values replaced by ``***``.
- :func:`redact_text` cleans any text (an exception's message, a log line): every URL's userinfo becomes
  ``***@``, secret query values and ``secret=...``/``password: ...`` pairs become ``***``, and the
  user and password pieces of the URIs it is given are removed wherever they appear alone.
- :func:`describe_error` is ``"Type: message"`` of an exception, redacted: use it for every wrapped
  exception text.
- :func:`redacted_output` redacts everything a command writes to stdout/stderr and every log record
  (the jobs and ``python -m diffseg`` run inside it), so a path that forgot to redact still leaks nothing.

Known over-redaction: a ``host:port/path@x`` URL loses its host and port (it reads like
``user:password@``); better a hidden host than a printed secret.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import urllib.parse
from collections.abc import Iterable, Iterator

MASK = "***"
MIN_SECRET_CHARS = 4  # a userinfo piece shorter than this is not removed from free text (too many false hits)

# scheme://user[:password]@   (the user has no '/', the password may have one: AWS secret keys do)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/?#@'\"]+?)(?::(?P<pw>[^\s@'\"]*))?@")
# ?X-Amz-Signature=..., &token=..., ;password=...
_QUERY = re.compile(
    r"(?i)(?P<key>[?&;][\w.\-]*(?:signature|credential|token|secret|password|passwd|access[_-]?key|api[_-]?key|sig|key)"
    r"[\w.\-]*=)[^&\s'\"#]+"
)
# secret=..., "password": "...", aws_session_token = ...
_PAIR = re.compile(
    r"(?i)(?P<key>\b[\w\-]*(?:secret|password|passwd|token|credentials?|secret[_-]?access[_-]?key)"
    r"[\"']?\s*[=:]\s*[\"']?)(?P<value>[^\s\"',;&)}\]]+)"
)


def redact_uri(uri: str) -> str:
    """`uri` without its ``user:password@`` part and with secret query values as ``***``
    (``s3://KEY:SECRET@bucket/x`` -> ``s3://bucket/x``); anything else unchanged."""
    uri = str(uri)
    return _QUERY.sub(lambda m: m.group("key") + MASK, _USERINFO.sub(lambda m: m.group("scheme"), uri))


def userinfo_secrets(uris: Iterable[str]) -> list[str]:
    """The user and password pieces (as written and percent-decoded, whole and split at ``/``) of the URIs
    in `uris` that carry ``user:password@``, longest first; pieces shorter than MIN_SECRET_CHARS are left out."""
    found = set()
    for uri in uris:
        for m in _USERINFO.finditer(str(uri)):
            for piece in (m.group("user"), m.group("pw")):
                if piece:
                    for form in (piece, urllib.parse.unquote(piece)):
                        found.update({form, *form.split("/")})  # clients split a secret with '/' as a path
    return sorted((p for p in found if len(p) >= MIN_SECRET_CHARS), key=len, reverse=True)


def redact_text(text: str, uris: Iterable[str] = ()) -> str:
    """`text` with every credential removed (see the module docstring); `uris`: URIs the text may echo
    in pieces (their userinfo is removed wherever it appears, e.g. a key quoted alone by botocore)."""
    text = str(text)
    for piece in userinfo_secrets(uris):
        text = text.replace(piece, MASK)
    text = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    text = _QUERY.sub(lambda m: m.group("key") + MASK, text)
    return _PAIR.sub(lambda m: m.group("key") + (m.group("value") if m.group("value") == MASK else MASK), text)


def describe_error(exc: BaseException, uris: Iterable[str] = ()) -> str:
    """``"TypeName: message"`` of `exc`, redacted (redact_text with `uris`)."""
    return f"{type(exc).__name__}: {redact_text(str(exc), uris)}"


class RedactingStream:
    """A text stream that writes through `stream` with every write redacted (redact_text)."""

    def __init__(self, stream, uris: Iterable[str] = ()):
        self._stream = stream
        self._uris = list(uris)

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text, self._uris))
        return len(text)

    def __getattr__(self, name):  # flush, fileno, isatty, encoding... of the wrapped stream
        return getattr(self._stream, name)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message (and exception text) of every record."""

    def __init__(self, uris: Iterable[str] = ()):
        super().__init__()
        self._uris = list(uris)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage(), self._uris)
        record.args = ()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            with contextlib.suppress(Exception):
                exc.args = tuple(redact_text(a, self._uris) if isinstance(a, str) else a for a in exc.args)
        return True


@contextlib.contextmanager
def redacted_output(uris: Iterable[str] = ()) -> Iterator[None]:
    """Inside: sys.stdout and sys.stderr redact what is written to them (so does a handler that
    logging.basicConfig adds inside, as it writes to them), and the root logger's existing handlers
    redact each record. `uris`: the command's arguments (their userinfo pieces are removed wherever
    they appear)."""
    uris = [str(u) for u in uris]
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout, uris), RedactingStream(sys.stderr, uris)
    root = logging.getLogger()
    log_filter = RedactingFilter(uris)
    saved_handlers = list(root.handlers)
    for handler in saved_handlers:
        handler.addFilter(log_filter)
    try:
        yield
    finally:
        for handler in saved_handlers:
            handler.removeFilter(log_filter)
        sys.stdout, sys.stderr = saved


def redacting(main):
    """Decorates a command's ``main(argv=None)`` so that everything it prints or logs is redacted
    (:func:`redacted_output` with the command's own arguments), and an unexpected exception becomes one
    redacted ``error: Type: message`` line and exit code 1 instead of a traceback (which Python would
    print unredacted). One line per command entry point."""
    import functools

    @functools.wraps(main)
    def wrapper(argv=None, *args, **kwargs):
        uris = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
        with redacted_output(uris):
            try:
                return main(argv, *args, **kwargs)
            except Exception as exc:  # a traceback printed after this block would not be redacted
                logging.getLogger(main.__module__).debug("unexpected error", exc_info=True)
                print(f"error: {describe_error(exc, uris)}", file=sys.stderr)
                return 1

    return wrapper
