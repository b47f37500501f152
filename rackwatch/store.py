"""The state file: cycles and the checks made in them, in one SQLite database.

Every write is its own committed transaction, written before the method returns, so a process
killed at any moment leaves a state the next run can resume: a job's id is recorded before the
job is submitted, and a job with no outcome yet is picked up again. The database itself keeps
at most one unfinished job per agent.

The store is synchronous; writes in WAL mode take well under a millisecond, so async code calls
it directly. This module imports only the standard library and `rackwatch.model`/`errors`.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from rackwatch.errors import StoreError
from rackwatch.model import AgentHealth, Fact, Health, HealthChange, Outcome

# Step N (counting from 1) brings a database from `user_version` N-1 to N. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE cycles (
        id INTEGER PRIMARY KEY,
        rack TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT,
        error TEXT
    );
    CREATE TABLE checks (
        id INTEGER PRIMARY KEY,
        cycle_id INTEGER NOT NULL REFERENCES cycles(id),
        rack TEXT NOT NULL,
        agent TEXT NOT NULL,
        machine TEXT,
        queue TEXT,
        job_id TEXT,
        outcome TEXT,
        detail TEXT NOT NULL DEFAULT '',
        provision_status INTEGER,
        created_at TEXT NOT NULL,
        submitted_at TEXT,
        finished_at TEXT
    );
    CREATE UNIQUE INDEX checks_unfinished_agent ON checks(agent) WHERE outcome IS NULL;
    CREATE INDEX checks_agent ON checks(agent, created_at);
    CREATE INDEX checks_cycle ON checks(cycle_id);
    CREATE INDEX cycles_rack ON cycles(rack, started_at);
    """,
    # `status` finds each agent's last pass, and the failures since, without reading its history.
    """
    CREATE INDEX checks_agent_outcome ON checks(agent, outcome, created_at);
    """,
    # Health over time: each agent's state, its transitions, rack incidents, alerts to deliver.
    """
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        rack TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        closed_at TEXT,
        reason TEXT NOT NULL
    );
    CREATE UNIQUE INDEX incidents_open ON incidents(rack) WHERE closed_at IS NULL;
    ALTER TABLE cycles ADD COLUMN incident_id INTEGER REFERENCES incidents(id);
    ALTER TABLE checks ADD COLUMN maas_status TEXT;
    CREATE TABLE health (
        agent TEXT PRIMARY KEY,
        rack TEXT NOT NULL,
        state TEXT NOT NULL,
        since TEXT,
        reason TEXT NOT NULL DEFAULT '',
        job_id TEXT
    );
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY,
        cycle_id INTEGER NOT NULL REFERENCES cycles(id),
        rack TEXT NOT NULL,
        agent TEXT NOT NULL,
        before TEXT NOT NULL,
        after TEXT NOT NULL,
        at TEXT NOT NULL,
        reason TEXT NOT NULL,
        job_id TEXT
    );
    CREATE INDEX transitions_agent ON transitions(agent, at);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        cycle_id INTEGER NOT NULL UNIQUE REFERENCES cycles(id),
        rack TEXT NOT NULL,
        created_at TEXT NOT NULL,
        body TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        delivered_at TEXT,
        last_error TEXT
    );
    CREATE INDEX alerts_pending ON alerts(id) WHERE delivered_at IS NULL;
    CREATE TABLE counters (
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        value INTEGER NOT NULL,
        PRIMARY KEY (name, labels)
    );
    """,
    # One job per queue, told by Testflinger: the file's identity goes into its jobs' tags, a
    # job is found by its id, and a check whose job may run on after it ended is followed up.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('identity', lower(hex(randomblob(6))));
    ALTER TABLE checks ADD COLUMN lingering INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE checks ADD COLUMN late_result TEXT;
    CREATE INDEX checks_job ON checks(job_id) WHERE job_id IS NOT NULL;
    CREATE INDEX checks_lingering ON checks(rack) WHERE lingering = 1;
    """,
)

CYCLE_STATUSES = frozenset({"ok", "failures", "error", "interrupted"})
BUSY_TIMEOUT_S = 5.0

# Each agent of a rack with the ids of its latest finished check, its unfinished check and its
# latest pass, and the failures since that pass. Every lookup is an index search, so the cost
# grows with the number of agents, not with the history kept.
#
# The rack's agents are those checked in its cycles since the latest one that got through
# ("ok" or "failures"): a later cycle that could not list the rack, or was cut short, does not
# hide the agents it missed.
_AGENT_MARKS_SQL = """
WITH recent AS (
    SELECT id FROM cycles
    WHERE rack = :rack AND started_at >= coalesce(
        (SELECT started_at FROM cycles
         WHERE rack = :rack AND status IN ('ok', 'failures')
         ORDER BY started_at DESC LIMIT 1),
        '')
),
agents AS (
    SELECT DISTINCT agent FROM checks WHERE cycle_id IN (SELECT id FROM recent)
),
marks AS (
    SELECT
        a.agent,
        (SELECT id FROM checks
         WHERE agent = a.agent AND outcome IS NOT NULL
         ORDER BY created_at DESC, id DESC LIMIT 1) AS last_id,
        (SELECT id FROM checks WHERE agent = a.agent AND outcome IS NULL) AS open_id,
        (SELECT id FROM checks
         WHERE agent = a.agent AND outcome = :passed
         ORDER BY created_at DESC, id DESC LIMIT 1) AS passed_id
    FROM agents AS a
)
SELECT
    m.agent,
    m.last_id,
    m.open_id,
    passed.finished_at AS passed_at,
    (SELECT count(*) FROM checks
     WHERE agent = m.agent AND outcome IN (:failed, :timed_out)
       AND created_at > coalesce(passed.created_at, '')) AS failures
FROM marks AS m LEFT JOIN checks AS passed ON passed.id = m.passed_id
ORDER BY m.agent
"""

# Each named agent's latest judged outcomes and passed jobs, the MAAS status of its machine at
# its latest check, and when its current run of stale checks began (NULL unless its latest
# finished check is stale). Each lookup reads at most :window rows of an index per outcome, or
# the agent's current run of stale checks, so the cost does not grow with the history kept.
_AGENT_TRENDS_SQL = """
WITH wanted(agent) AS (SELECT DISTINCT value FROM json_each(:agents))
SELECT
    w.agent,
    (SELECT json_group_array(outcome) FROM (
        SELECT * FROM (SELECT outcome, created_at, id FROM checks
                       WHERE agent = w.agent AND outcome = :passed
                       ORDER BY created_at DESC, id DESC LIMIT :window)
        UNION ALL
        SELECT * FROM (SELECT outcome, created_at, id FROM checks
                       WHERE agent = w.agent AND outcome = :failed
                       ORDER BY created_at DESC, id DESC LIMIT :window)
        UNION ALL
        SELECT * FROM (SELECT outcome, created_at, id FROM checks
                       WHERE agent = w.agent AND outcome = :timed_out
                       ORDER BY created_at DESC, id DESC LIMIT :window)
        ORDER BY created_at DESC, id DESC LIMIT :window)) AS judged,
    (SELECT json_group_array(
                json_array(created_at, coalesce(submitted_at, created_at), finished_at))
     FROM (SELECT created_at, submitted_at, finished_at FROM checks
           WHERE agent = w.agent AND outcome = :passed
           ORDER BY created_at DESC, id DESC LIMIT :window)) AS passes,
    (SELECT maas_status FROM checks
     WHERE agent = w.agent ORDER BY created_at DESC, id DESC LIMIT 1) AS maas_status,
    (SELECT min(created_at) FROM checks
     WHERE agent = w.agent AND outcome = :stale AND created_at > coalesce(
         (SELECT created_at FROM checks
          WHERE agent = w.agent AND outcome IS NOT NULL AND outcome <> :stale
          ORDER BY created_at DESC, id DESC LIMIT 1),
         '')) AS stale_since
FROM wanted AS w
ORDER BY w.agent
"""


@dataclass(frozen=True, slots=True)
class CheckRecord:
    """One agent checked in one cycle: a final outcome, or a job still being tracked."""

    id: int
    cycle_id: int
    rack: str
    agent: str
    machine: str | None
    queue: str | None
    job_id: str | None
    outcome: Outcome | None  # None while the job is unfinished
    detail: str
    provision_status: int | None
    created_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    # What became of its job after the check ended (a timed-out job that ran on), once seen.
    late_result: str | None = None

    @property
    def duration_s(self) -> float | None:
        """Seconds from submission (or creation, if never submitted) to the end; None if unfinished."""
        if self.finished_at is None:
            return None
        return (self.finished_at - (self.submitted_at or self.created_at)).total_seconds()


@dataclass(frozen=True, slots=True)
class CycleRecord:
    """One rack checked once. `status` is None while the cycle runs."""

    id: int
    rack: str
    started_at: datetime
    finished_at: datetime | None
    status: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class AgentState:
    """Where one agent stands now, as `rackwatch status` shows it."""

    agent: str
    rack: str  # the rack of its latest check
    machine: str | None
    last: CheckRecord | None  # the latest check with an outcome; None before the first ends
    # Checks failed or timed out since the last pass: a pass ends the run, and skips and
    # errors (which say nothing about the machine) neither end nor extend it.
    consecutive_failures: int
    last_passed_at: datetime | None
    in_flight: CheckRecord | None  # the check whose job has no outcome yet


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """A rack incident; open while `closed_at` is None."""

    id: int
    rack: str
    opened_at: datetime
    closed_at: datetime | None
    reason: str


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One rack cycle's health changes, to be announced once."""

    id: int
    cycle_id: int
    rack: str
    created_at: datetime
    body: dict[str, Any]
    attempts: int
    delivered_at: datetime | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class OutcomeCount:
    """Checks with an outcome counted by (rack, outcome), and where the next count starts."""

    counts: dict[tuple[str, str], int]
    above: int  # the highest check id read: count on from the ids above it
    unfinished: frozenset[int]  # the checks read that had no outcome yet: count them later


@dataclass(frozen=True, slots=True)
class AgentTrend:
    """An agent's recent record, shown beside its health by `rackwatch status`."""

    agent: str
    judged: int  # its latest checks that passed, failed or timed out, at most the window
    passed: int  # how many of those passed
    # Seconds from submission to the end of each of its latest passed jobs, newest first.
    provision_s: tuple[float, ...]
    maas_status: str | None  # the MAAS status_name of its machine at its latest check
    stale_since: datetime | None  # when its current run of stale checks began; None if not stale


class Store:
    """The state file, opened once. Also a context manager that closes it."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open the state file for writing, creating and migrating it as needed."""
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"state file {path}: cannot create directory {exc.filename}: {exc.strerror}"
            ) from exc
        try:
            # Created here, not by SQLite, so that it is private from the first byte. SQLite
            # gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StoreError(f"state file {path}: {exc.strerror}") from exc
        conn = _connect(str(path), path, uri=False)
        try:
            with _mapped(path):
                conn.execute("PRAGMA journal_mode = WAL")
                # In WAL mode NORMAL loses nothing when the process dies; only a power loss
                # can drop the last commit.
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                _migrate(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        """Open an existing state file for reading only, while a daemon may be writing it."""
        if not path.is_file():
            raise StoreError(f"state file {path}: no such file")
        if not os.access(path, os.R_OK):
            raise StoreError(f"state file {path}: permission denied")
        conn = _connect(f"{path.resolve().as_uri()}?mode=ro", path, uri=True)
        try:
            with _mapped(path):
                version = _user_version(conn)
        except StoreError:
            conn.close()
            raise
        if version != len(MIGRATIONS):
            conn.close()
            if version > len(MIGRATIONS):
                raise _newer(path, version, len(MIGRATIONS))
            raise StoreError(
                f"state file {path}: schema {version} is older than this rackwatch's"
                f" {len(MIGRATIONS)}; run the daemon or run-once once to upgrade it"
            )
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # cycles

    def start_cycle(self, rack: str, started_at: datetime) -> int:
        """Start a cycle of `rack`, taking over the unfinished jobs of its earlier cycles.

        An earlier cycle of the rack still marked running was cut short: it ends "interrupted".
        """
        at = _text(started_at)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE cycles SET status = 'interrupted', finished_at = ?"
                " WHERE rack = ? AND finished_at IS NULL",
                (at, rack),
            )
            cycle_id = _lastrowid(
                conn.execute("INSERT INTO cycles (rack, started_at) VALUES (?, ?)", (rack, at))
            )
            conn.execute(
                "UPDATE checks SET cycle_id = ? WHERE rack = ? AND outcome IS NULL",
                (cycle_id, rack),
            )
        return cycle_id

    def finish_cycle(
        self, cycle_id: int, finished_at: datetime, status: str, error: str | None = None
    ) -> None:
        if status not in CYCLE_STATUSES:
            raise ValueError(f"unknown cycle status {status!r}")
        self._update(
            f"cycle {cycle_id}",
            "UPDATE cycles SET finished_at = ?, status = ?, error = ? WHERE id = ?",
            (_text(finished_at), status, error, cycle_id),
        )

    def cycle(self, cycle_id: int) -> CycleRecord:
        rows = self._select("SELECT * FROM cycles WHERE id = ?", (cycle_id,))
        if not rows:
            raise StoreError(f"state file {self._path} has no cycle {cycle_id}")
        return _cycle(rows[0])

    def last_cycle(
        self, rack: str, *, before: CycleRecord | None = None, statuses: Collection[str] = ()
    ) -> CycleRecord | None:
        """The rack's most recent cycle.

        With `before`, only cycles older than that one; with `statuses`, only cycles that ended
        with one of them ("ok", "failures", "error", "interrupted").
        """
        sql = "SELECT * FROM cycles WHERE rack = ?"
        params: list[Any] = [rack]
        if before is not None:
            sql += " AND id < ?"
            params.append(before.id)
        if statuses:
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            params.extend(statuses)
        rows = self._select(sql + " ORDER BY started_at DESC, id DESC LIMIT 1", params)
        return _cycle(rows[0]) if rows else None

    # checks

    def record_outcome(
        self,
        cycle_id: int,
        *,
        rack: str,
        agent: str,
        machine: str | None,
        outcome: Outcome,
        detail: str = "",
        at: datetime,
        queue: str | None = None,
        maas_status: str | None = None,
    ) -> int:
        """Record a check that ended at once, without a job."""
        at_text = _text(at)
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO checks (cycle_id, rack, agent, machine, queue, outcome, detail,"
                " created_at, finished_at, maas_status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cycle_id,
                    rack,
                    agent,
                    machine,
                    queue,
                    str(outcome),
                    detail,
                    at_text,
                    at_text,
                    maas_status,
                ),
            )
        return _lastrowid(cursor)

    def begin_job(
        self,
        cycle_id: int,
        *,
        rack: str,
        agent: str,
        machine: str | None,
        queue: str,
        job_id: str,
        at: datetime,
        maas_status: str | None = None,
    ) -> int:
        """Record a job about to be submitted; durable once this returns.

        Raises StoreError if the agent already has an unfinished job.
        """
        with self._transaction() as conn:
            try:
                cursor = conn.execute(
                    "INSERT INTO checks (cycle_id, rack, agent, machine, queue, job_id,"
                    " created_at, maas_status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (cycle_id, rack, agent, machine, queue, job_id, _text(at), maas_status),
                )
            except sqlite3.IntegrityError as exc:
                if exc.sqlite_errorname != "SQLITE_CONSTRAINT_UNIQUE":
                    raise
                raise StoreError(
                    f"agent {agent!r} already has an unfinished job in {self._path}"
                ) from exc
        return _lastrowid(cursor)

    def mark_submitted(self, check_id: int, at: datetime) -> None:
        self._update(
            f"check {check_id}",
            "UPDATE checks SET submitted_at = ? WHERE id = ?",
            (_text(at), check_id),
        )

    def finish_check(
        self,
        check_id: int,
        *,
        outcome: Outcome,
        at: datetime,
        detail: str = "",
        provision_status: int | None = None,
        lingering: bool = False,
    ) -> None:
        """Give an unfinished check its outcome. A check that already has one is never changed.

        `lingering`: its job may run on at Testflinger (see `lingering()`).
        """
        self._update(
            f"unfinished check {check_id}",
            "UPDATE checks SET outcome = ?, finished_at = ?, detail = ?, provision_status = ?,"
            " lingering = ? WHERE id = ? AND outcome IS NULL",
            (str(outcome), _text(at), detail, provision_status, int(lingering), check_id),
        )

    def lingering(self, rack: str) -> list[CheckRecord]:
        """The rack's ended checks whose job may still run on Testflinger, oldest first.

        A job that timed out, or whose submission or result was never clear, can go on after
        its check ended: Testflinger does not stop a provisioning it was asked to cancel.
        """
        rows = self._select(
            "SELECT * FROM checks WHERE rack = ? AND lingering = 1 ORDER BY created_at, id",
            (rack,),
        )
        return [_check(row) for row in rows]

    def settle_late(self, check_id: int, late_result: str) -> None:
        """Record what became of a lingering check's job; the check's outcome stays as it was."""
        self._update(
            f"lingering check {check_id}",
            "UPDATE checks SET lingering = 0, late_result = ? WHERE id = ? AND lingering = 1",
            (late_result, check_id),
        )

    def checks_of_jobs(self, job_ids: Collection[str]) -> dict[str, CheckRecord]:
        """The check of each of these job ids that this state file made: job id -> check."""
        rows = self._select(
            "SELECT * FROM checks WHERE job_id IN (SELECT value FROM json_each(?))"
            " ORDER BY created_at, id",
            (json.dumps(sorted(job_ids)),),
        )
        return {row["job_id"]: _check(row) for row in rows}

    def identity(self) -> str:
        """This state file's own name for itself, put in the tags of the jobs it records."""
        rows = self._select("SELECT value FROM meta WHERE key = 'identity'", ())
        if not rows:
            raise StoreError(f"state file {self._path} has no identity")
        value: str = rows[0]["value"]
        return value

    def unfinished(self, rack: str | None = None) -> list[CheckRecord]:
        """The checks whose job has no outcome yet, oldest first."""
        rows = self._select(
            "SELECT * FROM checks WHERE outcome IS NULL AND (?1 IS NULL OR rack = ?1)"
            " ORDER BY created_at, id",
            (rack,),
        )
        return [_check(row) for row in rows]

    def checks_of_cycle(self, cycle_id: int) -> list[CheckRecord]:
        rows = self._select("SELECT * FROM checks WHERE cycle_id = ? ORDER BY id", (cycle_id,))
        return [_check(row) for row in rows]

    def history(self, agent: str, limit: int = 20) -> list[CheckRecord]:
        """The agent's latest checks, newest first."""
        rows = self._select(
            "SELECT * FROM checks WHERE agent = ? ORDER BY created_at DESC, id DESC LIMIT ?",
            (agent, limit),
        )
        return [_check(row) for row in rows]

    # status

    def racks(self) -> list[str]:
        """Every rack with a cycle in the state file, by name."""
        rows = self._select("SELECT DISTINCT rack FROM cycles ORDER BY rack", ())
        return [row["rack"] for row in rows]

    def agent_states(self, rack: str) -> list[AgentState]:
        """Where each agent of the rack stands, by agent name.

        An agent is listed under the rack of its latest check, so one that moved to another
        rack is listed there only.
        """
        with self.reading():
            marks = self._select(
                _AGENT_MARKS_SQL,
                {
                    "rack": rack,
                    "passed": str(Outcome.PASSED),
                    "failed": str(Outcome.FAILED),
                    "timed_out": str(Outcome.TIMED_OUT),
                },
            )
            ids = [row[key] for row in marks for key in ("last_id", "open_id") if row[key]]
            rows = self._select(
                "SELECT * FROM checks WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            )
        checks = {row["id"]: _check(row) for row in rows}
        states = []
        for mark in marks:
            last = checks.get(mark["last_id"])
            in_flight = checks.get(mark["open_id"])
            newest = in_flight or last
            if newest is None or newest.rack != rack:
                continue
            states.append(
                AgentState(
                    agent=mark["agent"],
                    rack=rack,
                    machine=newest.machine,
                    last=last,
                    consecutive_failures=mark["failures"],
                    last_passed_at=_time(mark["passed_at"]),
                    in_flight=in_flight,
                )
            )
        return states

    # health

    def facts(self, agent: str, limit: int) -> list[tuple[int, Fact]]:
        """The agent's latest finished checks, newest first, as health sees them, by cycle id."""
        rows = self._select(
            "SELECT c.cycle_id, c.outcome, c.detail, c.job_id, c.finished_at, y.incident_id"
            " FROM checks c JOIN cycles y ON y.id = c.cycle_id"
            " WHERE c.agent = ? AND c.outcome IS NOT NULL ORDER BY c.created_at DESC LIMIT ?",
            (agent, limit),
        )
        return [
            (
                row["cycle_id"],
                Fact(
                    outcome=Outcome(row["outcome"]),
                    detail=row["detail"],
                    job_id=row["job_id"],
                    at=datetime.fromisoformat(row["finished_at"]),
                    in_incident=row["incident_id"] is not None,
                ),
            )
            for row in rows
        ]

    def health(self, rack: str | None = None) -> dict[str, tuple[str, AgentHealth]]:
        """Each agent's recorded health, with its rack: agent -> (rack, health)."""
        where, params = ("WHERE rack = ?", (rack,)) if rack else ("", ())
        rows = self._select(f"SELECT * FROM health {where} ORDER BY agent", params)  # noqa: S608
        return {
            row["agent"]: (
                row["rack"],
                AgentHealth(
                    Health(row["state"]), _time(row["since"]), row["reason"], row["job_id"]
                ),
            )
            for row in rows
        }

    def open_incident(self, rack: str) -> IncidentRecord | None:
        rows = self._select("SELECT * FROM incidents WHERE rack = ? AND closed_at IS NULL", (rack,))
        return _incident(rows[0]) if rows else None

    def incidents(self, rack: str, limit: int = 10) -> list[IncidentRecord]:
        rows = self._select(
            "SELECT * FROM incidents WHERE rack = ? ORDER BY id DESC LIMIT ?", (rack, limit)
        )
        return [_incident(row) for row in rows]

    def inventory(self, cycle_id: int) -> dict[str, tuple[Outcome, str | None]]:
        """Each agent's outcome in the cycle, with its machine's MAAS status then."""
        rows = self._select(
            "SELECT agent, outcome, maas_status FROM checks"
            " WHERE cycle_id = ? AND outcome IS NOT NULL",
            (cycle_id,),
        )
        return {row["agent"]: (Outcome(row["outcome"]), row["maas_status"]) for row in rows}

    def record_health(
        self,
        cycle: CycleRecord,
        *,
        changes: Sequence[HealthChange],
        incident_opened: str | None,
        incident_closed: bool,
        alert: dict[str, Any] | None,
        at: datetime,
    ) -> None:
        """Everything a cycle changed about health, in one transaction: never half, never twice."""
        at_text = _text(at)
        with self._transaction() as conn:
            if incident_opened is not None:
                cursor = conn.execute(
                    "INSERT INTO incidents (rack, opened_at, reason) VALUES (?, ?, ?)",
                    (cycle.rack, at_text, incident_opened),
                )
                conn.execute(
                    "UPDATE cycles SET incident_id = ? WHERE id = ?", (cursor.lastrowid, cycle.id)
                )
            elif incident_closed:
                conn.execute(
                    "UPDATE incidents SET closed_at = ? WHERE rack = ? AND closed_at IS NULL",
                    (at_text, cycle.rack),
                )
            for change in changes:
                after = change.after
                since = _text(after.since) if after.since else None
                conn.execute(
                    "INSERT INTO health (agent, rack, state, since, reason, job_id)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (agent) DO UPDATE SET"
                    " rack = excluded.rack, state = excluded.state, since = excluded.since,"
                    " reason = excluded.reason, job_id = excluded.job_id",
                    (change.agent, cycle.rack, str(after.state), since, after.reason, after.job_id),
                )
                if change.before.state is not after.state:
                    conn.execute(
                        "INSERT INTO transitions (cycle_id, rack, agent, before, after, at,"
                        " reason, job_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            cycle.id,
                            cycle.rack,
                            change.agent,
                            str(change.before.state),
                            str(after.state),
                            at_text,
                            after.reason,
                            after.job_id,
                        ),
                    )
            if alert is not None:
                conn.execute(
                    "INSERT INTO alerts (cycle_id, rack, created_at, body) VALUES (?, ?, ?, ?)",
                    (cycle.id, cycle.rack, at_text, json.dumps(alert)),
                )

    def mark_cycle_incident(self, cycle_id: int, incident_id: int) -> None:
        """Count a cycle as part of an incident that was already open."""
        self._update(
            "such cycle",
            "UPDATE cycles SET incident_id = ? WHERE id = ?",
            (incident_id, cycle_id),
        )

    # alerts

    def pending_alerts(self) -> list[AlertRecord]:
        rows = self._select("SELECT * FROM alerts WHERE delivered_at IS NULL ORDER BY id", ())
        return [_alert(row) for row in rows]

    def alert_delivered(self, alert_id: int, at: datetime) -> None:
        self._update(
            "such alert",
            "UPDATE alerts SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?",
            (_text(at), alert_id),
        )

    def alert_failed(self, alert_id: int, error: str) -> None:
        self._update(
            "such alert",
            "UPDATE alerts SET attempts = attempts + 1, last_error = ? WHERE id = ?",
            (error, alert_id),
        )

    # counters that must survive a restart

    def count(self, name: str, labels: str, by: int = 1) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO counters (name, labels, value) VALUES (?, ?, ?)"
                " ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value",
                (name, labels, by),
            )

    def counters(self, name: str) -> dict[str, int]:
        rows = self._select("SELECT labels, value FROM counters WHERE name = ?", (name,))
        return {row["labels"]: row["value"] for row in rows}

    # metrics

    def last_passes(self, agents: Sequence[str]) -> dict[str, CheckRecord]:
        """Each agent's latest passed check, for those of `agents` that ever passed."""
        rows = self._select(
            "SELECT * FROM checks WHERE id IN (SELECT (SELECT id FROM checks"
            " WHERE agent = j.value AND outcome = ? ORDER BY created_at DESC, id DESC LIMIT 1)"
            " FROM json_each(?) AS j)",
            (str(Outcome.PASSED), json.dumps(list(agents))),
        )
        return {row["agent"]: _check(row) for row in rows}

    def count_outcomes(self, *, above: int = 0, among: Collection[int] = ()) -> OutcomeCount:
        """Count the checks with an outcome: those with an id above `above`, and those of `among`.

        Made for a running total that reads only what is new: an outcome never changes once
        given and checks are never deleted, so a caller that adds up the counts and passes back
        `above` and `unfinished` each time counts every check exactly once.
        """
        with self.reading():
            top = self._select("SELECT coalesce(max(id), 0) AS top FROM checks", ())[0]["top"]
            # Each part grouped on its own: a grouping over their union reads slower.
            rows = self._select(
                "SELECT rack, outcome, count(*) AS n FROM checks"
                " WHERE id > :above AND outcome IS NOT NULL GROUP BY rack, outcome"
                " UNION ALL SELECT rack, outcome, count(*) FROM checks"
                " WHERE id IN (SELECT value FROM json_each(:among)) AND id <= :above"
                " AND outcome IS NOT NULL GROUP BY rack, outcome",
                {"above": above, "among": json.dumps(sorted(among))},
            )
            unfinished = self._select("SELECT id FROM checks WHERE outcome IS NULL", ())
        counts: dict[tuple[str, str], int] = {}
        for row in rows:
            key = (row["rack"], row["outcome"])
            counts[key] = counts.get(key, 0) + row["n"]
        return OutcomeCount(
            counts=counts,
            above=max(top, above),
            unfinished=frozenset(row["id"] for row in unfinished if row["id"] <= top),
        )

    # status over time

    def trends(self, agents: Sequence[str], window: int = 10) -> dict[str, AgentTrend]:
        """Each named agent's recent record: its latest `window` judged checks and passed jobs."""
        rows = self._select(
            _AGENT_TRENDS_SQL,
            {
                "agents": json.dumps(list(agents)),
                "window": window,
                "passed": str(Outcome.PASSED),
                "failed": str(Outcome.FAILED),
                "timed_out": str(Outcome.TIMED_OUT),
                "stale": str(Outcome.STALE),
            },
        )
        trends = {}
        for row in rows:
            judged = json.loads(row["judged"])
            # Newest first; ISO 8601 UTC texts of one width sort as the times do.
            passes = sorted(json.loads(row["passes"]), reverse=True)
            trends[row["agent"]] = AgentTrend(
                agent=row["agent"],
                judged=len(judged),
                passed=judged.count(str(Outcome.PASSED)),
                provision_s=tuple(
                    (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
                    for _, start, end in passes
                ),
                maas_status=row["maas_status"],
                stale_since=_time(row["stale_since"]),
            )
        return trends

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Make the reads inside one consistent view of the file, whatever a writer does meanwhile.

        For reads only: a write inside would fail. Re-entrant: inside another `reading()`, it
        adds nothing.
        """
        if self._conn.in_transaction:
            yield
            return
        with _mapped(self._path):
            self._conn.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            if self._conn.in_transaction:
                with _mapped(self._path):
                    self._conn.execute("ROLLBACK")  # nothing was written

    # plumbing

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with _mapped(self._path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _update(self, what: str, sql: str, params: Sequence[Any]) -> None:
        with self._transaction() as conn:
            if conn.execute(sql, params).rowcount != 1:
                raise StoreError(f"state file {self._path} has no {what}")

    def _select(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[sqlite3.Row]:
        with _mapped(self._path):
            return self._conn.execute(sql, params).fetchall()


def _migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[str] = MIGRATIONS) -> None:
    """Apply the steps the database lacks, each in its own transaction with its version bump."""
    version = _user_version(conn)
    if version > len(migrations):
        raise _newer(path, version, len(migrations))
    for number, sql in enumerate(migrations[version:], start=version + 1):
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\n;PRAGMA user_version = {number};\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # Another process opening the same new file may have applied this step first.
            if _user_version(conn) >= number:
                continue
            raise StoreError(
                f"state file {path}: upgrade to schema {number} failed: {exc}"
            ) from exc


def _connect(database: str, path: Path, *, uri: bool) -> sqlite3.Connection:
    # isolation_level=None: sqlite3 opens no transactions of its own; ours are explicit.
    with _mapped(path):
        conn = sqlite3.connect(database, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=uri)
    conn.row_factory = sqlite3.Row
    return conn


def _user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def _newer(path: Path, version: int, known: int) -> StoreError:
    return StoreError(
        f"state file {path}: written by a newer rackwatch"
        f" (schema {version}; this one knows up to {known})"
    )


@contextmanager
def _mapped(path: Path) -> Iterator[None]:
    """Turn what sqlite3 raises into one StoreError line naming the file."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"state file {path}: {exc}") from exc


def _lastrowid(cursor: sqlite3.Cursor) -> int:
    assert cursor.lastrowid is not None  # always set after an INSERT
    return cursor.lastrowid


def _text(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: the store keeps UTC times only")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _cycle(row: sqlite3.Row) -> CycleRecord:
    return CycleRecord(
        id=row["id"],
        rack=row["rack"],
        started_at=datetime.fromisoformat(row["started_at"]),
        finished_at=_time(row["finished_at"]),
        status=row["status"],
        error=row["error"],
    )


def _check(row: sqlite3.Row) -> CheckRecord:
    return CheckRecord(
        id=row["id"],
        cycle_id=row["cycle_id"],
        rack=row["rack"],
        agent=row["agent"],
        machine=row["machine"],
        queue=row["queue"],
        job_id=row["job_id"],
        outcome=None if row["outcome"] is None else Outcome(row["outcome"]),
        detail=row["detail"],
        provision_status=row["provision_status"],
        created_at=datetime.fromisoformat(row["created_at"]),
        submitted_at=_time(row["submitted_at"]),
        finished_at=_time(row["finished_at"]),
        late_result=row["late_result"],
    )


def _incident(row: sqlite3.Row) -> IncidentRecord:
    return IncidentRecord(
        id=row["id"],
        rack=row["rack"],
        opened_at=datetime.fromisoformat(row["opened_at"]),
        closed_at=_time(row["closed_at"]),
        reason=row["reason"],
    )


def _alert(row: sqlite3.Row) -> AlertRecord:
    return AlertRecord(
        id=row["id"],
        cycle_id=row["cycle_id"],
        rack=row["rack"],
        created_at=datetime.fromisoformat(row["created_at"]),
        body=json.loads(row["body"]),
        attempts=row["attempts"],
        delivered_at=_time(row["delivered_at"]),
        last_error=row["last_error"],
    )
