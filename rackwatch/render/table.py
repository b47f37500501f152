"""The layout and formats every rendering shares: a fixed-width table, counts, durations, times.

May import: `policy` (for `format_age`) and the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from rackwatch.policy import format_age


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
