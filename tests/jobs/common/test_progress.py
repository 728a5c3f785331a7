"""jobs.common.progress: readable progress lines and bar (injected clock and stream), Ray Data kept quiet."""

import io
import logging

import pytest

from jobs.common.progress import Progress, configure_ray_data, format_duration


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def progress_log(caplog):
    caplog.set_level(logging.INFO, logger="jobs.progress")
    return caplog


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "jobs.progress"]


def test_durations_read_as_seconds_minutes_and_hours():
    assert [format_duration(s) for s in (0, 42.4, 185, 7620, None, float("inf"), -1)] == [
        "0s", "43s", "3m05s", "2h07m", "?", "?", "?"]


def test_first_item_logs_at_once_then_every_ten_seconds_with_known_eta(progress_log):
    clock = Clock()
    p = Progress(total=100, clock=clock, stream=io.StringIO())
    clock.t += 20  # model loading: the first batch arrives 20 s after the start
    p.add(4)
    # a single batch so far: the rate is items over the time since the start (4 / 20 s)
    assert lines(progress_log) == ["4/100 images (4.0%), 0 errors, 0.20 images/s, ETA 8m00s"]
    clock.t += 5
    p.add(10, errors=1)  # 5 s later: not yet due
    assert len(lines(progress_log)) == 1
    clock.t += 5
    p.add(10, errors=1)  # 10 s after the first line: 20 items after the first batch in 10 s = 2/s
    assert lines(progress_log)[-1] == "24/100 images (24.0%), 2 errors, 2.00 images/s, ETA 38s"
    assert p.eta() == pytest.approx(38.0)


def test_last_item_always_shows_with_eta_zero(progress_log):
    clock = Clock()
    p = Progress(total=3, items="samples", clock=clock, stream=io.StringIO())
    clock.t += 1
    p.add(2, errors=1)
    clock.t += 1
    p.add(1)
    assert lines(progress_log) == ["2/3 samples (66.7%), 1 error, 2.00 samples/s, ETA 1s",
                                   "3/3 samples (100.0%), 1 error, 1.00 samples/s, ETA 0s"]


def test_repeated_items_of_a_retried_batch_never_count_past_the_total(progress_log):
    p = Progress(total=5, clock=Clock(), stream=io.StringIO())
    p.add(4)
    p.add(4)
    assert p.done == 5 and p.line().startswith("5/5 images (100.0%)")


def test_on_a_terminal_it_draws_one_bar_line_and_ends_it_at_close(progress_log):
    clock, tty = Clock(), Tty()
    p = Progress(total=10, clock=clock, stream=tty)
    clock.t += 2
    p.add(5)
    clock.t += 1
    p.add(5)
    p.close()
    out = tty.getvalue()
    assert lines(progress_log) == []  # a bar instead of log lines
    assert out.count("\n") == 1 and out.endswith("\n")  # one line, redrawn in place
    frames = [f for f in out.rstrip("\n").split("\r") if f]
    assert frames[0].endswith("[" + "#" * 15 + "-" * 15 + "] 5/10 images (50.0%), 0 errors, 2.50 images/s, ETA 2s")
    assert frames[-1].endswith("[" + "#" * 30 + "] 10/10 images (100.0%), 0 errors, 5.00 images/s, ETA 0s")


def test_quiet_shows_nothing(caplog):
    caplog.set_level(logging.WARNING, logger="jobs.progress")
    tty = Tty()
    p = Progress(total=2, clock=Clock(), stream=tty)
    p.add(2)
    p.close()
    assert tty.getvalue() == "" and lines(caplog) == []


def test_bad_totals_are_refused_with_the_value():
    with pytest.raises(ValueError, match="total -1"):
        Progress(total=-1)
    with pytest.raises(ValueError, match="every_s 0"):
        Progress(total=1, every_s=0)


def test_ray_data_prints_no_progress_or_banners_unless_verbose(ray_local):
    import importlib

    ray = ray_local
    importlib.import_module("ray.data")  # importing it installs Ray Data's console handler

    # Ray Data's console handler keeps the stream it was created with: read what it writes from here
    console = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]
    assert console, "Ray Data has no console handler to quiet"
    outputs = []
    try:
        for verbose in (False, True):
            out = io.StringIO()
            # swap streams without setStream: it flushes the old stream, which an earlier test's capture
            # may have closed already
            saved = [h.stream for h in console]
            for h in console:
                h.stream = out
            configure_ray_data(verbose=verbose)
            try:
                assert ray.data.range(6).map_batches(lambda b: b, batch_size=2).count() == 6
            finally:
                for h, stream in zip(console, saved):
                    h.stream = stream
            outputs.append(out.getvalue())
    finally:
        configure_ray_data(verbose=True)  # Ray Data's defaults for the tests after this one
    quiet, verbose = outputs
    for noise in ("Total Progress", "Starting execution", "Progress bars disabled", "execution finished"):
        assert noise not in quiet
    assert "Starting execution" in verbose and "Total Progress" in verbose and "execution finished" in verbose
