"""The state file, on real SQLite files: creation, migrations, and surviving a killed writer."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rackwatch.errors import StoreError
from rackwatch.model import UNKNOWN, AgentHealth, Health, HealthChange, Outcome
from rackwatch.store import MIGRATIONS, Store, _db
from tests.stored import at, begin

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


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
            _db.migrate(conn, path, steps)
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
        _db.migrate(conn, path, steps[:1])
        conn.execute("INSERT INTO log VALUES ('kept')")
        _db.migrate(conn, path, steps)
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
    _db.migrate(other, path, steps)
    other.close()

    real = _db.user_version
    reads: list[int] = []

    def stale_first_read(conn: sqlite3.Connection) -> int:
        reads.append(1)
        return 0 if len(reads) == 1 else real(conn)

    monkeypatch.setattr(_db, "user_version", stale_first_read)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _db.migrate(conn, path, steps)
    finally:
        conn.close()
    assert len(reads) == 2  # the step was tried, failed, and the version read again
    assert pragma(path, "user_version") == 1


def test_a_schema_1_file_gains_the_indexes_and_keeps_its_rows(tmp_path: Path) -> None:
    """A file written before the indexes is upgraded by the writer; readers wait for that."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _db.migrate(conn, path, MIGRATIONS[:1])
        conn.execute(
            "INSERT INTO cycles (rack, started_at) VALUES ('r1', '2026-11-27T05:00:00+00:00')"
        )
    finally:
        conn.close()
    with pytest.raises(StoreError, match="older than this rackwatch"):
        Store.open_readonly(path)

    Store.open(path).close()
    conn = sqlite3.connect(path)
    try:
        indexes = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        conn.close()
    assert {"checks_agent", "checks_job", "checks_cycle"} <= indexes
    with Store.open_readonly(path) as store:
        assert store.racks() == ["r1"]


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


def test_a_health_keeps_the_outcome_that_gave_its_reason(path: Path) -> None:
    """Recorded and read back, a health still says which outcome made it."""
    excluded = AgentHealth(Health.EXCLUDED, at(5), "stale: quiet for 3d", None, Outcome.STALE)
    with Store.open(path) as store:
        cycle = store.cycle(store.start_cycle("r1", at(0)))
        store.record_health(
            cycle,
            changes=[HealthChange("m1", UNKNOWN, excluded)],
            incident_opened=None,
            incident_closed=False,
            alert=None,
            at=at(5),
        )
        assert store.health("r1") == {"m1": ("r1", excluded)}


def test_upgrading_gives_each_recorded_health_the_outcome_of_its_check(path: Path) -> None:
    """A file from before outcomes were kept gets each health's from the check that made it."""
    conn = sqlite3.connect(path)
    _db.migrate(conn, path, MIGRATIONS[:4])
    conn.executescript(
        "INSERT INTO cycles (id, rack, started_at) VALUES (1, 'r1', '2026-11-27T05:00:00');"
        "INSERT INTO checks (cycle_id, rack, agent, outcome, created_at, finished_at)"
        " VALUES (1, 'r1', 'm1', 'quarantined', '2026-11-27T05:00:00', '2026-11-27T05:01:00');"
        "INSERT INTO health (agent, rack, state, since, reason)"
        " VALUES ('m1', 'r1', 'excluded', '2026-11-27T05:01:00', 'quarantined: 25 in a row'),"
        " ('m2', 'r1', 'unknown', NULL, '');"
    )
    conn.close()
    with Store.open(path) as store:
        recorded = store.health("r1")
    assert recorded["m1"][1].outcome is Outcome.QUARANTINED
    assert recorded["m2"][1].outcome is None
