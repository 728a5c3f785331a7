"""Transient or final: which error rows a later invocation retries.

An error row is **retryable** when its cause can go away by itself: the network (resets, timeouts), the
store throttling (503 SlowDown), expired or missing credentials, a device fault or running out of memory.
It is **final** when the input itself is the cause: corrupt or unsupported content, a file over a limit,
a name that cannot be a key, an object that no longer exists. A rerun of the run retries the retryable
rows (``--retry-errors``: all of them); see docs/job.md "Errors".
"""

from __future__ import annotations

# error types whose cause is the input itself, whatever the stage
FINAL_TYPES = frozenset({
    "ImageDecodeError", "UnidentifiedImageError", "DecompressionBombError", "NotRegularFileError",
    "NonUtf8NameError", "FileNotFoundError", "IsADirectoryError", "NotADirectoryError", "UnicodeDecodeError",
})
# error types that are transient at any stage
TRANSIENT_TYPES = frozenset({
    "ConnectionError", "ConnectionResetError", "ConnectionAbortedError", "ConnectionRefusedError",
    "BrokenPipeError", "TimeoutError", "PermissionError", "OutOfMemoryError", "MemoryError",
    "ClientError", "ClientOSError", "ServerDisconnectedError", "ServerTimeoutError", "EndpointConnectionError",
    "ReadTimeoutError", "ConnectTimeoutError", "NoCredentialsError", "CredentialRetrievalError",
    "ExpiredToken", "ExpiredTokenException", "SlowDown", "ServiceUnavailable", "InternalError", "AcceleratorError",
})
# words of a message that mark a transient cause (store replies, CUDA faults)
TRANSIENT_WORDS = ("slowdown", "slow down", "throttl", "503", "500 internal", "timed out", "timeout", "reset by peer",
                   "connection", "expiredtoken", "expired token", "credentials", "out of memory", "cuda error",
                   "device-side assert", "cudnn", "nccl", "temporarily unavailable", "too many requests")


def is_retryable(stage: str, error_type: str, message: str = "") -> bool:
    """True when an error row of `stage` ("list", "read", "decode", "model", "encode") with `error_type` and
    `message` may succeed on a later attempt (see the module docstring)."""
    text = (message or "").lower()
    if error_type in FINAL_TYPES:
        return False
    if error_type == "ReadLimitError":  # over --max-read-bytes is final; --read-timeout is a timeout
        return "timeout" in text
    if error_type in TRANSIENT_TYPES or any(word in text for word in TRANSIENT_WORDS):
        return True
    # what is left: a read that failed with an unclassified OSError is the network or the store; a decode,
    # model or encode failure that is neither memory nor device is the content
    return stage == "read" and error_type in ("OSError", "IOError", "RuntimeError", "Exception")


def exception_retryable(stage: str, exc: BaseException) -> bool:
    """:func:`is_retryable` of an exception (its type name and message)."""
    return is_retryable(stage, type(exc).__name__, str(exc))
