"""The alerts still to announce, the named counters that must survive a restart, and the running
count of check outcomes behind the metrics. Imports only the standard library and the store's
own modules.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime

from rackwatch.store._db import Database, as_text
from rackwatch.store.records import AlertRecord, OutcomeCount, alert_from


class Outbox(Database):
    """The alerts outbox, the named counters and the running count of outcomes."""

    # alerts

    def pending_alerts(self) -> list[AlertRecord]:
        rows = self._select("SELECT * FROM alerts WHERE delivered_at IS NULL ORDER BY id", ())
        return [alert_from(row) for row in rows]

    def alert_delivered(self, alert_id: int, at: datetime) -> None:
        self._update(
            "such alert",
            "UPDATE alerts SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?",
            (as_text(at), alert_id),
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
