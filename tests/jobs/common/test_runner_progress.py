"""The runner's progress wiring (issue 13 item 4): every metadata batch the driver receives is counted
into the Progress lines users read, and -v/-q are one or the other."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pytest

from jobs.common.progress import Progress
from jobs.common.runner import _Counted


class Committer:
    def __init__(self):
        self.batches, self.finished = [], False

    def add(self, batch):
        self.batches.append(batch)
        return ["compact me"]

    def finish(self):
        self.finished = True


def meta(*counts):
    return pa.table({"counts": [json.dumps({"items": i, "errors": e}) for i, e in counts]})


def test_each_metadata_batch_is_counted_and_still_reaches_the_committer(caplog):
    caplog.set_level(logging.INFO, logger="jobs.progress")
    committer, clock = Committer(), iter(range(100)).__next__
    progress = Progress(10, items="images", clock=lambda: float(clock()), tty=False)
    counted = _Counted(committer, progress)
    assert counted.add(meta((3, 1), (2, 0))) == ["compact me"]
    counted.add(meta((5, 2)))
    counted.finish()
    assert committer.finished and len(committer.batches) == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "jobs.progress"]
    assert lines[0].startswith("5/10 images (50.0%), 1 error,") and lines[-1].startswith("10/10 images (100.0%), 3 errors")
    assert lines[-1].endswith("ETA 0s")


def test_verbose_and_quiet_exclude_each_other(capsys):
    from jobs.segment.cli import build_parser

    assert build_parser().parse_args(["in/", "out/", "--model", "tiny", "--vocab", "cat", "-v"]).verbose
    with pytest.raises(SystemExit):
        build_parser().parse_args(["in/", "out/", "--model", "tiny", "--vocab", "cat", "-q", "-v"])
    assert "argument -v/--verbose: not allowed with argument -q/--quiet" in capsys.readouterr().err
