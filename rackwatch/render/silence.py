"""Silences as `silence`, `unsilence`, `silence --list`, `status` and `history` show them.

May import: `model`, `store` (for its record types) and `render.table`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rackwatch.model import Silence
from rackwatch.render.table import iso, plural, table, visible
from rackwatch.store import Silenced

LIST_COLUMNS = ("SILENCED", "UNTIL (UTC)", "BY", "SINCE (UTC)", "REASON")


def minute(at: datetime) -> str:
    """The time in UTC, to the minute: "2026-12-08 20:31 UTC"."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def silence_text(silence: Silence) -> str:
    """The silence on one line: "silenced until 2026-12-08 20:31 UTC by alice: new BMC"."""
    return f"silenced until {minute(silence.ends_at)} by {silence.by}: {silence.reason}"


def what(silence: Silence) -> str:
    """What it silences: the agent's name, or "rack NAME"."""
    return silence.agent if silence.agent is not None else f"rack {silence.rack}"


def silence_json(silence: Silence | None) -> dict[str, Any] | None:
    """{"until", "by", "reason", "rack"}, rack null for an agent's own silence; None stays None."""
    if silence is None:
        return None
    return {
        "until": iso(silence.ends_at),
        "by": silence.by,
        "reason": silence.reason,
        "rack": silence.rack,
    }


def silenced_text(made: Sequence[Silenced]) -> str:
    """What `rackwatch silence` did: one line per agent or rack, and what each replaced."""
    lines = []
    for done in made:
        line = f"{what(done.silence)}: {silence_text(done.silence)}"
        for old in done.replaced:
            line += f" (replaces the silence until {minute(old.until)} by {old.by})"
        lines.append(visible(line))
    return "\n".join(lines)


def unsilenced_text(ended: Sequence[Silence], still: Sequence[tuple[str, Silence]]) -> str:
    """What `rackwatch unsilence` did: each silence ended, then each agent its rack still
    silences."""
    lines = [
        f"{what(s)}: no longer silenced (was silenced until {minute(s.until)} by {s.by}:"
        f" {s.reason})"
        for s in ended
    ]
    lines += [f"{agent}: still {silence_text(s)} (its rack's silence)" for agent, s in still]
    return "\n".join(visible(line) for line in lines)


def silences_text(silences: Sequence[Silence]) -> str:
    """`rackwatch silence --list`: a count, then one row per silence in force."""
    if not silences:
        return "no silences in force"
    rows = [
        (
            what(s),
            s.ends_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
            s.by,
            s.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
            s.reason,
        )
        for s in silences
    ]
    return f"{plural(len(silences), 'silence')} in force\n" + table(LIST_COLUMNS, rows)


def silences_json(silences: Sequence[Silence]) -> str:
    """{"silences": [{"agent", "rack", "until", "by", "reason", "created_at"}]}; times UTC ISO."""
    return json.dumps(
        {
            "silences": [
                {
                    "agent": s.agent,
                    "rack": s.rack,
                    "until": iso(s.ends_at),
                    "by": s.by,
                    "reason": s.reason,
                    "created_at": iso(s.created_at),
                }
                for s in silences
            ]
        },
        indent=2,
    )
