"""One writer per run: the lease refuses a second holder (naming the first and how to take over), is
taken over when stale or with --break-lease, and a holder that lost it commits nothing more."""

from __future__ import annotations

import json
import threading
import time

import pytest

from diffseg.lake.lease import LeaseHeldError, LeaseLostError, acquire, lease_path
from diffseg.lake.store import OutputStore


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return OutputStore(str(tmp_path / "out"))
    bucket = request.getfixturevalue("bucket")
    return OutputStore(f"s3://{bucket}/out")


def test_second_holder_is_refused_naming_the_first_and_a_stale_lease_is_taken_over(store):
    first = acquire(store, "nightly", stale_s=600)
    with pytest.raises(LeaseHeldError) as exc:
        acquire(store, "nightly", stale_s=600)
    message = str(exc.value)
    holder = json.loads(store.get(lease_path("nightly")))
    assert f"pid {holder['pid']}" in message and repr(holder["host"]) in message and "--break-lease" in message
    assert "10 minutes" in message  # stale_s=600 here
    other_run = acquire(store, "other", stale_s=600)  # another run of the same OUTPUT is not concerned
    other_run.release()

    time.sleep(1.1)
    second = acquire(store, "nightly", stale_s=1)  # the first holder's heartbeat is older than 1 s: stale
    first.beat()  # the first holder finds out at its next heartbeat ...
    with pytest.raises(LeaseLostError, match="taken over"):
        first.check()  # ... and commits nothing more
    first.release()  # and never removes the new holder's lease
    assert json.loads(store.get(lease_path("nightly")))["token"] == second.token
    third = acquire(store, "nightly", stale_s=600, break_lease=True)  # a fresh lease, broken on purpose
    second.beat()
    assert second.lost and third.lost is None
    third.release()
    assert not store.exists(lease_path("nightly"))


def test_two_invocations_starting_together_get_one_lease(store):
    won, refused = [], []
    barrier = threading.Barrier(4)

    def take():
        barrier.wait()
        try:
            won.append(acquire(store, "race", stale_s=600))
        except LeaseHeldError:
            refused.append(1)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 3
    won[0].release()


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    import subprocess
    import sys

    store = OutputStore(str(tmp_path))
    code = ("import sys; from diffseg.lake.lease import acquire; from diffseg.lake.store import OutputStore; "
            "acquire(OutputStore(sys.argv[1]), 'r', heartbeat_s=3600)")  # exits without releasing: a kill
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert store.exists(lease_path("r"))
    lease = acquire(store, "r", stale_s=3600)
    assert json.loads(store.get(lease_path("r")))["token"] == lease.token
    lease.release()


def test_heartbeat_keeps_the_lease_fresh(tmp_path):
    store = OutputStore(str(tmp_path))
    lease = acquire(store, "r", heartbeat_s=0.2)
    first = json.loads(store.get(lease_path("r")))["heartbeat_unix"]
    time.sleep(1.5)
    assert json.loads(store.get(lease_path("r")))["heartbeat_unix"] > first and lease.lost is None
    lease.release()
