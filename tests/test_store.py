"""The state file, on real SQLite files: creation, migrations, rows, and surviving a killed writer."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from rackwatch import store as store_module
from rackwatch.errors import StoreError
from rackwatch.model import Outcome
from rackwatch.store import MIGRATIONS, Store, _migrate

T0 = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store.open(path) as store:
        yield store


def begin(store: Store, cycle_id: int, agent: str, minutes: float = 0, rack: str = "r1") -> int:
    return store.begin_job(
        cycle_id,
        rack=rack,
        agent=agent,
        machine=agent,
        queue=agent,
        job_id=f"job-{agent}-{minutes}",
        at=at(minutes),
    )


def pragma(path: Path, name: str) -> object:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


# opening


def test_open_creates_a_missing_directory_privately(tmp_path: Path) -> None:
    """Opening a state file in a directory that does not exist creates it with mode 0700."""
    path = tmp_path / "var" / "rackwatch" / "state.db"
    Store.open(path).close()
    assert path.is_file()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_new_file_is_readable_by_its_owner_only(path: Path) -> None:
    """A state file created by the store has mode 0600."""
    Store.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_existing_file_keeps_its_mode(path: Path) -> None:
    """An existing state file keeps the mode the operator gave it."""
    Store.open(path).close()
    path.chmod(0o640)
    Store.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_open_turns_on_wal_and_sets_the_schema_version(path: Path) -> None:
    """The file is in WAL mode and its user_version is the number of migrations."""
    Store.open(path).close()
    assert pragma(path, "journal_mode") == "wal"
    assert pragma(path, "user_version") == len(MIGRATIONS)


def test_reopening_keeps_rows_and_schema(path: Path) -> None:
    """Opening an up-to-date file again migrates nothing and loses nothing."""
    with Store.open(path) as store:
        cycle_id = store.start_cycle("r1", at(0))
    with Store.open(path) as store:
        assert store.cycle(cycle_id).rack == "r1"
    assert pragma(path, "user_version") == len(MIGRATIONS)


def test_schema_newer_than_the_code_is_refused(path: Path) -> None:
    """A file written by a newer rackwatch is not touched, by the daemon or by the CLI."""
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="written by a newer rackwatch") as caught:
        Store.open(path)
    assert str(path) in str(caught.value)
    with pytest.raises(StoreError, match="written by a newer rackwatch"):
        Store.open_readonly(path)
    assert pragma(path, "user_version") == len(MIGRATIONS) + 1


def test_file_that_is_not_a_database_is_refused(path: Path) -> None:
    """A file that is not SQLite gives one StoreError line naming it, not a sqlite3 traceback."""
    path.write_text("[maas]\nurl = 'http://maas'\n" * 10)
    for opener in (Store.open, Store.open_readonly):
        with pytest.raises(StoreError) as caught:
            opener(path)
        assert str(path) in str(caught.value)
        assert "not a database" in str(caught.value)
        assert "\n" not in str(caught.value)


def test_directory_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    """A state file whose directory cannot be created gives a StoreError naming the file."""
    (tmp_path / "taken").write_text("a file where the directory should be")
    path = tmp_path / "taken" / "state.db"
    with pytest.raises(StoreError, match="cannot create directory") as caught:
        Store.open(path)
    assert str(path) in str(caught.value)


def test_readonly_open_of_a_missing_file_fails_and_creates_nothing(path: Path) -> None:
    """The CLI's read-only open never creates a state file."""
    with pytest.raises(StoreError, match="no such file"):
        Store.open_readonly(path)
    assert not path.exists()


# migrations


def test_failing_migration_step_leaves_version_and_schema_untouched(path: Path) -> None:
    """A step that fails halfway is rolled back whole, and the steps before it stay applied."""
    steps = (
        "CREATE TABLE first (x INTEGER);",
        "CREATE TABLE second (x INTEGER); INSERT INTO missing VALUES (1);",
    )
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(StoreError, match="schema 2"):
            _migrate(conn, path, steps)
        assert not conn.in_transaction
    finally:
        conn.close()
    assert pragma(path, "user_version") == 1
    assert tables(path) == {"first"}


def test_migration_steps_run_in_order_from_the_current_version(path: Path) -> None:
    """Only the steps after the file's version run, trigger bodies with inner ';' included."""
    steps = (
        "CREATE TABLE log (x TEXT);",
        """
        CREATE TABLE items (x TEXT);
        CREATE TRIGGER logged AFTER INSERT ON items BEGIN
            INSERT INTO log VALUES (new.x);
        END;
        """,
    )
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _migrate(conn, path, steps[:1])
        conn.execute("INSERT INTO log VALUES ('kept')")
        _migrate(conn, path, steps)
        conn.execute("INSERT INTO items VALUES ('added')")
        assert [row[0] for row in conn.execute("SELECT x FROM log")] == ["kept", "added"]
    finally:
        conn.close()
    assert pragma(path, "user_version") == 2


def test_step_applied_meanwhile_by_another_process_is_not_an_error(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If another process applies a step between our version read and our attempt, we go on."""
    steps = ("CREATE TABLE first (x INTEGER);",)
    other = sqlite3.connect(path, isolation_level=None)
    _migrate(other, path, steps)
    other.close()

    real = store_module._user_version
    reads: list[int] = []

    def stale_first_read(conn: sqlite3.Connection) -> int:
        reads.append(1)
        return 0 if len(reads) == 1 else real(conn)

    monkeypatch.setattr(store_module, "_user_version", stale_first_read)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _migrate(conn, path, steps)
    finally:
        conn.close()
    assert len(reads) == 2  # the step was tried, failed, and the version read again
    assert pragma(path, "user_version") == 1


# checks


def test_job_round_trip(store: Store) -> None:
    """A job is unfinished from begin_job until finish_check, and keeps every field given."""
    cycle_id = store.start_cycle("r1", at(0))
    check_id = begin(store, cycle_id, "agent-1", minutes=1)

    [pending] = store.unfinished()
    assert pending.id == check_id
    assert (pending.job_id, pending.queue, pending.outcome) == ("job-agent-1-1", "agent-1", None)
    assert pending.submitted_at is None
    assert pending.duration_s is None

    store.mark_submitted(check_id, at(2))
    store.finish_check(
        check_id, outcome=Outcome.FAILED, at=at(12), detail="provision failed", provision_status=1
    )
    assert store.unfinished() == []
    [done] = store.checks_of_cycle(cycle_id)
    assert done.outcome is Outcome.FAILED
    assert (done.detail, done.provision_status) == ("provision failed", 1)
    assert (done.created_at, done.submitted_at, done.finished_at) == (at(1), at(2), at(12))
    assert done.duration_s == 600.0


def test_recorded_outcome_is_final_at_once(store: Store) -> None:
    """A skip is stored finished, with no job, and never shows as unfinished."""
    cycle_id = store.start_cycle("r1", at(0))
    store.record_outcome(
        cycle_id,
        rack="r1",
        agent="m7",
        machine="m7",
        outcome=Outcome.NO_AGENT,
        detail="no agent",
        at=at(1),
    )
    [check] = store.checks_of_cycle(cycle_id)
    assert (check.outcome, check.job_id, check.queue) == (Outcome.NO_AGENT, None, None)
    assert check.finished_at == at(1)
    assert check.duration_s == 0.0
    assert store.unfinished() == []


def test_timestamps_are_stored_and_read_as_utc(store: Store, path: Path) -> None:
    """An aware time in any zone is stored as UTC ISO text and read back as the same instant."""
    cycle_id = store.start_cycle(
        "r1", datetime(2026, 11, 27, 7, 0, tzinfo=timezone(timedelta(hours=2)))
    )
    record = store.cycle(cycle_id)
    assert record.started_at == T0
    assert record.started_at.utcoffset() == timedelta(0)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT started_at FROM cycles").fetchone()[0] == (
        "2026-11-27T05:00:00.000000+00:00"
    )
    conn.close()


def test_naive_datetimes_are_refused(store: Store) -> None:
    """A time without a zone is a bug in the caller, not something to guess about."""
    with pytest.raises(ValueError, match="naive"):
        store.start_cycle("r1", datetime(2026, 11, 27, 5, 0))


def test_one_unfinished_job_per_agent(store: Store, path: Path) -> None:
    """An agent with an unfinished job cannot get another until the first has an outcome."""
    cycle_id = store.start_cycle("r1", at(0))
    first = begin(store, cycle_id, "agent-1", minutes=1)
    with pytest.raises(StoreError, match="agent-1"):
        begin(store, cycle_id, "agent-1", minutes=2)
    assert [c.id for c in store.unfinished()] == [first]

    store.finish_check(first, outcome=Outcome.PASSED, at=at(3))
    second = begin(store, cycle_id, "agent-1", minutes=4)
    assert [c.id for c in store.unfinished()] == [second]

    # The rule lives in the database, so it holds for any writer.
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO checks (cycle_id, rack, agent, created_at) VALUES (?, 'r1', 'agent-1', '')",
            (cycle_id,),
        )
    conn.close()


def test_finished_check_is_never_finished_again(store: Store) -> None:
    """finish_check on a check that has an outcome raises and keeps the first outcome."""
    cycle_id = store.start_cycle("r1", at(0))
    check_id = begin(store, cycle_id, "agent-1")
    store.finish_check(check_id, outcome=Outcome.PASSED, at=at(1))
    with pytest.raises(StoreError, match=f"unfinished check {check_id}"):
        store.finish_check(check_id, outcome=Outcome.ERROR, at=at(2))
    assert store.checks_of_cycle(cycle_id)[0].outcome is Outcome.PASSED


def test_job_of_an_unknown_cycle_is_refused(store: Store) -> None:
    """Foreign keys are on: a check must belong to a cycle that exists."""
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        begin(store, 999, "agent-1")


def test_unfinished_is_oldest_first_and_filters_by_rack(store: Store) -> None:
    """unfinished() lists the jobs with no outcome, oldest first, of one rack or all."""
    r1 = store.start_cycle("r1", at(0))
    r2 = store.start_cycle("r2", at(0))
    begin(store, r1, "late", minutes=5)
    begin(store, r2, "other", minutes=3, rack="r2")
    begin(store, r1, "early", minutes=1)
    assert [c.agent for c in store.unfinished()] == ["early", "other", "late"]
    assert [c.agent for c in store.unfinished("r1")] == ["early", "late"]


# cycles


def test_start_cycle_takes_over_the_unfinished_jobs_of_its_rack(store: Store) -> None:
    """A cycle starting while an earlier one is unfinished interrupts it and adopts its jobs."""
    old = store.start_cycle("r1", at(0))
    other = store.start_cycle("r2", at(0))
    pending = begin(store, old, "agent-1", minutes=1)
    done = begin(store, old, "agent-2", minutes=1)
    store.finish_check(done, outcome=Outcome.PASSED, at=at(5))
    elsewhere = begin(store, other, "agent-9", minutes=1, rack="r2")

    new = store.start_cycle("r1", at(60))

    interrupted = store.cycle(old)
    assert (interrupted.status, interrupted.finished_at) == ("interrupted", at(60))
    assert [c.id for c in store.checks_of_cycle(new)] == [pending]
    assert [c.id for c in store.checks_of_cycle(old)] == [done]
    assert [c.id for c in store.checks_of_cycle(other)] == [elsewhere]
    assert store.cycle(other).status is None
    assert store.cycle(new).status is None


def test_start_cycle_leaves_finished_cycles_as_they_were(store: Store) -> None:
    """A finished cycle keeps its status, while its unfinished jobs still move to the next cycle."""
    old = store.start_cycle("r1", at(0))
    pending = begin(store, old, "agent-1")
    store.finish_cycle(old, at(10), "interrupted")
    store.finish_cycle(old, at(10), "failures", "a reason")
    new = store.start_cycle("r1", at(60))
    record = store.cycle(old)
    assert (record.status, record.finished_at, record.error) == ("failures", at(10), "a reason")
    assert [c.id for c in store.checks_of_cycle(new)] == [pending]


def test_last_cycle_is_the_latest_started_of_the_rack(store: Store) -> None:
    """last_cycle returns the rack's cycle that started last, or None for a rack never checked."""
    first = store.start_cycle("r1", at(0))
    store.finish_cycle(first, at(1), "ok")
    store.start_cycle("r2", at(2))
    second = store.start_cycle("r1", at(3))
    last = store.last_cycle("r1")
    assert last is not None
    assert (last.id, last.started_at, last.finished_at) == (second, at(3), None)
    assert store.last_cycle("r3") is None


def test_unknown_cycle_status_and_cycle_are_refused(store: Store) -> None:
    """finish_cycle accepts only the known statuses, and a missing cycle is a StoreError."""
    cycle_id = store.start_cycle("r1", at(0))
    with pytest.raises(ValueError, match="done"):
        store.finish_cycle(cycle_id, at(1), "done")
    with pytest.raises(StoreError, match="no cycle 999"):
        store.finish_cycle(999, at(1), "ok")
    with pytest.raises(StoreError, match="no cycle 999"):
        store.cycle(999)


def test_history_is_newest_first_and_limited(store: Store) -> None:
    """history() returns one agent's latest checks, newest first, at most `limit` of them."""
    for minutes in range(5):
        cycle_id = store.start_cycle("r1", at(minutes * 60))
        check_id = begin(store, cycle_id, "agent-1", minutes=minutes * 60 + 1)
        store.finish_check(check_id, outcome=Outcome.PASSED, at=at(minutes * 60 + 2))
        begin(store, cycle_id, f"agent-{minutes + 2}", minutes=minutes * 60 + 1)
    history = store.history("agent-1", limit=3)
    assert [c.created_at for c in history] == [at(241), at(181), at(121)]
    assert {c.agent for c in history} == {"agent-1"}
    assert len(store.history("agent-1")) == 5


# sharing and crashes


def test_readonly_store_reads_while_the_writer_is_open(path: Path) -> None:
    """The CLI's read-only store sees the daemon's commits while the daemon keeps its store open."""
    with Store.open(path) as writer:
        cycle_id = writer.start_cycle("r1", at(0))
        begin(writer, cycle_id, "agent-1")
        with Store.open_readonly(path) as reader:
            assert [c.agent for c in reader.unfinished()] == ["agent-1"]
            begin(writer, cycle_id, "agent-2")
            assert [c.agent for c in reader.unfinished()] == ["agent-1", "agent-2"]
            with pytest.raises(StoreError, match="readonly"):
                reader.start_cycle("r1", at(1))
        writer.finish_cycle(cycle_id, at(2), "ok")
    with Store.open_readonly(path) as reader:
        assert reader.cycle(cycle_id).status == "ok"


KILLED_WRITER = """
import os, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from rackwatch.store import Store

store = Store.open(Path(sys.argv[1]))
cycle_id = store.start_cycle("r1", datetime.now(UTC))
store.begin_job(
    cycle_id, rack="r1", agent="agent-1", machine="m1", queue="q1", job_id="job-1",
    at=datetime.now(UTC),
)
if sys.argv[2] == "exit":
    os._exit(0)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("death", ["exit", "sigkill"])
def test_begun_job_survives_the_death_of_its_writer(path: Path, death: str) -> None:
    """A job recorded by a process that dies right after begin_job is there for the next run."""
    script = textwrap.dedent(KILLED_WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), death], env=env, capture_output=True, check=False
    )
    assert done.returncode == (0 if death == "exit" else -9), done.stderr.decode()
    with Store.open(path) as store:
        [job] = store.unfinished("r1")
    assert (job.agent, job.job_id) == ("agent-1", "job-1")
