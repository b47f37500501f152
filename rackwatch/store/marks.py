"""Each agent's marks: where it stands and its recent trend, kept current with its checks.

`status` and the metrics read one row per agent of the `marks` table, so their cost does not
grow with the history kept. A row is computed from the agent's own checks by index searches,
in the transaction that writes one of its checks (`refresh_marks`), so it is never behind.

What pruning took away is kept from the row before: an agent whose latest pass is older than
`history.keep_checks` keeps that pass, the failures since then (pruning counts those it
deletes in `pruned_failures`) and when its run of stale checks began. Its trend window (the latest `MARKS_WINDOW` judged checks and passes) reaches
back only as far as the checks kept. Imports only the standard library, `rackwatch.model` and
the store's own modules.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection

from rackwatch.model import Outcome

MARKS_WINDOW = 10  # how many of an agent's latest judged checks and passes its trend holds
_PARAMS = {
    "window": MARKS_WINDOW,
    "passed": str(Outcome.PASSED),
    "failed": str(Outcome.FAILED),
    "timed_out": str(Outcome.TIMED_OUT),
    "stale": str(Outcome.STALE),
}

# The marks of the agents of :agents (a JSON list), each from its own checks. Every lookup
# is an index search of the agent's checks, newest first, and stops at what it looks for.
REFRESH_MARKS_SQL = """
WITH wanted(agent) AS (SELECT DISTINCT value FROM json_each(:agents)),
latest AS (
    SELECT
        w.agent,
        (SELECT id FROM checks WHERE agent = w.agent
         ORDER BY created_at DESC, id DESC LIMIT 1) AS newest_id,
        (SELECT id FROM checks WHERE agent = w.agent AND outcome IS NOT NULL
         ORDER BY created_at DESC, id DESC LIMIT 1) AS last_id,
        (SELECT id FROM checks WHERE agent = w.agent AND outcome IS NULL) AS open_id,
        (SELECT id FROM checks WHERE agent = w.agent AND outcome = :passed
         ORDER BY created_at DESC, id DESC LIMIT 1) AS passed_id,
        (SELECT min(created_at) FROM checks
         WHERE agent = w.agent AND outcome = :stale AND created_at > coalesce(
             (SELECT created_at FROM checks
              WHERE agent = w.agent AND outcome IS NOT NULL AND outcome <> :stale
              ORDER BY created_at DESC, id DESC LIMIT 1),
             -1)) AS stale_since
    FROM wanted AS w
)
INSERT OR REPLACE INTO marks (agent, rack, last_id, open_id, passed_id, passed_created_at,
    passed_at, passed_s, failures, pruned_failures, judged, judged_passed, passes, maas_status,
    stale_since)
SELECT
    l.agent,
    newest.rack,
    l.last_id,
    l.open_id,
    coalesce(p.id, k.passed_id),
    coalesce(p.created_at, k.passed_created_at),
    coalesce(p.finished_at, k.passed_at),
    coalesce((p.finished_at - coalesce(p.submitted_at, p.created_at)) / 1e6, k.passed_s),
    (SELECT count(*) FROM checks
     WHERE agent = l.agent AND outcome IN (:failed, :timed_out)
       AND created_at > coalesce(p.created_at, k.passed_created_at, -1))
    -- and those of the run that were pruned, while no later pass ended it
    + CASE WHEN p.id IS NULL THEN coalesce(k.pruned_failures, 0) ELSE 0 END,
    CASE WHEN p.id IS NULL THEN coalesce(k.pruned_failures, 0) ELSE 0 END,
    (SELECT count(*) FROM (
        SELECT 1 FROM checks WHERE agent = l.agent AND outcome IN (:passed, :failed, :timed_out)
        ORDER BY created_at DESC, id DESC LIMIT :window)),
    (SELECT count(*) FROM (
        SELECT outcome FROM checks
        WHERE agent = l.agent AND outcome IN (:passed, :failed, :timed_out)
        ORDER BY created_at DESC, id DESC LIMIT :window) WHERE outcome = :passed),
    (SELECT json_group_array(json_array(created_at, seconds)) FROM (
        SELECT created_at, (finished_at - coalesce(submitted_at, created_at)) / 1e6 AS seconds
        FROM checks WHERE agent = l.agent AND outcome = :passed
        ORDER BY created_at DESC, id DESC LIMIT :window)),
    newest.maas_status,
    -- a run of stale checks whose start was pruned began when the row before said
    CASE WHEN l.stale_since IS NOT NULL
         THEN min(l.stale_since, coalesce(k.stale_since, l.stale_since)) END
FROM latest AS l
JOIN check_rows AS newest ON newest.id = l.newest_id
LEFT JOIN check_rows AS p ON p.id = l.passed_id
LEFT JOIN marks AS k ON k.agent = l.agent
"""


# The marks of :agent after its open check :id ended, when that check is its newest: what one
# ended check adds to the row. Only the trend window is looked up again (index searches that
# stop after MARKS_WINDOW judged checks). No row is changed when another check of the agent
# began at the same time or later.
MARK_ENDED_SQL = """
UPDATE marks SET
    rack = c.rack,
    last_id = c.id,
    open_id = NULL,
    passed_id = CASE WHEN c.outcome = :passed THEN c.id ELSE passed_id END,
    passed_created_at = CASE WHEN c.outcome = :passed THEN c.created_at ELSE passed_created_at END,
    passed_at = CASE WHEN c.outcome = :passed THEN c.finished_at ELSE passed_at END,
    passed_s = CASE WHEN c.outcome = :passed
        THEN (c.finished_at - coalesce(c.submitted_at, c.created_at)) / 1e6 ELSE passed_s END,
    failures = CASE WHEN c.outcome = :passed THEN 0
        WHEN c.outcome IN (:failed, :timed_out) THEN failures + 1 ELSE failures END,
    pruned_failures = CASE WHEN c.outcome = :passed THEN 0 ELSE pruned_failures END,
    judged = (SELECT count(*) FROM (
        SELECT 1 FROM checks WHERE agent = :agent AND outcome IN (:passed, :failed, :timed_out)
        ORDER BY created_at DESC, id DESC LIMIT :window)),
    judged_passed = (SELECT count(*) FROM (
        SELECT outcome FROM checks
        WHERE agent = :agent AND outcome IN (:passed, :failed, :timed_out)
        ORDER BY created_at DESC, id DESC LIMIT :window) WHERE outcome = :passed),
    passes = CASE WHEN c.outcome = :passed THEN (
        SELECT json_group_array(json_array(created_at, seconds)) FROM (
            SELECT created_at, (finished_at - coalesce(submitted_at, created_at)) / 1e6 AS seconds
            FROM checks WHERE agent = :agent AND outcome = :passed
            ORDER BY created_at DESC, id DESC LIMIT :window)) ELSE passes END,
    maas_status = c.maas_status,
    stale_since = CASE WHEN c.outcome = :stale THEN coalesce(stale_since, c.created_at) END
FROM check_rows AS c
WHERE c.id = :id AND marks.agent = :agent AND marks.open_id = :id AND NOT EXISTS (
    SELECT 1 FROM check_rows AS n
    WHERE n.agent_id = c.agent_id AND n.created_at >= c.created_at AND n.id <> c.id)
"""


def mark_ended(conn: sqlite3.Connection, agent: str, check_id: int) -> None:
    """The marks of `agent` after its check `check_id` got its outcome; inside the caller's
    transaction.

    When that check is the agent's newest and its marks' open one (as when nothing of the
    agent was recorded while its job ran), the row is brought up to date from what it held;
    otherwise it is computed anew (`refresh_marks`). Either way it is what `refresh_marks`
    computes.
    """
    updated = conn.execute(MARK_ENDED_SQL, {"agent": agent, "id": check_id, **_PARAMS}).rowcount
    if updated != 1:
        refresh_marks(conn, [agent])


def refresh_marks(conn: sqlite3.Connection, agents: Collection[str]) -> None:
    """Compute the marks of `agents` from their checks; inside the caller's transaction."""
    conn.execute(
        REFRESH_MARKS_SQL,
        {"agents": json.dumps(sorted(agents)), **_PARAMS},
    )


# Before the checks of :ids are pruned: their failures since their agent's latest pass.
COUNT_PRUNED_FAILURES_SQL = """
UPDATE marks SET pruned_failures = pruned_failures + (
    SELECT count(*) FROM checks
    WHERE agent = marks.agent AND id IN (SELECT value FROM json_each(:ids))
      AND outcome IN (:failed, :timed_out) AND created_at > coalesce(marks.passed_created_at, -1))
WHERE agent IN (SELECT agent FROM checks WHERE id IN (SELECT value FROM json_each(:ids)))
"""


def count_outcome(conn: sqlite3.Connection, rack: str, outcome: Outcome) -> None:
    """Add one ended check to the running count of its rack and outcome (`outcomes`)."""
    conn.execute(
        "INSERT INTO outcomes (rack, outcome, checks) VALUES (?, ?, 1)"
        " ON CONFLICT (rack, outcome) DO UPDATE SET checks = checks + 1",
        (rack, str(outcome)),
    )
