"""The read-models of `rackwatch status` and the metrics: where each agent of a rack stands, its
recent trend and its latest pass, each read by a query whose every lookup is an index search.
Imports only the standard library, `rackwatch.model` and the store's own modules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from rackwatch.model import Outcome
from rackwatch.store._db import Database, as_time
from rackwatch.store.records import AgentState, AgentTrend, CheckRecord, check_from

# Each agent of a rack with the ids of its latest finished check, its unfinished check and its
# latest pass, and the failures since that pass. Every lookup is an index search, so the cost
# grows with the number of agents, not with the history kept.
#
# The rack's agents are those checked in its cycles since the latest one that got through
# ("ok" or "failures"): a later cycle that could not list the rack, or was cut short, does not
# hide the agents it missed.
AGENT_MARKS_SQL = """
WITH recent AS (
    SELECT id FROM cycles
    WHERE rack = :rack AND started_at >= coalesce(
        (SELECT started_at FROM cycles
         WHERE rack = :rack AND status IN ('ok', 'failures') AND partial = 0
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
AGENT_TRENDS_SQL = """
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


class Views(Database):
    """The status of a rack's agents, their trends and their latest passes."""

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
                AGENT_MARKS_SQL,
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
        checks = {row["id"]: check_from(row) for row in rows}
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
                    last_passed_at=as_time(mark["passed_at"]),
                    in_flight=in_flight,
                )
            )
        return states

    def trends(self, agents: Sequence[str], window: int = 10) -> dict[str, AgentTrend]:
        """Each named agent's recent record: its latest `window` judged checks and passed jobs."""
        rows = self._select(
            AGENT_TRENDS_SQL,
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
                stale_since=as_time(row["stale_since"]),
            )
        return trends

    def last_passes(self, agents: Sequence[str]) -> dict[str, CheckRecord]:
        """Each agent's latest passed check, for those of `agents` that ever passed."""
        rows = self._select(
            "SELECT * FROM checks WHERE id IN (SELECT (SELECT id FROM checks"
            " WHERE agent = j.value AND outcome = ? ORDER BY created_at DESC, id DESC LIMIT 1)"
            " FROM json_each(?) AS j)",
            (str(Outcome.PASSED), json.dumps(list(agents))),
        )
        return {row["agent"]: check_from(row) for row in rows}
