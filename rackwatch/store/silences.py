"""Silences: agents and racks that are checked but not announced until a set time. The
`silence` and `unsilence` commands write them, also while the daemon writes the same file;
the ledger reads them and settles the ended ones (`HealthRecords.record_health`). Imports only
the standard library, `rackwatch.model` and the store's own modules.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from rackwatch.model import Silence
from rackwatch.store._db import Database, as_text, as_time

# When a silence ends, or ended: its `until`, or `ended_at` when it was ended before.
_ENDS_AT = "min(until, coalesce(ended_at, until))"


@dataclass(frozen=True, slots=True)
class Silenced:
    """A silence just made, and the ones in force that it replaced (ended and settled)."""

    silence: Silence
    replaced: list[Silence]


class Silences(Database):
    """The silences: made, ended, and read back."""

    def silences(self) -> list[Silence]:
        """Every silence not settled yet, those in force and those ended, oldest first."""
        rows = self._select("SELECT * FROM silences WHERE settled = 0 ORDER BY id", ())
        return [silence_from(row) for row in rows]

    def silences_in_force(self, at: datetime) -> list[Silence]:
        """The silences that have not ended at `at`, oldest first."""
        rows = self._select(
            f"SELECT * FROM silences WHERE settled = 0 AND {_ENDS_AT} > ? ORDER BY id",  # noqa: S608
            (as_text(at),),
        )
        return [silence_from(row) for row in rows]

    def add_silences(
        self,
        *,
        agents: Collection[str],
        racks: Collection[str],
        reason: str,
        by: str,
        until: datetime,
        at: datetime,
    ) -> list[Silenced]:
        """Silence each agent and each rack from `at` until `until`, in one transaction.

        A silence in force of the same agent or rack is replaced: ended at `at` and settled at
        once, since the new one goes on covering what it covered.
        """
        made = []
        at_text, until_text = as_text(at), as_text(until)
        with self._transaction() as conn:
            for column, names in (("agent", agents), ("rack", racks)):
                for name in names:
                    replaced = conn.execute(
                        f"UPDATE silences SET ended_at = ?, settled = 1"  # noqa: S608
                        f" WHERE settled = 0 AND {column} = ? AND {_ENDS_AT} > ? RETURNING *",
                        (at_text, name, at_text),
                    ).fetchall()
                    row = conn.execute(
                        f"INSERT INTO silences ({column}, reason, by_user, created_at, until)"  # noqa: S608
                        " VALUES (?, ?, ?, ?, ?) RETURNING *",
                        (name, reason, by, at_text, until_text),
                    ).fetchone()
                    made.append(
                        Silenced(
                            silence_from(row),
                            sorted((silence_from(r) for r in replaced), key=lambda s: s.id),
                        )
                    )
        return made

    def end_silences(
        self, *, agents: Collection[str], racks: Collection[str], at: datetime
    ) -> list[Silence]:
        """End now the silences in force of the agents and of the racks: those it ended.

        They stay unsettled: the first cycle of their rack settled after `at` announces what
        they kept quiet.
        """
        at_text = as_text(at)
        ended: list[sqlite3.Row] = []
        with self._transaction() as conn:
            for column, names in (("agent", agents), ("rack", racks)):
                ended += conn.execute(
                    f"UPDATE silences SET ended_at = ? WHERE settled = 0"  # noqa: S608
                    f" AND {column} IN (SELECT value FROM json_each(?)) AND {_ENDS_AT} > ?"
                    " RETURNING *",
                    (at_text, json.dumps(sorted(names)), at_text),
                ).fetchall()
        return sorted((silence_from(row) for row in ended), key=lambda s: s.id)

    def recorded_agents(self, names: Collection[str]) -> set[str]:
        """Those of `names` that some check of the state file is of."""
        rows = self._select(
            "SELECT DISTINCT agent FROM checks WHERE agent IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted(names)),),
        )
        return {row["agent"] for row in rows}


def silence_from(row: sqlite3.Row) -> Silence:
    return Silence(
        id=row["id"],
        agent=row["agent"],
        rack=row["rack"],
        reason=row["reason"],
        by=row["by_user"],
        created_at=datetime.fromisoformat(row["created_at"]),
        until=datetime.fromisoformat(row["until"]),
        ended_at=as_time(row["ended_at"]),
        settled=bool(row["settled"]),
    )
