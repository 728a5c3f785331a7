"""The commit protocol under the faults of issue 20 (docs/commits.md): zombie workers and drivers, lost and
broken leases, failing heartbeats, racing compactions, sweeps of other runs, unreadable commit records, two
index writers, takeovers while new images arrive, retryable error rows and exports during a commit.

Every test drives the real functions (write_results, UnitCommitter, CommitLog, acquire, sweep, load_state,
read_committed, write_index, release_errors, the runner's manifest writer) on local disks or moto S3. A
failing store is a stand-in for the store (an OutputStore subclass, or an fsspec filesystem method that
answers ``OSError("503 SlowDown")``), never a mock of this project's code. Each of these tests fails on the
marker-based design these modules replaced (fixed file names per unit, markers without file identities,
an unfenced lease)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pyarrow as pa
import pytest
from jobtest_utils import read_output

from diffseg.codecs.masks import encode_label_png
from diffseg.lake.commit import WriteTarget, compact_unit, write_results
from diffseg.lake.done_index import load_state, write_index
from diffseg.lake.lease import LeaseLostError, acquire
from diffseg.lake.log import (
    CommitLog,
    CommitRecordError,
    LogFencedError,
    entry_path,
    list_versions,
    new_invocation_id,
)
from diffseg.lake.schemas import SCHEMAS, SEGMENT_TABLES, error_result, results_to_table
from diffseg.lake.store import OutputStore
from diffseg.lake.sweep import sweep
from diffseg.lake.units import make_units, read_committed
from diffseg.lake.writer import UnitCommitter

RUN = "default"
LABEL_PNG = encode_label_png(np.ones((2, 3), np.uint8))  # every pixel class 1 ("cat")


# ----------------------------------------------------------------------------------------------- helpers


def result_row(uri: str, unit_id: str, outcome: str = "ok") -> dict:
    """A worker's result row: "ok" (one mask, one stats row), "read503" (a retryable read error: the store
    throttled) or "decode" (a final decode error)."""
    if outcome == "read503":
        return error_result(uri, unit_id, "read", OSError(f"cannot read {uri!r}: 503 SlowDown"))
    if outcome == "decode":
        return error_result(uri, unit_id, "decode", ValueError(f"cannot decode image {uri!r}: empty"))
    mask = {"width": 3, "height": 2, "method": "diffsegmenter", "label_map_png": LABEL_PNG, "classes": ["cat"],
            "scores_png": None}
    stat = {"method": "diffsegmenter", "class_id": 1, "class_name": "cat", "pixel_count": 6, "fraction": 1.0,
            "bbox_xywh": [0, 0, 3, 2], "score_mean": 0.5, "score_max": 0.9, "components": 1, "rle_counts": "06",
            "rle_size": [2, 3]}
    return {"uri": uri, "unit_id": unit_id, "stage": None, "error_type": None, "message": None, "retryable": None,
            "masks": [mask], "stats": [stat]}


class Invocation:
    """One invocation of a run as the runner starts one: the run's lease (optional), then its ``begin``
    entry (the fence), then the run's state read after it."""

    def __init__(self, store: OutputStore, run_id: str = RUN, lease: bool = True, break_lease: bool = False,
                 stale_s: float = 120.0, heartbeat_s: float = 30.0):
        self.store, self.run_id = store, run_id
        self.lease = acquire(store, run_id, stale_s, break_lease, heartbeat_s) if lease else None
        self.log = CommitLog(store, run_id, new_invocation_id())
        self.log.begin()
        self.done = load_state(store, run_id)
        self.target = WriteTarget(store.output, run_id, "tiny", "h", invocation=self.log.invocation)

    @property
    def invocation(self) -> str:
        return self.log.invocation

    def committer(self, units, before_commit=None) -> UnitCommitter:
        check = before_commit or (self.lease.check if self.lease else None)
        return UnitCommitter(self.store, self.log, units, SEGMENT_TABLES, before_commit=check, background=False)

    def write(self, unit, outcomes: dict | None = None, positions=None, store: OutputStore | None = None) -> pa.Table:
        """What an actor does with a batch holding `positions` of `unit` (default: all): writes the rows, returns
        the metadata for the driver."""
        positions = list(range(len(unit.uris))) if positions is None else list(positions)
        rows = [result_row(unit.uris[p], unit.unit_id, (outcomes or {}).get(unit.uris[p], "ok")) for p in positions]
        return write_results(store or self.store, self.target, SEGMENT_TABLES, results_to_table(rows),
                             np.array(positions), np.full(len(positions), len(unit.uris)))

    def sweep_ended(self) -> list[str]:
        """The start of an invocation: sweeps every ended invocation of the run (as the runner does)."""
        return sweep(self.store, self.log, self.done, self.done.unswept(self.invocation), SCHEMAS)

    def sweep_own(self) -> list[str]:
        """The end of an invocation: sweeps its own uncommitted files."""
        return sweep(self.store, self.log, load_state(self.store, self.run_id), [self.invocation], SCHEMAS)

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()


@pytest.fixture
def invocations():
    """Starts Invocations and releases their leases (stops their heartbeat threads) after the test."""
    started = []

    def start(*args, **kwargs) -> Invocation:
        inv = Invocation(*args, **kwargs)
        started.append(inv)
        return inv

    yield start
    for inv in started:
        inv.release()


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return f"s3://{request.getfixturevalue('bucket')}/out"


def uris_of(n: int, prefix: str = "s3://in/") -> list[str]:
    return [f"{prefix}{i:02d}.jpg" for i in range(n)]


def plain_outcome(output: str) -> dict[str, list[str]]:
    """uri -> the tables holding a row of it, in a plain pyarrow.dataset read of OUTPUT (what DuckDB, pandas
    and polars users do after a run)."""
    where: dict[str, list[str]] = {}
    for table in ("masks", "errors"):
        try:
            data = read_output(output, table)
        except (FileNotFoundError, OSError):
            continue
        for uri in data["uri"].to_pylist():
            where.setdefault(uri, []).append(table)
    return {u: sorted(t) for u, t in sorted(where.items())}


def committed_outcome(output: str, run_id: str | None = RUN) -> dict[str, list[str]]:
    """uri -> the tables holding a committed row of it (diffseg.lake.units.read_committed)."""
    where: dict[str, list[str]] = {}
    for table in ("masks", "errors"):
        for uri in read_committed(output, table, run_id=run_id, columns=["uri"])["uri"].to_pylist():
            where.setdefault(uri, []).append(table)
    return {u: sorted(t) for u, t in sorted(where.items())}


def exactly_once(uris, errors=()) -> dict[str, list[str]]:
    return {u: ["errors"] if u in errors else ["masks"] for u in sorted(uris)}


def file_md5s(store: OutputStore, done) -> dict[str, str]:
    """path -> md5 of the bytes now stored, for every committed file of `done`."""
    paths = [f["path"] for unit in done.units.values() for f in unit["files"].values()]
    return {p: hashlib.md5(store.get(p)).hexdigest() for p in paths}


def recorded_md5s(done) -> dict[str, str]:
    return {f["path"]: f["md5"] for unit in done.units.values() for f in unit["files"].values()}


class DyingStore(OutputStore):
    """A store whose writer process dies after `puts` successful puts (a worker killed between its puts)."""

    def __init__(self, output: str, puts: int):
        super().__init__(output)
        self.left = puts

    def put(self, rel: str, data: bytes) -> None:
        if self.left == 0:
            raise SystemExit("the worker was killed between its puts")
        self.left -= 1
        super().put(rel, data)


# ----------------------------------------------------------------------------------- committed files


def test_zombie_attempt_after_commit_changes_nothing(output, invocations):
    """A later attempt at a committed unit (a task Ray re-runs while the first attempt is cut off but
    alive, or an actor of an invocation that lost the run) with another outcome, dying between its puts
    or reporting late, changes no committed file and no committed row; the next invocation's sweep leaves a
    plain read with every image exactly once."""
    a = invocations(OutputStore(output))
    uris = uris_of(4)
    (unit,) = make_units(uris, 4)
    committer = a.committer([unit])
    committer.add(a.write(unit))
    assert committer.committed == [unit.unit_id]
    done = load_state(a.store, RUN)
    before = file_md5s(a.store, done)
    assert before == recorded_md5s(done)  # the commit records what identifies each file
    assert committed_outcome(output) == exactly_once(uris)

    # a re-run of the same batch: 00.jpg is a read error this time, and the worker dies after its masks
    # and stats puts (the old design overwrote the unit's masks file and left 00.jpg in neither table)
    with pytest.raises(SystemExit):
        a.write(unit, {uris[0]: "read503"}, store=DyingStore(output, puts=2))
    # another re-run with another outcome that completes and reports to the driver after the commit
    late = a.write(unit, {uris[1]: "decode"})
    assert committer.add(late) == []
    committer.finish()

    assert committer.committed == [unit.unit_id] and committer.entries == 1  # the unit is committed once
    assert file_md5s(a.store, done) == before  # no committed file changed
    assert committed_outcome(output) == exactly_once(uris)
    assert not any(a.store.exists(f["path"]) for f in json_files(late))  # the reported late attempt is deleted

    # the invocation ends without sweeping (killed): the next one sweeps the dead attempt's files
    b = invocations(OutputStore(output), break_lease=True)
    swept = b.sweep_ended()
    assert len(swept) == 2 and all("/part-" in rel for rel in swept)  # the dying attempt's masks and stats
    assert plain_outcome(output) == exactly_once(uris)
    assert load_state(b.store, RUN).units.keys() == {unit.unit_id}


def json_files(meta: pa.Table) -> list[dict]:
    import json

    return [f for files in meta.column("files").to_pylist() for f in json.loads(files).values()]


def test_compaction_racing_a_whole_attempt(tmp_path, invocations):
    """A unit covered by two parts is compacted while a whole-unit attempt of the same unit (a retried
    batch) with another outcome also arrives, and the compaction task runs twice (Ray re-ran it). The
    first complete set accepted is committed, the rest is deleted or swept: every image exactly once,
    with the accepted outcome, in the committed rows and in a plain read."""
    output = str(tmp_path / "out")
    a = invocations(OutputStore(output))
    uris = uris_of(4)
    (unit,) = make_units(uris, 4)
    committer = a.committer([unit])
    assert committer.add(a.write(unit, positions=[0, 1])) == []
    (spec,) = committer.add(a.write(unit, positions=[2, 3]))  # covered by parts: a compaction is due
    whole = a.write(unit, {uris[0]: "read503"})  # the whole-unit attempt, 00.jpg a read error this time
    assert committer.add(whole) == []  # arrives while the compaction runs: not accepted
    rerun = compact_unit(spec, SEGMENT_TABLES)  # a first run of the compaction task whose reply is lost ...
    result = compact_unit(spec, SEGMENT_TABLES)  # ... so Ray runs it again: this reply reaches the driver
    committer.compacted(spec, result)
    committer.finish()

    assert committer.committed == [unit.unit_id] and committer.entries == 1
    done = load_state(a.store, RUN)
    assert {t: f["path"] for t, f in done.units[unit.unit_id]["files"].items()} == \
        {t: f["path"] for t, f in result["files"].items()}
    assert file_md5s(a.store, done) == recorded_md5s(done)
    assert {f["path"] for f in rerun["files"].values()}.isdisjoint(f["path"] for f in result["files"].values())
    assert committed_outcome(output) == exactly_once(uris)  # 00.jpg segmented, as the accepted parts say
    assert a.store.list("_staging") == []
    a.sweep_own()  # the end of the invocation: the re-run compaction's files are not named by any commit
    assert plain_outcome(output) == exactly_once(uris)
    assert sorted(a.store.list("masks")) == sorted([result["files"]["masks"]["path"]])


# ----------------------------------------------------------------------------------------- fencing


def test_fenced_driver_commits_nothing(output, invocations):
    """A driver whose run was taken over (its begin entry is followed by another invocation's) commits
    nothing, writes no index and no finish entry; what it committed before stays, the new holder does the
    rest, and a plain read after the new holder's sweep has every image once."""
    a = invocations(OutputStore(output))
    uris = uris_of(8)
    units = make_units(uris, 4)
    committer = a.committer(units)
    committer.add(a.write(units[0]))
    assert committer.committed == [units[0].unit_id]

    b = invocations(OutputStore(output), break_lease=True)  # takes over; a has not heard of it yet
    meta = a.write(units[1], {uris[4]: "decode"})
    with pytest.raises(LogFencedError, match="took the run over"):
        committer.add(meta)  # a's lease check passes (no heartbeat since), its log append does not
    with pytest.raises(LogFencedError):
        write_index(a.store, a.log, load_state(a.store, RUN))
    with pytest.raises(LogFencedError):
        a.log.append("finish", {"status": "succeeded"})
    entries = [e for e in _entries(a.store) if e["invocation"] == a.invocation]
    assert [e["kind"] for e in entries] == ["begin", "commit"]
    assert load_state(a.store, RUN).index_version == -1  # a's snapshot files are named by no index entry

    assert set(b.done.units) == {units[0].unit_id}
    todo = b.done.exclude(uris)
    assert todo == uris[4:]
    b.sweep_ended()  # a's uncommitted unit-1 files go
    (rest,) = make_units(todo, 4)
    b_committer = b.committer([rest])
    b_committer.add(b.write(rest))
    b_committer.finish()
    b.sweep_own()
    assert plain_outcome(output) == exactly_once(uris)
    assert committed_outcome(output) == exactly_once(uris)


def _entries(store: OutputStore, run_id: str = RUN) -> list[dict]:
    from diffseg.lake.log import read_entries

    return read_entries(store, run_id, list_versions(store, run_id))


def test_lease_lost_between_check_and_commit(output, invocations):
    """The lease check before a commit passes, then another invocation takes the run over before the
    commit entry is written: the entry is not written (the fence), nothing of the old holder is committed."""
    a = invocations(OutputStore(output))
    uris = uris_of(4)
    units = make_units(uris, 2)
    taken = []

    def check_then_lose():
        a.lease.check()  # passes: the lease is still ours
        if len(taken) == 0 and a.log.next_version > 1:  # after the first commit
            taken.append(Invocation(OutputStore(output), break_lease=True))

    committer = a.committer(units, before_commit=check_then_lose)
    committer.add(a.write(units[0]))
    with pytest.raises(LogFencedError):
        committer.add(a.write(units[1]))
    (b,) = taken
    try:
        state = load_state(a.store, RUN)
        assert set(state.units) == {units[0].unit_id}
        assert [e["invocation"] for e in _entries(a.store)][-1] == b.invocation  # nothing of a after b's begin
        assert committed_outcome(output) == exactly_once(uris[:2])
    finally:
        b.release()


def test_break_lease_holder_cannot_commit_or_write_the_manifest(tmp_path, invocations):
    """``--break-lease`` against a live holder: the old holder learns it at its next heartbeat, commits
    nothing more, and cannot write the manifest (the runner writes it only after a fenced finish entry),
    the done index, or remove the new holder's lease."""
    from jobtest_utils import put_files

    from diffseg.lake.lease import lease_path
    from diffseg.lake.manifest import MANIFEST, run_manifest_path
    from diffseg.lake.plan import units_of_plan
    from jobs.common.bookkeeping import end_invocation as _end_invocation
    from jobs.common.config import JobConfig
    from jobs.common.invocation import Invocation as _Invocation
    from jobs.segment.run import SegmentJob

    uris = put_files(str(tmp_path / "in"), {f"{i:02d}.jpg": b"x" for i in range(6)})
    output = str(tmp_path / "out")
    config = JobConfig(input=str(tmp_path / "in"), output=output, vocab="cat", model="tiny", unit_size=3)
    job = SegmentJob()

    def start(break_lease: bool) -> tuple[Invocation, _Invocation]:
        checked = job.check(config)
        inv = invocations(checked.store, break_lease=break_lease)
        planned = job.plan(config, checked, inv.done, inv.log.invocation)
        run = _Invocation(job, config, checked, planned, inv.done, "2026-01-01T00:00:00Z", 0.0, 0.0,
                          commit_log=inv.log)
        run.write_manifest("running")
        return inv, run

    a, a_run = start(break_lease=False)
    units = list(units_of_plan(a.store, a_run.planned.units))  # the stored plan's units, read back
    a_run.writer = a.committer(units)
    a_run.writer.add(a.write(units[0]))

    b, b_run = start(break_lease=True)  # --break-lease: b plans what a has not committed
    assert [u.uris for u in units_of_plan(b.store, b_run.planned.units)] == [units[1].uris]  # (spread order)
    assert sorted(units[0].uris + units[1].uris) == uris
    a.lease.beat()  # a's next heartbeat finds the lease rewritten
    with pytest.raises(LeaseLostError, match="taken over"):
        a_run.writer.add(a.write(units[1]))
    try:  # the runner writes the manifest only after a fenced finish entry: it raises or logs the fence
        a_run.write_manifest("succeeded")
    except LogFencedError:
        pass
    _end_invocation(a_run)  # the runner's bookkeeping after the pipeline: logs the fence, writes nothing
    a.release()

    store = a.store
    for rel in (MANIFEST, run_manifest_path(RUN)):
        manifest = store.get_json(rel)
        assert (manifest["status"], manifest["invocation"]) == ("running", b.invocation)
    assert store.list(f"_history/{RUN}") == []
    assert store.list(f"_index/{RUN}") == []
    assert store.get_json(lease_path(RUN))["token"] == b.lease.token
    assert [e["kind"] for e in _entries(store) if e["invocation"] == a.invocation] == ["begin", "commit"]
    assert set(load_state(store, RUN).units) == {units[0].unit_id}


class HeartbeatFails(OutputStore):
    """A store that answers 503 SlowDown to every write of the run's lease once `down` is set (the holder is
    cut off from the store; its log writes would fail too, but it must stop before trying)."""

    down = False

    def put_if(self, rel: str, data: bytes, expected: bytes | None) -> bool:
        if self.down and rel.startswith("_leases/"):
            raise OSError("503 SlowDown: Please reduce your request rate.")
        return super().put_if(rel, data, expected)


def test_failing_heartbeats_stop_the_holder_before_its_lease_can_be_taken_over(output, invocations):
    """Heartbeats that fail (503) are not swallowed for ever: once none reached the store for the stale limit
    minus the margin, the holder stops committing with a message saying so, while its lease is still fresh
    to others; once it is stale another invocation takes over and finishes the rest exactly once."""
    import time

    from diffseg.lake.lease import LeaseHeldError

    store = HeartbeatFails(output)
    a = invocations(store, stale_s=4.0, heartbeat_s=0.2)  # margin: max(0.2, 4 / 4) = 1 s: stops after 3 s
    uris = uris_of(60)
    units = make_units(uris, 1)
    committer = a.committer(units)
    committer.add(a.write(units[0]))
    store.down = True
    stopped, deadline = None, time.monotonic() + 60
    for unit in units[1:]:
        assert time.monotonic() < deadline, "the holder kept committing without a heartbeat"
        try:
            committer.add(a.write(unit))
        except LeaseLostError as exc:
            stopped = exc
            break
        time.sleep(0.1)
    assert stopped is not None, "the holder committed every unit without a heartbeat"
    assert "no heartbeat reached the store" in str(stopped) and "rerun the same command" in str(stopped)
    with pytest.raises(LeaseHeldError):  # when it stops, nobody may take the run over yet
        acquire(OutputStore(output), RUN, stale_s=4.0)
    committed = set(load_state(OutputStore(output), RUN).units)
    assert 1 <= len(committed) < len(units)

    while True:  # once stale, the lease is taken over without --break-lease
        assert time.monotonic() < deadline
        try:
            b = invocations(OutputStore(output), stale_s=4.0, heartbeat_s=0.2)
            break
        except LeaseHeldError:
            time.sleep(0.2)
    assert set(b.done.units) == committed
    todo = b.done.exclude(uris)
    assert len(todo) == len(uris) - len(committed)
    b.sweep_ended()
    rest = make_units(todo, 20)
    b_committer = b.committer(rest)
    for unit in rest:
        b_committer.add(b.write(unit))
    b_committer.finish()
    b.sweep_own()
    assert plain_outcome(output) == exactly_once(uris)


# --------------------------------------------------------------------------- reading the commit log


@pytest.fixture
def failing_gets(monkeypatch):
    """S3 GETs (s3fs ``_cat_file``: what reads of commit entries use) answer ``OSError("503 SlowDown")``
    when ``rule(key, n)`` says so (`n`: how many GETs of that key came before). A stand-in for a store
    that throttles after the client's own retries."""
    import s3fs

    original = s3fs.S3FileSystem._cat_file
    calls: dict[str, int] = {}
    state = {"rule": lambda key, n: False, "failed": 0, "gets": 0}

    async def cat_file(self, path, *args, **kwargs):
        n = calls.get(path, 0)
        calls[path] = n + 1
        state["gets"] += 1
        if state["rule"](path, n):
            state["failed"] += 1
            raise OSError(f"503 SlowDown: Please reduce your request rate ({path})")
        return await original(self, path, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", cat_file)

    def set_rule(rule) -> dict:
        calls.clear()
        state.update(rule=rule, failed=0, gets=0)
        return state

    return set_rule


def two_entries(output: str, invocations) -> tuple[Invocation, list[str]]:
    """A run with two commit entries (versions 1 and 2) of two units of two images each."""
    a = invocations(OutputStore(output), lease=False)
    uris = uris_of(4)
    units = make_units(uris, 2)
    committer = a.committer(units)
    for unit in units:
        committer.add(a.write(unit))
    assert committer.entries == 2 and list_versions(a.store, RUN) == [0, 1, 2]
    return a, uris


def test_unreadable_entry_fails_loudly(bucket, invocations, failing_gets):
    """A commit entry that keeps failing (503 after the retries), that is damaged, or that was deleted by hand
    is an error naming it, never fewer rows: read_committed, the export and eval readers, and planning."""
    from diffseg.lake.read import read_table

    output = f"s3://{bucket}/out"
    a, uris = two_entries(output, invocations)
    assert read_committed(output, "masks").num_rows == 4
    bad = entry_path(RUN, 2)

    failing_gets(lambda key, n: key.endswith(bad))  # every GET of entry 2 answers 503
    with pytest.raises(CommitRecordError, match=bad):
        read_committed(output, "masks")
    with pytest.raises(CommitRecordError, match=bad):
        load_state(OutputStore(output), RUN)  # planning: never "not committed"
    failing_gets(lambda key, n: False)

    good = a.store.get(bad)
    a.store.put(bad, good[: len(good) // 2])  # damaged: a truncated record
    with pytest.raises(CommitRecordError, match=bad):
        read_table(output, "masks")
    a.store.put(bad, good)
    assert read_committed(output, "masks").num_rows == 4

    a.store.remove([entry_path(RUN, 1)])  # deleted by hand: versions 0 and 2 remain
    with pytest.raises(CommitRecordError, match=entry_path(RUN, 1)):
        read_committed(output, "masks")


def test_transient_entry_reads_give_all_rows_or_raise(bucket, invocations, failing_gets):
    """GETs of commit entries that fail now and then (503 SlowDown, within and beyond the reader's retries):
    read_committed returns every committed row or raises, never fewer; and an invocation starting on that
    store (its planning and its sweep of the killed invocation) never deletes a committed unit."""
    output = f"s3://{bucket}/out"
    a, uris = two_entries(output, invocations)  # a is killed: its invocation is not swept
    stray = a.write(make_units(uris[:2], 2)[0])  # and it left an uncommitted attempt behind
    assert len(json_files(stray)) == 3

    failing_gets(lambda key, n: "/_log/" in key and n < 2)  # each entry's first two GETs fail
    assert committed_outcome(output) == exactly_once(uris)

    outcomes = []
    for seed in range(4):
        rng = random.Random(seed)
        state = failing_gets(lambda key, n, rng=rng: "/_log/" in key and rng.random() < 0.4)
        try:
            rows = read_committed(output, "masks").num_rows
            outcomes.append("all" if rows == 4 else f"{rows} rows")
        except CommitRecordError:
            outcomes.append("raised")
        try:  # an invocation starts: its state and its sweep of the killed invocation, on the same flaky store
            b = Invocation(OutputStore(output), lease=False)
            b.sweep_ended()
            outcomes.append("planned")
        except CommitRecordError:
            outcomes.append("raised")
        assert state["failed"] > 0
    failing_gets(lambda key, n: False)
    assert set(outcomes) <= {"all", "raised", "planned"}, outcomes
    assert "all" in outcomes and "planned" in outcomes  # the retries do carry most reads through
    assert committed_outcome(output) == exactly_once(uris)  # every committed file is still there
    assert plain_outcome(output) == exactly_once(uris)  # and the killed invocation's stray attempt was swept


def test_a_stale_limit_shorter_than_the_heartbeat_still_commits(tmp_path, invocations):
    """``--lease-stale-minutes 0.5`` (30 s, the default heartbeat period): the holder must still be able to
    commit (a margin of the whole stale limit would stop it before its first commit)."""
    output = str(tmp_path / "out")
    a = invocations(OutputStore(output), stale_s=30.0)  # the runner's acquire: heartbeat_s left at its default
    (unit,) = make_units(uris_of(2), 2)
    committer = a.committer([unit])
    committer.add(a.write(unit))
    assert committer.committed == [unit.unit_id]


# ----------------------------------------------------------------------------- sweeps and indexes


class HookStore(OutputStore):
    """A store that calls `hook()` once, just before the first list, prefix listing or conditional put whose
    path starts with `prefix`: another process acting at that exact moment."""

    def __init__(self, output: str, prefix: str, hook, armed: bool = True):
        super().__init__(output)
        self.prefix, self.hook, self.fired = prefix, hook, not armed

    def _at(self, rel: str) -> None:
        if not self.fired and rel.startswith(self.prefix):
            self.fired = True
            self.hook()

    def list(self, rel_dir: str) -> list[str]:
        self._at(rel_dir)
        return super().list(rel_dir)

    def list_prefix(self, rel_prefix: str) -> list[str]:
        self._at(rel_prefix)
        return super().list_prefix(rel_prefix)

    def put_if(self, rel: str, data: bytes, expected: bytes | None) -> bool:
        self._at(rel)
        return super().put_if(rel, data, expected)


@pytest.mark.parametrize("moment", ["_log/r2", "_leases/r2", "masks/part-r2-"],
                         ids=["while-listing-runs", "while-taking-the-lease", "while-sweeping"])
def test_a_run_starting_while_another_run_sweeps_it_loses_nothing(tmp_path, invocations, moment):
    """Run r1's invocation sweeps the other runs of OUTPUT (sweep_other_runs) while run r2 starts at three
    moments: when r1 reads r2's log, when r1 takes r2's lease, and inside r1's sweep of r2. r2 either starts
    (r1 then leaves it alone) or is refused until r1 is done; either way every unit r2 commits stays
    readable and a plain read after r2 finishes has each of its images once."""
    from diffseg.lake.lease import LeaseHeldError
    from diffseg.lake.sweep import sweep_other_runs

    output = str(tmp_path / "out")
    uris = uris_of(8, "s3://r2/")
    units = make_units(uris, 4)
    killed = invocations(OutputStore(output), run_id="r2", lease=False)  # r2's killed invocation: unit 0 ...
    committer = killed.committer(units)
    committer.add(killed.write(units[0]))
    killed.write(units[1], positions=[0, 1])  # ... and a part of unit 1, never committed
    r2: list[Invocation] = []
    refused: list[Exception] = []

    def start_r2() -> None:
        try:
            r2.append(invocations(OutputStore(output), run_id="r2"))
        except LeaseHeldError as exc:
            refused.append(exc)

    swept = sweep_other_runs(HookStore(output, moment, start_r2), "r1", SCHEMAS, stale_s=120.0)
    if not r2:  # refused while r1 held r2's lease: the operator's resubmission
        assert refused and moment == "masks/part-r2-"
        start_r2()
    (b,) = r2
    b.sweep_ended()
    assert set(b.done.units) == {units[0].unit_id}
    todo = b.done.exclude(uris)
    (rest,) = make_units(todo, 4)
    b_committer = b.committer([rest])
    b_committer.add(b.write(rest))
    b_committer.finish()
    b.sweep_own()
    assert swept.get("r2", 0) in (0, 3)  # r1 swept nothing of r2, or only the killed invocation's part
    assert committed_outcome(output, "r2") == exactly_once(uris)
    assert plain_outcome(output) == exactly_once(uris)


def full_replay(store: OutputStore, run_id: str = RUN):
    """The run's state replayed from every entry of its log (no index snapshot): what the index must equal."""
    from diffseg.lake.done_index import empty_done, replay

    return replay(empty_done(), _entries(store, run_id))


@pytest.mark.parametrize("moment", ["_log/default/", "_index/default"],
                         ids=["before-the-index-entry", "after-the-index-entry"])
def test_two_index_writers_never_pair_one_writers_keys_with_the_others_units(tmp_path, invocations, moment):
    """Invocation a writes the done index (write_index) while b takes the run over, commits a unit and
    writes its own index: before a's index entry (a is fenced) or after it (while a removes the snapshots
    its entry replaced). Readers then see the state of the log, never a mix: every committed key with its
    unit, no key lost, no unit without its keys."""
    output = str(tmp_path / "out")
    uris = uris_of(16)
    units = make_units(uris, 4)
    b_box = []

    def b_takes_over() -> None:
        b = invocations(OutputStore(output), break_lease=True)
        (rest,) = make_units(b.done.exclude(uris), 4)
        b_committer = b.committer([rest])
        b_committer.add(b.write(rest))
        b_committer.finish()
        assert write_index(b.store, b.log, load_state(b.store, RUN)) is not None
        b_box.append(b)

    a = invocations(HookStore(output, moment, b_takes_over, armed=False))
    committer = a.committer(units[:3])
    for unit in units[:2]:
        committer.add(a.write(unit))
    first = write_index(a.store, a.log, load_state(a.store, RUN))  # an earlier snapshot, to be replaced
    assert first is not None
    committer.add(a.write(units[2]))
    a.store.fired = False
    try:
        write_index(a.store, a.log, load_state(a.store, RUN))
    except LogFencedError:
        assert moment == "_log/default/"
    assert b_box, "the other writer did not run"
    store = OutputStore(output)
    state, truth = load_state(store, RUN), full_replay(store)
    assert state.units == truth.units
    assert sorted(state.all_keys().column("uri").to_pylist()) == sorted(truth.all_keys().column("uri").to_pylist()) == uris
    assert state.duplicates() == 0
    assert committed_outcome(output) == exactly_once(uris)
    newest = max(e["version"] for e in _entries(store) if e["kind"] == "index")
    assert state.index_version == newest  # the newest snapshot is whole: a did not remove b's files

    store.remove(store.list(f"_index/{RUN}"))  # snapshots removed by hand: the log still has everything
    state = load_state(store, RUN)
    assert state.index_version == -1 and state.units == truth.units and len(state) == len(uris)


def test_takeover_while_new_images_arrive_commits_no_key_twice(output, invocations):
    """a cut 8 images into units of 4 and committed one; new images arrive and b takes the run over: b cuts
    the remaining keys differently (its units overlap a's uncommitted one). a's late commit of its unit is
    fenced, so no key is committed twice and a plain read has each image once."""
    a = invocations(OutputStore(output))
    old = uris_of(8)
    a_units = make_units(old, 4)
    committer = a.committer(a_units)
    committer.add(a.write(a_units[0]))
    late = a.write(a_units[1])  # a's actors finished unit 1; its driver has not committed it yet

    new = [f"s3://in/{i:02d}b.jpg" for i in range(4, 8)]  # arrive sorted between a's unit-1 images
    b = invocations(OutputStore(output), break_lease=True)
    todo = b.done.exclude(sorted(old + new))
    b_units = make_units(todo, 4)
    assert {u.uris for u in b_units}.isdisjoint({a_units[1].uris})  # cut differently
    with pytest.raises(LogFencedError):
        committer.add(late)
    b.sweep_ended()
    b_committer = b.committer(b_units)
    for unit in b_units:
        b_committer.add(b.write(unit))
    b_committer.finish()
    b.sweep_own()
    state = load_state(b.store, RUN)
    assert state.duplicates() == 0 and len(state) == 12
    assert committed_outcome(output) == exactly_once(old + new)
    assert plain_outcome(output) == exactly_once(old + new)


# ----------------------------------------------------------------------------------- error rows


def test_retryable_errors_are_retried_by_a_rerun_and_final_ones_with_retry_errors(output, invocations):
    """A read error the store caused (503 SlowDown: retryable by diffseg.lake.faults) is retried by a plain
    rerun and ends in masks, its old error row gone from a plain read; a final decode error stays until
    ``--retry-errors``. After each finished invocation every image is in exactly one table."""
    from diffseg.lake.retry import release_errors

    uris = uris_of(4)
    throttled, corrupt = uris[1], uris[2]
    (unit,) = make_units(uris, 4)

    def invocation(retry_errors: bool, outcomes: dict, finish: bool = True) -> list[str]:
        """One invocation: plans, releases the error rows of what it plans, processes, commits, sweeps."""
        inv = Invocation(OutputStore(output))
        try:
            inv.sweep_ended()
            todo = inv.done.exclude(uris, retry_errors=retry_errors)
            if todo:
                release_errors(inv.store, inv.log, inv.done, pa.array(todo, pa.string()), SEGMENT_TABLES)
                if finish:
                    units = make_units(todo, 4)
                    committer = inv.committer(units)
                    for u in units:
                        committer.add(inv.write(u, outcomes))
                    committer.finish()
            if finish:
                inv.sweep_own()
            return todo
        finally:
            inv.release()

    assert invocation(False, {throttled: "read503", corrupt: "decode"}) == uris
    errors = read_output(output, "errors").to_pylist()
    assert {r["uri"]: r["retryable"] for r in errors} == {throttled: True, corrupt: False}
    assert plain_outcome(output) == exactly_once(uris, errors={throttled, corrupt})

    assert invocation(False, {throttled: "read503"}, finish=False) == [throttled]  # released, then killed
    assert plain_outcome(output) == exactly_once(set(uris) - {throttled}, errors={corrupt})
    assert invocation(False, {}) == [throttled]  # the next rerun plans it again and segments it
    assert plain_outcome(output) == exactly_once(uris, errors={corrupt})
    assert committed_outcome(output) == exactly_once(uris, errors={corrupt})
    assert invocation(False, {}) == []  # a final error is not retried by a plain rerun ...
    assert invocation(True, {}) == [corrupt]  # ... but by --retry-errors
    assert plain_outcome(output) == committed_outcome(output) == exactly_once(uris)
    assert read_output(output, "errors").num_rows == 0


# ------------------------------------------------------------------------------------ readers


def test_export_pairs_masks_and_stats_of_the_same_units_during_a_commit(tmp_path, monkeypatch):
    """An export (diffseg.export.source.iter_images, what every exporter reads) running while the run commits
    another unit gives every exported image its own statistics."""
    import fsspec.implementations.local as local

    from diffseg.export.source import iter_images, select

    output = str(tmp_path / "out")
    store = OutputStore(output)
    store.put_json("manifest.json", {"run_id": RUN, "vocabulary": {"classes": ["cat"]}, "model": {"uri": "tiny"},
                                     "config": {"methods": ["diffsegmenter"]}})
    uris = uris_of(10)
    units = make_units(uris, 5)
    a = Invocation(store, lease=False)
    committer = a.committer(units)
    for unit in units:
        committer.add(a.write(unit))
    selection = select(output)
    assert selection.uris == uris
    first = min(u.unit_id for u in units)
    new = next(u for u in (make_units([f"s3://in/new{k}.jpg"], 1)[0] for k in range(1000)) if u.unit_id < first)

    original = local.LocalFileSystem._open
    fired = []

    def open_then_commit(self, path, *args, **kwargs):  # another invocation commits as the export starts reading
        if "/masks/part-" in str(path) and not fired:
            fired.append(path)
            b = Invocation(OutputStore(output), lease=False)
            b.committer([new]).add(b.write(new))
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(local.LocalFileSystem, "_open", open_then_commit)
    images = list(iter_images(selection))
    assert fired
    missing = [image.uri for image in images if [s["uri"] for s in image.stats] != [image.uri]]
    assert missing == [], f"{len(missing)} of {len(images)} exported images lack their statistics"


def test_zombie_write_after_the_sweep_is_gone_after_the_next_run(tmp_path, invocations):
    """A worker of a fenced invocation, still alive, writes an attempt after the new holder swept that
    invocation. After the next finished invocation of the run a plain read has each image once again."""
    output = str(tmp_path / "out")
    uris = uris_of(8)
    units = make_units(uris, 4)
    a = invocations(OutputStore(output))
    a.committer(units).add(a.write(units[0]))
    b = invocations(OutputStore(output), break_lease=True)
    b.sweep_ended()
    a.write(units[1], {uris[5]: "decode"})  # a's zombie actor, after b's sweep of a
    b_committer = b.committer([units[1]])
    b_committer.add(b.write(units[1]))
    b_committer.finish()
    b.sweep_own()
    b.release()
    c = invocations(OutputStore(output))  # the next run: nothing to do, its start sweeps what is dead
    c.sweep_ended()
    assert c.done.exclude(uris) == []
    c.sweep_own()
    assert plain_outcome(output) == exactly_once(uris)


# --------------------------------------------------------------------------------- lost replies


@pytest.fixture
def proxy(s3_endpoint, monkeypatch):
    """Starts a tests/faultproxy.py FaultProxy in front of moto and points new S3 clients at it."""
    import s3fs
    from faultproxy import FaultProxy

    started = []

    def start(**kwargs) -> FaultProxy:
        fault_proxy = FaultProxy(s3_endpoint, **kwargs).start()
        started.append(fault_proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
        s3fs.S3FileSystem.clear_instance_cache()
        return fault_proxy

    yield start
    s3fs.S3FileSystem.clear_instance_cache()
    for fault_proxy in started:
        fault_proxy.stop()


def test_a_lost_reply_to_a_conditional_write_is_not_someone_elses_write(bucket, proxy, invocations):
    """The store did a conditional write but its reply was lost (the client saw 503 and retried, and the
    retry's condition failed because of the first write): the lease is still taken (not "held by another
    invocation": by this one), a heartbeat is not "taken over", and a log entry is this invocation's."""
    output = f"s3://{bucket}/out"
    fault_proxy = proxy(lost_replies={"_leases/": 2, "_log/": 2})  # the first two writes of each
    a = invocations(OutputStore(output), heartbeat_s=0.2)  # acquire (lease write 1), begin (log write 1)
    a.lease.beat()  # lease write 2
    a.lease.check()
    (unit,) = make_units(uris_of(2), 2)
    committer = a.committer([unit])
    committer.add(a.write(unit))  # log write 2
    assert fault_proxy.summary()["failed"]["lost reply"] == 4
    assert committer.committed == [unit.unit_id]
    assert [e["invocation"] for e in _entries(a.store)] == [a.invocation] * 2
    assert committed_outcome(output) == exactly_once(uris_of(2))


def test_a_run_killed_before_its_first_commit_is_swept_by_another_run(output, invocations):
    """Run r2 is killed before its first commit (its workers wrote a unit's files) and never rerun; run r1
    then processes the same images. r1's start sweeps r2's dead invocation, so after r1 a plain read of the
    tables has each image once."""
    from diffseg.lake.sweep import sweep_other_runs

    uris = uris_of(4)
    (unit,) = make_units(uris, 4)
    killed = invocations(OutputStore(output), run_id="r2", lease=False)  # its lease went stale with it
    killed.write(unit)
    r1 = invocations(OutputStore(output), run_id="r1")
    assert sweep_other_runs(r1.store, "r1", SCHEMAS, stale_s=120.0) == {"r2": 3}
    committer = r1.committer([unit])
    committer.add(r1.write(unit))
    committer.finish()
    r1.sweep_own()
    assert plain_outcome(output) == exactly_once(uris)


@pytest.mark.parametrize("stage,exc,retryable", [
    ("read", OSError("503 SlowDown: Please reduce your request rate."), True),
    ("read", ConnectionResetError(104, "Connection reset by peer"), True),
    ("read", TimeoutError("read timed out"), True),
    ("read", PermissionError("ExpiredToken: the provided token has expired"), True),
    ("model", RuntimeError("CUDA error: an illegal memory access was encountered"), True),
    ("read", FileNotFoundError("s3://in/00.jpg"), False),
    ("decode", ValueError("cannot identify image file"), False),
])
def test_error_rows_say_whether_a_rerun_retries_them(stage, exc, retryable):
    """Each error row carries ``retryable`` (diffseg.lake.faults): the store, the network, credentials and the
    device are transient; missing or undecodable content is final."""
    assert error_result("s3://in/00.jpg", "u", stage, exc)["retryable"] is retryable
