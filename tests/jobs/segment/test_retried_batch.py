"""A batch whose actor dies right after writing its rows (before the driver hears of them) is retried by
Ray Data on a restarted actor: the rows are written again under the same names, and every image is in
the output exactly once."""

from __future__ import annotations

import pytest
from jobtest_utils import MAX_PIXELS, RESOLUTION, check_exactly_once, put_files

from diffseg.lake.store import OutputStore
from jobs.common.config import JobConfig
from jobs.segment.run import SegmentJob

pytestmark = pytest.mark.slow


def test_actor_dying_after_its_write_never_duplicates_rows(ray_local, tmp_path, lake_files, capsys):
    from jobs.common.runner import run
    from jobs.segment.actor import SegmentUDF
    from jobs.segment.dataset import build_dataset

    flag = str(tmp_path / "died-once")

    class DiesAfterWrite(SegmentUDF):  # defined here: Ray ships it by value to the actors
        def __call__(self, batch):
            import os

            meta = super().__call__(batch)  # the rows are in OUTPUT now
            if not os.path.exists(flag):
                open(flag, "w").close()
                os._exit(1)  # before the metadata reaches the driver
            return meta

    class FaultyJob(SegmentJob):
        def dataset(self, config, checked, units, resources, target):
            return build_dataset(units, config, resources, checked.vocab, target, actor_class=DiesAfterWrite)

    files, _, _ = lake_files
    names = ["astronaut.jpg", "coffee.png", "chelsea.JPG", "sub/rocket.jpeg"]
    uris = put_files(str(tmp_path / "in"), {f"{i}/{n}": files[n] for i in range(2) for n in names})
    output = str(tmp_path / "out")
    config = JobConfig(input=str(tmp_path / "in"), output=output, vocab="cat, person", model="tiny",
                       resolution=RESOLUTION, batch_size=2, unit_size=4, max_pixels=MAX_PIXELS)
    assert run(FaultyJob(), config) == 0
    assert (tmp_path / "died-once").exists()  # the fault did happen
    assert "8 images (8 segmented, 0 errors" in capsys.readouterr().out
    tables = check_exactly_once(output, uris)  # a plain read: each image once
    assert tables["masks"].num_rows == 8 and len(OutputStore(output).list("masks")) == 2
    assert OutputStore(output).list("_staging") == []


def test_encode_task_dying_after_its_write_is_retried_and_never_duplicates_rows(ray_local, tmp_path, lake_files,
                                                                                  capsys, monkeypatch):
    """The CPU stage (jobs.common.actor.encode_and_write) writes a unit's files, then its worker dies before
    the metadata reaches the driver: Ray retries the task (map_encode's bounded max_retries), the retry writes
    new attempt files, and only one attempt per unit is committed."""
    import jobs.common.actor as actor_module
    from jobs.common.runner import run

    flag = str(tmp_path / "encode-died-once")
    real = actor_module.encode_and_write

    def dies_after_write(batch, encoder, target):  # a closure: Ray ships it by value to the task workers
        import os

        meta = real(batch, encoder, target)
        if not os.path.exists(flag):
            open(flag, "w").close()
            os._exit(1)
        return meta

    monkeypatch.setattr(actor_module, "encode_and_write", dies_after_write)
    files, _, _ = lake_files
    names = ["astronaut.jpg", "coffee.png", "chelsea.JPG", "sub/rocket.jpeg"]
    uris = put_files(str(tmp_path / "in"), {f"{i}/{n}": files[n] for i in range(2) for n in names})
    output = str(tmp_path / "out")
    config = JobConfig(input=str(tmp_path / "in"), output=output, vocab="cat, person", model="tiny",
                       resolution=RESOLUTION, batch_size=2, unit_size=4, max_pixels=MAX_PIXELS)
    assert run(SegmentJob(), config) == 0
    assert (tmp_path / "encode-died-once").exists()  # the fault did happen
    assert "8 images (8 segmented, 0 errors" in capsys.readouterr().out
    tables = check_exactly_once(output, uris)  # a plain read after the run's sweep: each image once
    assert tables["masks"].num_rows == 8 and len(OutputStore(output).list("masks")) == 2
