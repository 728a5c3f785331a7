"""Progress a person can read while a job runs, and Ray Data's own progress output kept quiet.

:class:`Progress` is fed per-item counts as the workers' results reach the driver (not per committed
unit), from the first item on. Every ``every_s`` seconds (default 10) it logs one line::

    37/120 images (30.8%), 2 errors, 1.85 images/s, ETA 45s

On a terminal (its stream is a TTY) it redraws a single-line bar on that stream instead::

    [#########---------------------]  37/120 images (30.8%), 2 errors, 1.85 images/s, ETA 45s

and ends it with a newline at :meth:`Progress.close`. The final summary line stays the runner's. It
is silent when its logger is not enabled for INFO (``-q``). The clock and the stream are injected, so the
arithmetic is testable without waiting.

Rate and ETA: the rate counts only items that arrived after the first batch, over the time since that
batch (model loading and the first batch's latency would otherwise make every early ETA too long); with
a single batch so far, it is items over the time since the start. ETA = items left / rate.

:func:`configure_ray_data` sets Ray Data's own output: with ``verbose`` its progress bars (on a TTY) or
its periodic "Total Progress 0/?" log lines, per-operator bars and execution banners; without it none
of them (this module's lines replace them), while Ray Data's warnings and errors still show.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("jobs.progress")

BAR_WIDTH = 30  # characters between the brackets of the TTY bar
REDRAW_S = 0.25  # the TTY bar is redrawn at most this often (and at close)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m`` (whole seconds, rounded up: an ETA never reads 0s while items are
    left); ``?`` for an unknown (None, NaN, negative, infinite) duration."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = math.ceil(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Counts items as results arrive and reports done/total, errors, items/s and an ETA.

    total: items the run has to do (known at start); items: their name in the lines ("images").
    every_s: seconds between log lines (not TTY); stream: where the TTY bar goes (default stderr);
    clock: seconds, monotonic (default time.monotonic); tty: force bar (True) or lines (False),
    default ``stream.isatty()``; logger: where lines go (INFO) and whether anything shows at all.
    """

    def __init__(self, total: int, items: str = "images", every_s: float = 10.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None,
                 logger: logging.Logger = log):
        if total < 0:
            raise ValueError(f"total {total} must be >= 0 (the number of items the run has to do)")
        if every_s <= 0:
            raise ValueError(f"every_s {every_s} must be > 0 seconds")
        self.total, self.items, self.every_s = int(total), items, float(every_s)
        self.stream = stream if stream is not None else sys.stderr
        self.clock, self.logger = clock, logger
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.done = 0  # items with a result (an error counts as done: it will not be retried)
        self.errors = 0
        self.started = clock()
        self._first: tuple[float, int] | None = None  # (time, items) of the first batch
        self._last_shown: float | None = None
        self._bar_drawn = False

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def add(self, items: int, errors: int = 0) -> None:
        """`items` more results arrived, `errors` of them error rows; shows a line when one is due."""
        self.done = min(self.done + int(items), self.total)  # a retried batch may report items twice
        self.errors += int(errors)
        now = self.clock()
        if self._first is None:
            self._first = (now, self.done)
        due = self.every_s if not self.tty else REDRAW_S
        if self._last_shown is None or now - self._last_shown >= due or self.done >= self.total:
            self._show(now)

    def rate(self, now: float | None = None) -> float:
        """Items per second (see the module docstring); 0.0 before the first item."""
        now = self.clock() if now is None else now
        if self._first is None:
            return 0.0
        t_first, n_first = self._first
        if self.done > n_first and now > t_first:
            return (self.done - n_first) / (now - t_first)
        return self.done / (now - self.started) if now > self.started else 0.0

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the current rate (0 when everything is done; None while the rate is unknown)."""
        left = max(self.total - self.done, 0)
        if not left:
            return 0.0
        rate = self.rate(now)
        return left / rate if rate > 0 else None

    def line(self, now: float | None = None) -> str:
        """``done/total items (pct), errors, items/s, ETA``."""
        now = self.clock() if now is None else now
        pct = 100.0 * self.done / self.total if self.total else 100.0
        errors = f"{self.errors} error" + ("" if self.errors == 1 else "s")
        return (f"{self.done}/{self.total} {self.items} ({pct:.1f}%), {errors}, "
                f"{self.rate(now):.2f} {self.items}/s, ETA {format_duration(self.eta(now))}")

    def bar(self, now: float | None = None) -> str:
        """The TTY line: a ``[###---]`` bar of BAR_WIDTH characters, then :meth:`line`."""
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(frac * BAR_WIDTH)
        return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {self.line(now)}"

    def close(self) -> None:
        """Ends the TTY bar with a newline (after a last redraw); a no-op for log lines."""
        if self.tty and self.enabled and self._first is not None:
            self._show(self.clock())
        if self._bar_drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_drawn = False

    def _show(self, now: float) -> None:
        self._last_shown = now
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.bar(now))
            self.stream.flush()
            self._bar_drawn = True
        else:
            self.logger.info("%s", self.line(now))


class BatchCounter:
    """Items the model actors have finished, as they finish each model batch (a Ray actor in the jobs:
    jobs.common.ray_env.batch_counter): the driver takes what arrived every second, so progress and the ETA
    move per batch of images, not per committed unit of hundreds. A batch Ray retries is counted again
    (:meth:`Progress.add` clamps at the total)."""

    def __init__(self):
        self.items = self.errors = 0

    def add(self, items: int, errors: int = 0) -> None:
        self.items += int(items)
        self.errors += int(errors)

    def take(self) -> tuple[int, int]:
        """(items, errors) added since the last take."""
        taken = (self.items, self.errors)
        self.items = self.errors = 0
        return taken


class CounterPoller:
    """A driver thread feeding a :class:`Progress` from a BatchCounter actor every `every_s` seconds."""

    def __init__(self, counter, progress: Progress, every_s: float = 1.0, take=None):
        import threading

        self.counter, self.progress, self.every_s = counter, progress, every_s
        self._take_counts = take or self._take_remote  # () -> (items, errors): the actor's, or injected
        self.taken = 0  # items taken so far (what a stall watchdog watches; not clamped to the total)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="progress-poller", daemon=True)

    def __enter__(self) -> CounterPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 5)
        self._take()

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            self._take()

    def _take_remote(self) -> tuple[int, int]:
        import ray

        return ray.get(self.counter.take.remote(), timeout=5)

    def _take(self) -> None:
        try:
            items, errors = self._take_counts()
        except Exception:  # a late or lost count only delays a progress line
            return
        if items:
            self.taken += items
            self.progress.add(items, errors)


def configure_ray_data(verbose: bool = False) -> None:
    """Ray Data's own progress output in this process (the driver): with `verbose`, its progress bars or
    "Total Progress" log lines, per-operator bars and the execution banner; without it, none of them
    (including the one-time "Progress bars disabled" warning) on the console, while its other warnings
    still show there and its file log (ray-data.log in the session folder) keeps everything.
    Call it before the dataset executes."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.enable_operator_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    # the non-TTY "Total Progress: 0/?" lines and the one-time "Progress bars disabled" notice come from here
    logging.getLogger("ray.data._internal.progress").setLevel(logging.NOTSET if verbose else logging.ERROR)
    # Ray Data's console handler (its file log, ray-data.log, keeps everything): banners such as "Starting
    # execution of Dataset", "Execution plan" and "execution finished in" are INFO
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.INFO if verbose else logging.WARNING)
