"""What the state file keeps, and for how long: checks whole for `history.keep_checks`, then one
row per agent and day (`days`), and health history for a year.

Each method is one short transaction over at most `rows` rows, so that a caller can prune a
year in small steps and let other work in between; none holds the file's write lock for long.
A check without an outcome yet, or whose job may still run on (lingering), is never pruned, nor
is an open incident or an alert not yet delivered. Imports only the standard library,
`rackwatch.model` and the store's own modules.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from rackwatch.model import Outcome
from rackwatch.store._db import EPOCH, Database, as_stamp, as_text
from rackwatch.store.marks import COUNT_PRUNED_FAILURES_SQL
from rackwatch.store.records import DayRecord

# The checks of :ids counted by agent and day (UTC), added to what `days` holds already. A
# provisioning time is whole milliseconds, from submission (or creation) to the end.
SUMMARISE_SQL = """
INSERT INTO days (agent_id, day, rack, checks, passed, failed, timed_out, errors, provision_ms)
SELECT agent_id, day, max(rack), count(*), sum(outcome = :passed), sum(outcome = :failed),
    sum(outcome = :timed_out), sum(outcome = :error), coalesce(sum(ms), 0)
FROM (
    SELECT agent_id, rack, outcome, created_at / :day_us AS day,
        CASE WHEN outcome = :passed
             THEN (finished_at - coalesce(submitted_at, created_at)) / 1000 END AS ms
    FROM check_rows WHERE id IN (SELECT value FROM json_each(:ids))
)
WHERE true
GROUP BY agent_id, day
ON CONFLICT (agent_id, day) DO UPDATE SET
    checks = checks + excluded.checks,
    passed = passed + excluded.passed,
    failed = failed + excluded.failed,
    timed_out = timed_out + excluded.timed_out,
    errors = errors + excluded.errors,
    provision_ms = provision_ms + excluded.provision_ms
"""

# The same figures counted from the checks still kept, for one agent, by day.
KEPT_DAYS_SQL = """
SELECT day, max(rack) AS rack, count(*) AS checks, sum(outcome = :passed) AS passed,
    sum(outcome = :failed) AS failed, sum(outcome = :timed_out) AS timed_out,
    sum(outcome = :error) AS errors, coalesce(sum(ms), 0) AS provision_ms
FROM (
    SELECT rack, outcome, created_at / :day_us AS day,
        CASE WHEN outcome = :passed
             THEN (finished_at - coalesce(submitted_at, created_at)) / 1000 END AS ms
    FROM check_rows
    WHERE agent_id = (SELECT id FROM agents WHERE name = :agent) AND created_at >= :since
      AND outcome IS NOT NULL
)
GROUP BY day
"""


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one pruning step did: how many rows went, and where the next step starts."""

    rows: int  # checks summarised and deleted
    next_id: int | None  # the check id the next step starts after; None when all are done


class Retention(Database):
    """Pruning in short steps, and the days summarised."""

    def prune_checks(self, before: datetime, *, after: int = 0, rows: int = 2000) -> Pruned:
        """Summarise into `days`, then delete, the ended checks created before `before` among
        the next `rows` checks by id after the id `after`.

        Oldest first, in the order they were written, so that a step rewrites few pages of the
        file. `next_id` says where the next step starts; it is None once a step read no check
        created before `before`, or read the last check.
        """
        cutoff = as_stamp(before)
        with self._transaction() as conn:
            read = conn.execute(
                "SELECT id, created_at, outcome IS NOT NULL AND lingering = 0 FROM check_rows"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (after, rows),
            ).fetchall()
            old = [(check_id, ended) for check_id, created_at, ended in read if created_at < cutoff]
            ids = [check_id for check_id, ended in old if ended]
            if ids:
                chosen = json.dumps(ids)
                conn.execute(SUMMARISE_SQL, {"ids": chosen, **_OUTCOMES})
                conn.execute(COUNT_PRUNED_FAILURES_SQL, {"ids": chosen, **_OUTCOMES})
                conn.execute(
                    "DELETE FROM check_rows WHERE id IN (SELECT value FROM json_each(?))",
                    (chosen,),
                )
        more = len(read) == rows and bool(old)
        return Pruned(len(ids), read[-1][0] if more else None)

    def prune_history(self, before: datetime, *, rows: int = 2000) -> tuple[int, bool]:
        """Delete up to `rows` cycles older than `before`, with their transitions and delivered
        alerts, then the closed incidents and the days older than it: how many rows went, and
        whether more cycles are left to delete.

        A cycle that still has a check (unfinished, lingering, or not yet pruned) or an alert
        not yet delivered stays, and so does the incident it belongs to.
        """
        at = as_text(before)
        with self._transaction() as conn:
            old = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM cycles AS y WHERE started_at < ?"
                    " AND NOT EXISTS (SELECT 1 FROM check_rows WHERE cycle_id = y.id)"
                    " AND NOT EXISTS (SELECT 1 FROM alerts"
                    "                 WHERE cycle_id = y.id AND delivered_at IS NULL)"
                    " ORDER BY id LIMIT ?",
                    (at, rows),
                )
            ]
            ids = json.dumps(old)
            gone = 0
            for sql in (
                "DELETE FROM transitions WHERE cycle_id IN (SELECT value FROM json_each(?))",
                "DELETE FROM alerts WHERE cycle_id IN (SELECT value FROM json_each(?))",
                "DELETE FROM cycles WHERE id IN (SELECT value FROM json_each(?))",
            ):
                gone += conn.execute(sql, (ids,)).rowcount
            if len(old) < rows:  # the last step: what the cycles kept until now
                gone += conn.execute(
                    "DELETE FROM incidents WHERE closed_at < ? AND NOT EXISTS"
                    " (SELECT 1 FROM cycles WHERE incident_id = incidents.id)",
                    (at,),
                ).rowcount
                day = _day_number(before.date())
                for (number,) in conn.execute("SELECT id FROM agents").fetchall():
                    gone += conn.execute(
                        "DELETE FROM days WHERE agent_id = ? AND day < ?", (number, day)
                    ).rowcount
        return gone, len(old) == rows

    def days(self, agent: str, *, since: date | None = None) -> list[DayRecord]:
        """The agent's checks counted by day (UTC), newest first: the days summarised, then
        those counted from the checks kept. A day may be in both while its checks are pruned."""
        params = {"agent": agent, **_OUTCOMES}
        first = -1 if since is None else _day_number(since)
        with self.reading():
            summarised = self._select(
                "SELECT * FROM days"
                " WHERE agent_id = (SELECT id FROM agents WHERE name = :agent) AND day >= :first",
                {**params, "first": first},
            )
            # From the first kept check's day on: a day summarised in part is counted in both.
            kept = self._select(KEPT_DAYS_SQL, {**params, "since": _day_start(since)})
        merged: dict[int, DayRecord] = {}
        for row in [*summarised, *kept]:
            day = _day_from(agent, row)
            known = merged.get(row["day"])
            merged[row["day"]] = day if known is None else _added(known, day)
        return [merged[day] for day in sorted(merged, reverse=True)]


_OUTCOMES = {
    "day_us": 86_400_000_000,
    "passed": str(Outcome.PASSED),
    "failed": str(Outcome.FAILED),
    "timed_out": str(Outcome.TIMED_OUT),
    "error": str(Outcome.ERROR),
}


def _day_start(since: date | None) -> int:
    if since is None:
        return -1
    return as_stamp(datetime(since.year, since.month, since.day, tzinfo=UTC))


def _day_number(day: date) -> int:
    """A day as `days` keeps it: days since the epoch."""
    return (day - EPOCH.date()).days


def _day_from(agent: str, row: sqlite3.Row) -> DayRecord:
    get = row.__getitem__
    return DayRecord(
        agent=agent,
        day=EPOCH.date() + timedelta(days=get("day")),
        rack=get("rack"),
        checks=get("checks"),
        passed=get("passed"),
        failed=get("failed"),
        timed_out=get("timed_out"),
        errors=get("errors"),
        provision_s=get("provision_ms") / 1000,
    )


def _added(one: DayRecord, other: DayRecord) -> DayRecord:
    return DayRecord(
        agent=one.agent,
        day=one.day,
        rack=max(one.rack, other.rack),
        checks=one.checks + other.checks,
        passed=one.passed + other.passed,
        failed=one.failed + other.failed,
        timed_out=one.timed_out + other.timed_out,
        errors=one.errors + other.errors,
        provision_s=(round(one.provision_s * 1000) + round(other.provision_s * 1000)) / 1000,
    )
