"""The layout and formats every rendering shares: a fixed-width table, counts, durations, times,
a detail with its provision log's error line, and the skips counted by kind.

May import: `health` (for the kinds of skip), `model`, `policy` (for `format_age`),
`provision_log` and the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from rackwatch import health
from rackwatch.model import Outcome
from rackwatch.policy import format_age
from rackwatch.provision_log import error_line


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """A fixed-width table; the last column is left ragged."""
    widths = [max(len(str(row[i])) for row in [columns, *rows]) for i in range(len(columns))]
    lines = []
    for row in [columns, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def plural(count: int, noun: str) -> str:
    """The count and the noun, plural unless the count is 1: "1 agent", "2,412 agents"."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def duration(seconds: float | None) -> str:
    """Tenths of a second under a minute ("2.5s"), else as `format_age` puts it; "" for None."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    return format_age(timedelta(seconds=seconds))


def ago(when: datetime, now: datetime) -> str:
    """How long before `now`: "just now" under a second, else "3m 5s ago"."""
    age = now - when
    if age < timedelta(seconds=1):
        return "just now"
    return f"{format_age(age)} ago"


def utc(when: datetime) -> str:
    """The time in UTC, to the second, for a column headed "(UTC)"."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(when: datetime | None) -> str | None:
    """ISO 8601 for JSON; None stays None."""
    return when.isoformat() if when else None


def rounded(seconds: float | None) -> float | None:
    """Seconds to the millisecond for JSON; None stays None."""
    return round(seconds, 3) if seconds is not None else None


def with_error_line(detail: str, provision_log: str | None) -> str:
    """`detail`, then the line of `provision_log` that says why, after a colon:
    "provisioning exited 1 (device connector error): ERROR: MAAS deployment ... failed"."""
    line = error_line(provision_log)
    if not line:
        return detail
    return f"{detail}: {line}" if detail else line


def skips(checks: Iterable[tuple[Outcome, str]]) -> list[str]:
    """The skipped of these (outcome, detail) counted by kind, each kind only when there is one:
    "2 not checkable (stale, quarantined, no queue)", "1 set offline by an admin", and the rest
    (busy, no agent, ready, set offline by the agent itself) as "3 not checked"."""
    not_checkable = by_admin = others = 0
    for outcome, detail in checks:
        if outcome in health.NOT_CHECKABLE:
            not_checkable += 1
        elif health.is_set_offline_by_admin(outcome, detail):
            by_admin += 1
        elif outcome.is_skip:
            others += 1
    counts = [
        (not_checkable, "not checkable (stale, quarantined, no queue)"),
        (by_admin, "set offline by an admin"),
        (others, "not checked"),
    ]
    return [f"{count:,} {what}" for count, what in counts if count]
