"""The agent page's two pictures as geometry: its outcomes over time as a strip of bars, and its
provisioning time over time as points on a line. Pure functions of the recorded checks; the
template `_charts.html` draws them as SVG, escaping every text.

Time runs left to right, from the oldest check drawn to the newest, so that a gap in the
checks is a gap in the picture. May import: `model`, `store` (for its record types),
`render.table` and the standard library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from rackwatch.model import Outcome
from rackwatch.render.table import duration, utc
from rackwatch.store import CheckRecord

WIDTH = 800
STRIP_HEIGHT = 28
CHART_HEIGHT = 160
_LEFT = 56  # room for the duration axis's labels
_BOTTOM = 4
_TOP = 8


def outcome_colour(outcome: Outcome | None) -> str:
    """The colour class of an outcome: passed, failed (and timed out), error, skipped, open."""
    if outcome is None:
        return "open"
    if outcome is Outcome.PASSED:
        return "passed"
    if outcome.is_failure and outcome is not Outcome.ERROR:
        return "failed"
    if outcome is Outcome.ERROR:
        return "error"
    return "skipped"


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    colour: str
    title: str


@dataclass(frozen=True, slots=True)
class Strip:
    width: int
    height: int
    bars: list[Bar]
    first: str  # the time of the oldest check drawn, UTC
    last: str


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    colour: str
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    left: int  # where the plot begins, right of the axis labels
    points: list[Point]
    line: str  # the passes joined, as an SVG polyline's points
    ticks: list[tuple[float, str]]  # (y, label) on the duration axis
    first: str
    last: str


def outcome_strip(checks: Sequence[CheckRecord]) -> Strip | None:
    """One bar per check at its time, coloured by outcome; None without checks."""
    if not checks:
        return None
    ordered = sorted(checks, key=lambda check: (check.created_at, check.id))
    place = _timeline(ordered[0].created_at, ordered[-1].created_at, 0, WIDTH)
    bar = max(2.0, min(12.0, WIDTH / len(ordered)))
    bars = [
        Bar(
            x=round(min(place(check.created_at), WIDTH - bar), 1),
            width=round(bar, 1),
            colour=outcome_colour(check.outcome),
            title=f"{utc(check.created_at)} UTC: {_said(check)}",
        )
        for check in ordered
    ]
    return Strip(WIDTH, STRIP_HEIGHT, bars, utc(ordered[0].created_at), utc(ordered[-1].created_at))


def duration_chart(checks: Sequence[CheckRecord]) -> Chart | None:
    """Each ended job's time from submission to its end, at the check's time; None without one."""
    timed = sorted(
        (check for check in checks if check.job_id and check.duration_s is not None),
        key=lambda check: (check.created_at, check.id),
    )
    if not timed:
        return None
    top = max(check.duration_s or 0.0 for check in timed) * 1.1 or 1.0
    place = _timeline(timed[0].created_at, timed[-1].created_at, _LEFT + 4, WIDTH - 4)
    plot = CHART_HEIGHT - _TOP - _BOTTOM

    def height(seconds: float) -> float:
        return round(_TOP + plot * (1 - seconds / top), 1)

    points = [
        Point(
            x=round(place(check.created_at), 1),
            y=height(check.duration_s or 0.0),
            colour=outcome_colour(check.outcome),
            title=f"{utc(check.created_at)} UTC: {duration(check.duration_s)}, {_said(check)}",
        )
        for check in timed
    ]
    passed = [
        point for point, check in zip(points, timed, strict=True) if check.outcome is Outcome.PASSED
    ]
    ticks = [(height(share * top), duration(share * top)) for share in (0.0, 0.5, 1.0)]
    return Chart(
        WIDTH,
        CHART_HEIGHT,
        _LEFT,
        points,
        " ".join(f"{point.x},{point.y}" for point in passed),
        ticks,
        utc(timed[0].created_at),
        utc(timed[-1].created_at),
    )


def _timeline(
    first: datetime, last: datetime, left: float, right: float
) -> Callable[[datetime], float]:
    """Where a time falls between `left` (at `first`) and `right` (at `last`)."""
    span = (last - first).total_seconds()

    def place(at: datetime) -> float:
        if span <= 0:
            return left
        return left + (right - left) * (at - first).total_seconds() / span

    return place


def _said(check: CheckRecord) -> str:
    outcome = str(check.outcome) if check.outcome else "unfinished"
    return f"{outcome}: {check.detail}" if check.detail else outcome
