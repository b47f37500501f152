"""`rackwatch history`: one agent's checks, newest first, as a table or as JSON.

May import: `store` (for its record types) and `render.table`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from rackwatch.render.table import duration, iso, plural, rounded, table, utc
from rackwatch.store import CheckRecord

HISTORY_COLUMNS = ("TIME (UTC)", "RACK", "OUTCOME", "JOB ID", "PROVISION", "DURATION", "DETAIL")


def history_text(agent: str, checks: Sequence[CheckRecord]) -> str:
    """A header line, then one row per check in the order given (newest first)."""
    rows = [
        (
            utc(check.created_at),
            check.rack,
            str(check.outcome) if check.outcome else "unfinished",
            check.job_id or "",
            "" if check.provision_status is None else str(check.provision_status),
            duration(check.duration_s) if check.job_id else "",
            check.detail + (f"; later: {check.late_result}" if check.late_result else ""),
        )
        for check in checks
    ]
    header = f"{agent}: the latest {plural(len(checks), 'check')}, newest first"
    return header + "\n" + table(HISTORY_COLUMNS, rows)


def history_json(agent: str, checks: Sequence[CheckRecord]) -> str:
    """{"agent": ..., "checks": [...]}, newest first; times are UTC ISO 8601."""
    return json.dumps(
        {
            "agent": agent,
            "checks": [
                {
                    "rack": check.rack,
                    "machine": check.machine,
                    "outcome": str(check.outcome) if check.outcome else None,
                    "job_id": check.job_id,
                    "queue": check.queue,
                    "provision_status": check.provision_status,
                    "detail": check.detail,
                    "created_at": iso(check.created_at),
                    "submitted_at": iso(check.submitted_at),
                    "finished_at": iso(check.finished_at),
                    "duration_s": rounded(check.duration_s) if check.job_id else None,
                    "late_result": check.late_result,
                }
                for check in checks
            ],
        },
        indent=2,
    )
