"""The read-models of `rackwatch status` and the metrics: where each agent of a rack stands, its
recent trend and its latest pass, read from each agent's marks (`marks`) and index searches.
Imports only the standard library, `rackwatch.model` and the store's own modules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from rackwatch.model import Outcome
from rackwatch.store._db import Database, as_time
from rackwatch.store.records import AgentFigures, AgentState, AgentTrend, CheckRecord, check_from

# Each agent of a rack with its marks (`marks`): the ids of its latest finished check and of
# its unfinished check, its latest pass and the failures since. The cost grows with the
# number of agents, not with the history kept.
#
# The rack's agents are those checked in its cycles since the latest one that got through
# ("ok" or "failures"): a later cycle that could not list the rack, or was cut short, does not
# hide the agents it missed.
RACK_AGENTS_CTE = """
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
)
"""
AGENT_MARKS_SQL = RACK_AGENTS_CTE + """
SELECT m.agent, m.last_id, m.open_id, m.passed_at, m.failures
FROM agents AS a JOIN marks AS m ON m.agent = a.agent
ORDER BY m.agent
"""
# The same agents, listed under the rack of their latest check, with what the metrics show.
AGENT_FIGURES_SQL = RACK_AGENTS_CTE + """
SELECT m.agent, m.failures, m.passed_s, last.finished_at AS last_at
FROM agents AS a JOIN marks AS m ON m.agent = a.agent
LEFT JOIN check_rows AS last ON last.id = m.last_id
LEFT JOIN check_rows AS open ON open.id = m.open_id
WHERE coalesce(open.rack, last.rack) = :rack
ORDER BY m.agent
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
            marks = self._select(AGENT_MARKS_SQL, {"rack": rack})
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

    def trends(self, agents: Sequence[str]) -> dict[str, AgentTrend]:
        """Each named agent's recent record: its latest MARKS_WINDOW judged checks and passes."""
        rows = self._select(
            "SELECT m.* FROM json_each(?) AS j JOIN marks AS m ON m.agent = j.value",
            (json.dumps(list(agents)),),
        )
        # An agent never checked has a trend of nothing.
        trends = {agent: AgentTrend(agent, 0, 0, (), None, None) for agent in agents}
        for row in rows:
            passes = sorted(json.loads(row["passes"]), reverse=True)  # newest first
            trends[row["agent"]] = AgentTrend(
                agent=row["agent"],
                judged=row["judged"],
                passed=row["judged_passed"],
                provision_s=tuple(float(seconds) for _, seconds in passes),
                maas_status=row["maas_status"],
                stale_since=as_time(row["stale_since"]),
            )
        return trends

    def agent_figures(self, rack: str) -> list[AgentFigures]:
        """The figures the metrics show of each agent that `agent_states(rack)` lists."""
        rows = self._select(AGENT_FIGURES_SQL, {"rack": rack})
        return [
            AgentFigures(
                agent=row["agent"],
                last_check_at=as_time(row["last_at"]),
                consecutive_failures=row["failures"],
                last_provision_s=row["passed_s"],
            )
            for row in rows
        ]

    def last_passes(self, agents: Sequence[str]) -> dict[str, CheckRecord]:
        """Each agent's latest passed check, for those of `agents` that ever passed."""
        rows = self._select(
            "SELECT * FROM checks WHERE id IN (SELECT (SELECT id FROM checks"
            " WHERE agent = j.value AND outcome = ? ORDER BY created_at DESC, id DESC LIMIT 1)"
            " FROM json_each(?) AS j)",
            (str(Outcome.PASSED), json.dumps(list(agents))),
        )
        return {row["agent"]: check_from(row) for row in rows}
