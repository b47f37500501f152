"""`rackwatch history`: one agent's checks, newest first, as a table or as JSON.

May import: `config` (for the job links), `model`, `store` (for its record types),
`render.silence` and `render.table`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from rackwatch.config import job_url
from rackwatch.model import Silence
from rackwatch.render.silence import silence_json, silence_text
from rackwatch.render.table import duration, iso, plural, rounded, table, utc, visible
from rackwatch.store import CheckRecord, DayRecord

HISTORY_COLUMNS = ("TIME (UTC)", "RACK", "OUTCOME", "JOB ID", "PROVISION", "DURATION", "DETAIL")
DAY_COLUMNS = (
    "DAY (UTC)",
    "RACK",
    "CHECKS",
    "PASSED",
    "FAILED",
    "TIMED OUT",
    "PASS RATE",
    "PROVISIONING (MEAN)",
)
# The last lines of a check's provision log shown under its row; --log shows them all.
LOG_LINES = 3
_UNDER = "    "  # the indent of what is shown under a check's row


def history_text(
    agent: str,
    checks: Sequence[CheckRecord],
    *,
    web_base: str | None = None,
    full_log: bool = False,
    silence: Silence | None = None,
    days: Sequence[DayRecord] = (),
) -> str:
    """A header line, the `silence` that covers the agent if any, then one row per check in the
    order given (newest first), then one row per day of `days` older than the checks shown
    (newest first): the older days that `history.keep_checks` keeps as counts only.

    Under each row, indented: its job's page under `web_base`, and the last LOG_LINES lines of
    its provision log (all of them with `full_log`).
    """
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
    columns, *lines = table(HISTORY_COLUMNS, rows).splitlines()
    shown = [visible(header)]
    if silence is not None:
        said = silence_text(silence) + (f" (rack {silence.rack})" if silence.rack else "")
        shown.append(visible(said))
    shown.append(columns)
    for check, line in zip(checks, lines, strict=True):
        shown.append(line)
        shown.extend(visible(under) for under in _under(check, web_base, full_log))
    older = _older(days, checks)
    if older:
        shown.append(visible(f"{agent}: {plural(len(older), 'earlier day')}, counted"))
        shown.extend(table(DAY_COLUMNS, [_day_row(day) for day in older]).splitlines())
    return "\n".join(shown)


def _older(days: Sequence[DayRecord], checks: Sequence[CheckRecord]) -> list[DayRecord]:
    """The days before the oldest check shown, newest first."""
    oldest = min((check.created_at.date() for check in checks), default=None)
    return sorted(
        (day for day in days if oldest is None or day.day < oldest),
        key=lambda day: day.day,
        reverse=True,
    )


def _day_row(day: DayRecord) -> tuple[str, ...]:
    rate = day.pass_rate
    mean = day.provision_mean_s
    return (
        day.day.isoformat(),
        day.rack,
        str(day.checks),
        str(day.passed),
        str(day.failed),
        str(day.timed_out),
        "" if rate is None else f"{rate:.0%}",
        "" if mean is None else duration(mean),
    )


def _under(check: CheckRecord, web_base: str | None, full_log: bool) -> list[str]:
    """The lines shown under a check's row: "job: <url>", then "log: " and its lines."""
    lines = []
    if url := job_url(web_base, check.job_id):
        lines.append(f"{_UNDER}job: {url}")
    logged = check.provision_log.splitlines() if check.provision_log else []
    kept = logged if full_log else logged[-LOG_LINES:]
    if len(kept) < len(logged):
        earlier = plural(len(logged) - len(kept), "earlier line")
        kept = [f"… {earlier} (history --log shows them)", *kept]
    lead = f"{_UNDER}log: "
    lines += [(lead if i == 0 else " " * len(lead)) + text for i, text in enumerate(kept)]
    return lines


def history_json(
    agent: str,
    checks: Sequence[CheckRecord],
    *,
    web_base: str | None = None,
    silence: Silence | None = None,
    days: Sequence[DayRecord] = (),
) -> str:
    """{"agent": ..., "silence": ..., "checks": [...], "days": [...]}, newest first; times are
    UTC ISO 8601. A check with a job has its page under `web_base` as `url`. `days` are the
    days before the oldest check given, counted."""
    return json.dumps(
        {
            "agent": agent,
            "silence": silence_json(silence),
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
                    "provision_log": check.provision_log,
                    "url": job_url(web_base, check.job_id),
                }
                for check in checks
            ],
            "days": [
                {
                    "day": day.day.isoformat(),
                    "rack": day.rack,
                    "checks": day.checks,
                    "passed": day.passed,
                    "failed": day.failed,
                    "timed_out": day.timed_out,
                    "errors": day.errors,
                    "pass_rate": day.pass_rate,
                    "provision_mean_s": rounded(day.provision_mean_s),
                }
                for day in _older(days, checks)
            ],
        },
        indent=2,
    )
