"""How every command process ends: with its own exit code, never with an abort at interpreter exit.

Why: pyarrow reads Parquet through fsspec files with pre-buffering, and the last reference to a read
buffer (an ``arrow::py::PyBuffer``) can be dropped on one of Arrow's I/O threads after ``main`` has
returned. If that happens while Python finalizes, the thread asks for the GIL, Python ends it with
``pthread_exit``, the forced unwind meets a C++ destructor, and libstdc++ calls ``std::terminate``:
"terminate called without an active exception", exit 134 (SIGABRT) instead of the command's code.
(Seen on a refused export in about 1 of 10 runs under load; gdb shows the stack
``PyBuffer::~PyBuffer -> PyGILState_Ensure -> take_gil -> PyThread_exit_thread -> abort``.)

:func:`exit_process` therefore runs what a normal exit runs while the interpreter is still whole
(atexit handlers: Ray's shutdown, logging's flush), flushes stdout/stderr, and ends the process with
``os._exit(code)``: Python's finalization, the only moment a foreign thread can be killed that way, never
starts. Every ``python -m jobs.NAME`` and the ``diffseg`` console script end through it.
"""

from __future__ import annotations

import atexit
import os
import sys
import traceback
from collections.abc import Callable


def exit_code_of(exc: SystemExit) -> int:
    """The process exit code Python would give for ``SystemExit(exc.code)``."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits 1
    return 1


def exit_process(code: int) -> None:
    """Ends the process with `code` after atexit handlers and a flush of stdout/stderr (never returns)."""
    try:
        atexit._run_exitfuncs()  # Ray's shutdown, logging.shutdown: what a normal exit would run first
    finally:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def run_command(main: Callable[[], int | None]) -> None:
    """``python -m`` entry: runs ``main()`` (argparse's exits included) and ends the process with its code."""
    try:
        code = main()
        code = 0 if code is None else int(code)
    except SystemExit as exc:
        code = exit_code_of(exc)
    except KeyboardInterrupt:
        code = 130
    except Exception:  # what Python would print and exit 1 with, without its finalization
        traceback.print_exc()
        code = 1
    exit_process(code)
