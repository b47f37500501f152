"""Health over time: each agent's recorded health and its transitions, the facts health is
judged on, the rack incidents and what a cycle saw of each machine. Imports only the standard
library, `rackwatch.model` and the store's own modules.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from rackwatch.model import AgentHealth, Fact, Health, HealthChange, Outcome
from rackwatch.store._db import Database, as_text, as_time, from_stamp
from rackwatch.store.records import CycleRecord, IncidentRecord, incident_from, unpack_log


class HealthRecords(Database):
    """What health decided, cycle by cycle, and what it decides from."""

    def facts(self, agent: str, limit: int) -> list[tuple[int, Fact]]:
        """The agent's latest finished checks, newest first, as health sees them, by cycle id."""
        rows = self._select(
            "SELECT c.cycle_id, c.outcome, c.detail, c.job_id, c.finished_at, c.provision_log,"
            " y.incident_id"
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
                    at=from_stamp(row["finished_at"]),
                    in_incident=row["incident_id"] is not None,
                    provision_log=unpack_log(row["provision_log"]),
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
                    Health(row["state"]),
                    as_time(row["since"]),
                    row["reason"],
                    row["job_id"],
                    None if row["outcome"] is None else Outcome(row["outcome"]),
                ),
            )
            for row in rows
        }

    def open_incident(self, rack: str) -> IncidentRecord | None:
        rows = self._select("SELECT * FROM incidents WHERE rack = ? AND closed_at IS NULL", (rack,))
        return incident_from(rows[0]) if rows else None

    def incidents(self, rack: str, limit: int = 10) -> list[IncidentRecord]:
        rows = self._select(
            "SELECT * FROM incidents WHERE rack = ? ORDER BY id DESC LIMIT ?", (rack, limit)
        )
        return [incident_from(row) for row in rows]

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
        settled_silences: Collection[int] = (),
    ) -> None:
        """Everything a cycle changed about health, in one transaction: never half, never twice.

        `settled_silences` are the ended silences whose end the cycle's alert deals with.
        """
        at_text = as_text(at)
        with self._transaction() as conn:
            if settled_silences:
                conn.execute(
                    "UPDATE silences SET settled = 1 WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(sorted(settled_silences)),),
                )
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
                since = as_text(after.since) if after.since else None
                outcome = None if after.outcome is None else str(after.outcome)
                conn.execute(
                    "INSERT INTO health (agent, rack, state, since, reason, job_id, outcome)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent) DO UPDATE SET"
                    " rack = excluded.rack, state = excluded.state, since = excluded.since,"
                    " reason = excluded.reason, job_id = excluded.job_id,"
                    " outcome = excluded.outcome",
                    (
                        change.agent,
                        cycle.rack,
                        str(after.state),
                        since,
                        after.reason,
                        after.job_id,
                        outcome,
                    ),
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
