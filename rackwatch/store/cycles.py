"""The job ledger: the cycles of each rack and the checks made in them.

A job's check is written before the job is submitted and keeps no outcome until its job ends,
so a run that dies leaves its jobs for the next one to pick up; the database keeps at most one
unfinished job per agent. Imports only the standard library, `rackwatch.model`/`errors` and the
store's own modules.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from datetime import datetime
from typing import Any

from rackwatch.errors import StoreError
from rackwatch.model import Outcome
from rackwatch.store._db import Database, as_stamp, as_text
from rackwatch.store.marks import count_outcome, mark_ended, refresh_marks
from rackwatch.store.records import (
    CheckRecord,
    CycleRecord,
    check_from,
    cycle_from,
    pack_job,
    pack_log,
    pack_name,
    unpack_job,
)

CYCLE_STATUSES = frozenset({"ok", "failures", "error", "interrupted"})
_MAX_PARAMS = 10_000  # the job ids looked up by one query (SQLite allows 32,766 parameters)


class Cycles(Database):
    """The cycles of each rack, and the checks of its agents with their jobs."""

    # cycles

    def start_cycle(
        self, rack: str, started_at: datetime, *, agents: Collection[str] | None = None
    ) -> int:
        """Start a cycle of `rack`, taking over the unfinished jobs of its earlier cycles.

        An earlier cycle of the rack still marked running was cut short: it ends "interrupted".
        With `agents`, a partial cycle of those agents only, which takes over only their jobs.
        """
        at = as_text(started_at)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE cycles SET status = 'interrupted', finished_at = ?"
                " WHERE rack = ? AND finished_at IS NULL",
                (at, rack),
            )
            cycle_id = _lastrowid(
                conn.execute(
                    "INSERT INTO cycles (rack, started_at, partial) VALUES (?, ?, ?)",
                    (rack, at, int(agents is not None)),
                )
            )
            conn.execute(
                "UPDATE check_rows SET cycle_id = ? WHERE rack = ? AND outcome IS NULL"
                " AND (?3 IS NULL OR agent_id IN"
                " (SELECT id FROM agents WHERE name IN (SELECT value FROM json_each(?3))))",
                (cycle_id, rack, None if agents is None else json.dumps(sorted(agents))),
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
            (as_text(finished_at), status, error, cycle_id),
        )

    def cycle(self, cycle_id: int) -> CycleRecord:
        rows = self._select("SELECT * FROM cycles WHERE id = ?", (cycle_id,))
        if not rows:
            raise StoreError(f"state file {self._path} has no cycle {cycle_id}")
        return cycle_from(rows[0])

    def last_cycle(
        self,
        rack: str,
        *,
        before: CycleRecord | None = None,
        statuses: Collection[str] = (),
        partial: bool = False,
    ) -> CycleRecord | None:
        """The rack's most recent cycle of the whole rack (also a partial one with `partial`).

        With `before`, only cycles older than that one; with `statuses`, only cycles that ended
        with one of them ("ok", "failures", "error", "interrupted").
        """
        sql = "SELECT * FROM cycles WHERE rack = ?"
        if not partial:
            sql += " AND partial = 0"
        params: list[Any] = [rack]
        if before is not None:
            sql += " AND id < ?"
            params.append(before.id)
        if statuses:
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            params.extend(statuses)
        rows = self._select(sql + " ORDER BY started_at DESC, id DESC LIMIT 1", params)
        return cycle_from(rows[0]) if rows else None

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
        stamp = as_stamp(at)
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO check_rows (cycle_id, rack, agent_id, machine, queue, outcome,"
                " detail, created_at, finished_at, maas_status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cycle_id,
                    rack,
                    agent_id(conn, agent),
                    pack_name(machine, agent),
                    pack_name(queue, agent),
                    str(outcome),
                    detail,
                    stamp,
                    stamp,
                    maas_status,
                ),
            )
            count_outcome(conn, rack, outcome)
            refresh_marks(conn, [agent])
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
                number = agent_id(conn, agent)
                cursor = conn.execute(
                    "INSERT INTO check_rows (cycle_id, rack, agent_id, machine, queue, job_id,"
                    " created_at, maas_status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        cycle_id,
                        rack,
                        number,
                        pack_name(machine, agent),
                        pack_name(queue, agent),
                        pack_job(job_id),
                        as_stamp(at),
                        maas_status,
                    ),
                )
                _mark_open(conn, agent, number, _lastrowid(cursor), rack, at, maas_status)
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
            "UPDATE check_rows SET submitted_at = ? WHERE id = ?",
            (as_stamp(at), check_id),
        )

    def finish_check(
        self,
        check_id: int,
        *,
        outcome: Outcome,
        at: datetime,
        detail: str = "",
        provision_status: int | None = None,
        provision_log: str | None = None,
        lingering: bool = False,
    ) -> None:
        """Give an unfinished check its outcome. A check that already has one is never changed.

        `provision_log`: the end of its job's provision output. `lingering`: its job may run on
        at Testflinger (see `lingering()`).
        """
        with self._transaction() as conn:
            ended = conn.execute(
                "UPDATE check_rows SET outcome = ?, finished_at = ?, detail = ?,"
                " provision_status = ?, provision_log = ?, lingering = ?"
                " WHERE id = ? AND outcome IS NULL RETURNING rack, agent_id",
                (
                    str(outcome),
                    as_stamp(at),
                    detail,
                    provision_status,
                    pack_log(provision_log),
                    int(lingering),
                    check_id,
                ),
            ).fetchall()
            if len(ended) != 1:
                raise StoreError(f"state file {self._path} has no unfinished check {check_id}")
            [(rack, number)] = ended
            count_outcome(conn, rack, outcome)
            [(agent,)] = conn.execute("SELECT name FROM agents WHERE id = ?", (number,))
            mark_ended(conn, agent, check_id)

    def lingering(self, rack: str) -> list[CheckRecord]:
        """The rack's ended checks whose job may still run on Testflinger, oldest first.

        A job that timed out, or whose submission or result was never clear, can go on after
        its check ended: Testflinger does not stop a provisioning it was asked to cancel.
        """
        rows = self._select(
            "SELECT * FROM checks WHERE rack = ? AND lingering = 1 ORDER BY created_at, id",
            (rack,),
        )
        return [check_from(row) for row in rows]

    def settle_late(self, check_id: int, late_result: str) -> None:
        """Record what became of a lingering check's job; the check's outcome stays as it was."""
        self._update(
            f"lingering check {check_id}",
            "UPDATE check_rows SET lingering = 0, late_result = ? WHERE id = ? AND lingering = 1",
            (late_result, check_id),
        )

    def checks_of_jobs(self, job_ids: Collection[str]) -> dict[str, CheckRecord]:
        """The check of each of these job ids that this state file made: job id -> check."""
        # Each id as stored now, and as text (how the checks before schema 7 keep it).
        stored = sorted(
            {form for job_id in job_ids for form in (pack_job(job_id), job_id)}, key=str
        )
        found: dict[str, CheckRecord] = {}
        for start in range(0, len(stored), _MAX_PARAMS):
            chunk = stored[start : start + _MAX_PARAMS]
            rows = self._select(
                "SELECT * FROM checks WHERE id IN (SELECT id FROM check_rows"  # noqa: S608
                f" WHERE job_id IN ({', '.join('?' * len(chunk))})) ORDER BY created_at, id",
                chunk,
            )
            found.update((unpack_job(row["job_id"]) or "", check_from(row)) for row in rows)
        return found

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
        return [check_from(row) for row in rows]

    def checks_of_cycle(self, cycle_id: int) -> list[CheckRecord]:
        rows = self._select("SELECT * FROM checks WHERE cycle_id = ? ORDER BY id", (cycle_id,))
        return [check_from(row) for row in rows]

    def history(self, agent: str, limit: int = 20) -> list[CheckRecord]:
        """The agent's latest checks, newest first."""
        rows = self._select(
            "SELECT * FROM checks WHERE agent = ? ORDER BY created_at DESC, id DESC LIMIT ?",
            (agent, limit),
        )
        return [check_from(row) for row in rows]


def agent_id(conn: sqlite3.Connection, agent: str) -> int:
    """The number that the checks name `agent` by, given it on first use."""
    conn.execute("INSERT INTO agents (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (agent,))
    number: int = conn.execute("SELECT id FROM agents WHERE name = ?", (agent,)).fetchone()[0]
    return number


def _mark_open(
    conn: sqlite3.Connection,
    agent: str,
    number: int,
    check_id: int,
    rack: str,
    at: datetime,
    maas_status: str | None,
) -> None:
    """The agent's marks after its check `check_id` without an outcome was added.

    When that check is the agent's newest, only what marks take of the newest and the open
    check changes (a check without an outcome counts in nothing else): three columns are set.
    An agent's first check gives it marks of nothing else. Otherwise they are computed anew
    (`refresh_marks`).
    """
    updated = conn.execute(
        "UPDATE marks SET rack = ?, open_id = ?, maas_status = ? WHERE agent = ? AND NOT EXISTS"
        " (SELECT 1 FROM check_rows WHERE agent_id = ? AND created_at > ? AND id <> ?)",
        (rack, check_id, maas_status, agent, number, as_stamp(at), check_id),
    ).rowcount
    if updated != 1:
        updated = conn.execute(
            "INSERT INTO marks (agent, rack, open_id, maas_status) SELECT ?, ?, ?, ?"
            " WHERE NOT EXISTS (SELECT 1 FROM check_rows WHERE agent_id = ? AND id <> ?)"
            " ON CONFLICT (agent) DO NOTHING",
            (agent, rack, check_id, maas_status, number, check_id),
        ).rowcount
    if updated != 1:
        refresh_marks(conn, [agent])


def _lastrowid(cursor: sqlite3.Cursor) -> int:
    assert cursor.lastrowid is not None  # always set after an INSERT
    return cursor.lastrowid
