"""The layout and formats every rendering shares: a fixed-width table, counts, durations, times,
a detail with its provision log's error line, and the skips counted by kind.

Every table cell shows its control characters as visible escapes (`visible`): what MAAS, an
agent or an admin wrote can neither move the cursor nor split a row. A table can be fitted to a
terminal's width (`fit`) and its cells coloured (`colour_of_outcome`, `colour_of_health`); widths
count the characters shown, never the colour codes.

May import: `health` (for the kinds of skip), `model`, `policy` (for `format_age`),
`provision_log`, `safe_text` (for `visible`) and the standard library.
"""

from __future__ import annotations

import textwrap
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from rackwatch import health
from rackwatch.model import Health, Outcome
from rackwatch.policy import format_age
from rackwatch.provision_log import error_line
from rackwatch.safe_text import visible as visible  # the renderings import it from here

_GAP = "  "  # between two columns
CUT = "…"  # ends a cell cut short

# A cell's text → the SGR code of its colour ("31": red), or None to leave it as it is.
Colour = Callable[[str], str | None]
RED, GREEN, YELLOW = "31", "32", "33"
_OUTCOME_COLOURS = {
    Outcome.PASSED: GREEN,
    Outcome.FAILED: RED,
    Outcome.ERROR: RED,
    Outcome.TIMED_OUT: YELLOW,
    Outcome.STALE: YELLOW,
    Outcome.QUARANTINED: YELLOW,
    Outcome.NO_QUEUE: YELLOW,
    Outcome.NO_AGENT: YELLOW,
}
_HEALTH_COLOURS = {Health.HEALTHY: GREEN, Health.UNHEALTHY: RED, Health.EXCLUDED: YELLOW}


def width_of(text: str) -> int:
    """The columns `text` takes on a terminal: 2 for a wide (East Asian) character, 0 for a
    combining or format one, else 1. `text` holds no control character (see `visible`)."""
    if text.isascii():  # nearly every cell: each character takes one column
        return len(text)
    return sum(_char_width(char) for char in text)


@cache
def _char_width(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cut(text: str, width: int) -> str:
    """`text` if it takes at most `width` columns, else its start and "…" in `width` columns."""
    if width_of(text) <= width:
        return text
    kept, used = [], 0
    for char in text:
        used += _char_width(char)
        if used > width - 1:
            break
        kept.append(char)
    return "".join(kept) + CUT


def painted(text: str, colour: str | None) -> str:
    """`text` in the SGR `colour` ("31"), reset after it; as it is for None."""
    return f"\x1b[{colour}m{text}\x1b[0m" if colour else text


def colour_of_outcome(cell: str) -> str | None:
    """Green for passed; red for failed and error; yellow for timed_out and the skips that need
    a person (stale, quarantined, no_queue, no_agent); None for the others."""
    try:
        return _OUTCOME_COLOURS.get(Outcome(cell))
    except ValueError:
        return None


def colour_of_health(cell: str) -> str | None:
    """By the health state the cell starts with: healthy green, unhealthy red, excluded
    yellow, unknown as it is."""
    state = cell.split(" ", 1)[0]
    try:
        return _HEALTH_COLOURS.get(Health(state))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Look:
    """How text is to look where it is shown: fitted to `width` columns (None: whole, however
    wide), and in colour or not."""

    width: int | None = None
    colour: bool = False


PLAIN = Look()  # whole and without colour, as for a pipe or a file


@dataclass(frozen=True, slots=True)
class Layout:
    """Which columns of a table are shown (by index) and how wide each is, in columns."""

    shown: tuple[int, ...]
    widths: tuple[int, ...]
    left_out: tuple[str, ...] = ()  # the columns not shown, by heading
    is_cut: bool = False  # whether a cell is cut short to fit


def natural(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Layout:
    """Every column, as wide as its widest cell or heading."""
    return Layout(tuple(range(len(columns))), tuple(_natural_widths(columns, rows)))


def fit(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int,
    *,
    indent: str = "",
    cut_to: Mapping[str, int] | None = None,
    leave_out: Sequence[str] = (),
) -> Layout:
    """The layout of the table in at most `width` columns, headings always whole.

    Until the table fits: first the columns of `cut_to`, in its order, lose the end of their
    long cells, each down to the width it names (never below its heading); then the columns of
    `leave_out` are left out, one after another in its order, as the cuts are made again; last,
    the columns of `cut_to` are cut down to their headings. A table that does not fit even so
    is wider than `width`.
    """
    floors = dict(cut_to or {})
    full = _natural_widths(columns, rows)
    room = width - width_of(indent)
    for count in range(len(leave_out) + 1):
        shown = [i for i, name in enumerate(columns) if name not in leave_out[:count]]
        widths, fits = _cut_widths(columns, full, shown, room, floors)
        if fits:
            break
    else:
        widths, _ = _cut_widths(columns, full, shown, room, dict.fromkeys(floors, 0))
    return Layout(
        tuple(shown),
        tuple(widths[i] for i in shown),
        left_out=tuple(leave_out[:count]),
        is_cut=any(widths[i] < full[i] for i in shown),
    )


def _natural_widths(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [
        max(width_of(visible(str(row[i]))) for row in [columns, *rows]) for i in range(len(columns))
    ]


def _cut_widths(
    columns: Sequence[str],
    full: Sequence[int],
    shown: Sequence[int],
    room: int,
    floors: Mapping[str, int],
) -> tuple[list[int], bool]:
    """The widths of the columns once those of `floors` are cut, in order, as far as needed
    for the `shown` ones to fit in `room`, each down to at most its floor but never below its
    heading; and whether they then fit."""
    widths = list(full)
    excess = sum(widths[i] for i in shown) + len(_GAP) * (len(shown) - 1) - room
    for name, floor in floors.items():
        i = columns.index(name)
        if excess <= 0 or i not in shown:
            continue
        least = max(width_of(name), min(floor, widths[i]))
        taken = max(0, min(excess, widths[i] - least))
        widths[i] -= taken
        excess -= taken
    return widths, excess <= 0


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    indent: str = "",
    *,
    layout: Layout | None = None,
    colours: Mapping[str, Colour] | None = None,
) -> str:
    """A fixed-width table; the last column is left ragged.

    Each cell shows its control characters as escapes (`visible`). By `layout` (default: the
    `natural` one) only some columns may show, and a cell wider than its column ends in "…".
    A column of `colours` has each cell painted the colour its function gives for the cell.
    """
    cells = [[visible(str(cell)) for cell in row] for row in [columns, *rows]]
    layout = layout or natural(columns, rows)
    colours = colours or {}
    lines = []
    for number, row in enumerate(cells):
        shown = []
        for i, width in zip(layout.shown, layout.widths, strict=True):
            text = cut(row[i], width)
            padding = " " * (width - width_of(text))
            colour = colours.get(columns[i]) if number else None
            shown.append((painted(text, colour(row[i])) if colour else text) + padding)
        lines.append((indent + _GAP.join(shown)).rstrip())
    return "\n".join(lines)


def wrap(line: str, width: int | None) -> list[str]:
    """`line` (shown with `visible`) in lines of at most `width` columns, the next ones indented
    two more than its own indent; the one line for None."""
    line = visible(line)
    if width is None or width_of(line) <= width:
        return [line]
    indent = line[: len(line) - len(line.lstrip(" "))]
    return textwrap.wrap(
        line,
        width,
        initial_indent="",
        subsequent_indent=indent + "  ",
        break_on_hyphens=False,
        drop_whitespace=True,
    )


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
