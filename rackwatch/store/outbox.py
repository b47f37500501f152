"""The alerts still to announce, the named counters that must survive a restart, and the count
of check outcomes behind the metrics. Imports only the standard library and the store's
own modules.
"""

from __future__ import annotations

from datetime import datetime

from rackwatch.store._db import Database, as_text
from rackwatch.store.records import AlertRecord, alert_from


class Outbox(Database):
    """The alerts outbox, the named counters and the count of outcomes."""

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

    def outcome_totals(self) -> dict[tuple[str, str], int]:
        """The checks ended, by (rack, outcome): counted as each check ends, never pruned."""
        rows = self._select("SELECT rack, outcome, checks FROM outcomes", ())
        return {(row["rack"], row["outcome"]): row["checks"] for row in rows}
