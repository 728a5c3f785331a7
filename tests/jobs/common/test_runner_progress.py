"""The runner's progress wiring (issues 13 and 23): the actors' per-batch counts reach the Progress lines
users read, and -v/-q are one or the other."""

from __future__ import annotations

import logging

import pytest

from jobs.common.progress import Progress


def test_the_driver_reads_the_actors_counts_every_second(caplog):
    """The actors count per model batch into a BatchCounter actor; the driver's poller turns what arrived
    into the Progress lines users read, so the rate and ETA move per batch."""
    import time

    from jobs.common.progress import BatchCounter, CounterPoller

    caplog.set_level(logging.INFO, logger="jobs.progress")
    clock = iter(range(100)).__next__
    progress = Progress(10, items="images", every_s=0.001, clock=lambda: float(clock()), tty=False)
    counter = BatchCounter()  # in the job a Ray actor (jobs.common.ray_env.batch_counter) the actors add to
    with CounterPoller(counter, progress, every_s=0.05, take=counter.take):
        counter.add(3, 1)
        counter.add(2, 0)
        time.sleep(1.0)
        counter.add(5, 2)
    assert (progress.done, progress.errors) == (10, 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "jobs.progress"]
    assert len(lines) >= 2 and lines[-1].startswith("10/10 images (100.0%), 3 errors") and lines[-1].endswith("ETA 0s")


def test_verbose_and_quiet_exclude_each_other(capsys):
    from jobs.segment.cli import build_parser

    assert build_parser().parse_args(["in/", "out/", "--model", "tiny", "--vocab", "cat", "-v"]).verbose
    with pytest.raises(SystemExit):
        build_parser().parse_args(["in/", "out/", "--model", "tiny", "--vocab", "cat", "-q", "-v"])
    assert "argument -v/--verbose: not allowed with argument -q/--quiet" in capsys.readouterr().err
