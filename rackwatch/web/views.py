"""What the pages show, as plain values: pure functions from the status read-model and the
recorded checks to the rows, cells and lines that the templates lay out.

Nothing here escapes or draws: the templates escape every text (Jinja2's autoescape) and
`charts` gives the pictures' geometry. May import: `health`, `model`, `policy`, `status`,
`store` (for its record types), `render` (its words for times and durations), `config` (for
the job links) and the standard library.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import median
from urllib.parse import quote

from rackwatch import health
from rackwatch.config import job_url
from rackwatch.model import AgentHealth, Health, Silence
from rackwatch.policy import format_age
from rackwatch.render.silence import silence_text
from rackwatch.render.status import cycle_text, drift_lines, next_text
from rackwatch.render.table import ago, duration, plural, utc, with_error_line
from rackwatch.status import RackStatus
from rackwatch.store import AgentState, CheckRecord

# A cell's colour, by what a person should make of the agent; silenced outranks its health.
SILENCED = "silenced"
CELL_ORDER = ("unhealthy", "excluded", "unknown", "healthy", SILENCED)
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")  # what a URL's path carries as it is (RFC 3986)
# The latest checks the agent page lists, and those its pictures cover.
TABLE_CHECKS = 50
CHART_CHECKS = 200


def agent_href(agent: str) -> str:
    """The agent page's path: the name percent-encoded whole, "/" and "?" included."""
    return f"/agents/{_encoded(agent)}"


def rack_href(rack: str) -> str:
    return f"/racks/{_encoded(rack)}"


def _encoded(name: str) -> str:
    # Most names need no encoding, and a lab page quotes thousands of them.
    return name if _UNRESERVED.fullmatch(name) else quote(name, safe="")


@dataclass(frozen=True, slots=True)
class Cell:
    """One agent in its rack's grid."""

    agent: str
    href: str
    colour: str  # one of CELL_ORDER
    classes: str  # its HTML classes: "cell", its colour, and "person" when it needs one
    label: str  # under the name: its state, and for how long or why it is excluded
    title: str  # the tooltip: the whole story on one line
    needs_a_person: bool


@dataclass(frozen=True, slots=True)
class RackHeader:
    """What a rack's box says above its machines, on the lab page and its own page."""

    rack: str
    href: str
    reading: str  # "ok", "failures", "attention", "error", "running" or "never checked"
    cycle: str  # the last cycle: when it started, how long it took
    next_check: str
    incident: str | None
    silence: str | None
    drift: list[str]
    counts: list[tuple[str, int]]  # (colour, agents), by CELL_ORDER, only those with some
    needing: int  # agents that need a person


@dataclass(frozen=True, slots=True)
class RackBox:
    header: RackHeader
    cells: list[Cell]


@dataclass(frozen=True, slots=True)
class MachineRow:
    """One agent on its rack's page."""

    agent: str
    href: str
    machine: str
    colour: str
    health: str
    last_outcome: str
    checked: str
    failures: int
    pass_rate: str
    pass_share: float | None  # passed / judged, for the bar
    provision: str  # the median of its latest passes, and "slower ×2.3" when it slowed
    provision_s: float | None
    maas_status: str
    detail: str


def cell_colour(status: RackStatus, agent: str) -> str:
    if agent in status.silenced:
        return SILENCED
    return str(status.health_of(agent).state)


def rack_header(
    status: RackStatus, now: datetime, cells: Sequence[Cell] | None = None
) -> RackHeader:
    """The rack's box head; `cells` are its agents' cells, when already made."""
    if cells is None:
        cells = [_cell(status, state, now) for state in status.agents]
    colours = Counter(cell.colour for cell in cells)
    incident = status.incident
    return RackHeader(
        rack=status.rack,
        href=rack_href(status.rack),
        reading=_reading(status),
        cycle=cycle_text(status.last_cycle, now),
        next_check=next_text(status.next_check, now),
        incident=(
            f"rack incident for {format_age(now - incident.opened_at)}: {incident.reason}"
            if incident is not None
            else None
        ),
        silence=silence_text(status.silence) if status.silence is not None else None,
        drift=drift_lines(status, now, with_health=False),
        counts=[(colour, colours[colour]) for colour in CELL_ORDER if colours[colour]],
        needing=sum(cell.needs_a_person for cell in cells),
    )


def rack_box(status: RackStatus, now: datetime) -> RackBox:
    cells = [_cell(status, state, now) for state in status.agents]
    return RackBox(rack_header(status, now, cells), cells)


def _cell(status: RackStatus, state: AgentState, now: datetime) -> Cell:
    agent = state.agent
    known = status.health_of(agent)
    said = str(known.state)
    # Why an excluded agent is out: offline, stale, quarantined, no_queue.
    label = str(known.outcome) if said == "excluded" and known.outcome is not None else said
    title = f"{agent}: {said}"
    if known.since is not None:
        age = format_age(now - known.since)
        label += f" {age}"
        title += f" for {age}"
    if known.reason:
        title += f": {known.reason}"
    silence = status.silenced.get(agent)
    needs = status.needs_a_person(state)
    colour = said
    if silence is not None:
        title += f"; {silence_text(silence)}"
        colour = SILENCED
    return Cell(
        agent=agent,
        href=agent_href(agent),
        colour=colour,
        classes=f"cell {colour} person" if needs else f"cell {colour}",
        label=label,
        title=title,
        needs_a_person=needs,
    )


def health_text(status: RackStatus, state: AgentState, now: datetime) -> str:
    """Its health and for how long: "unhealthy for 2h 0m", "unknown"."""
    known = status.health_of(state.agent)
    since = f" for {format_age(now - known.since)}" if known.since else ""
    return f"{known.state}{since}"


def machine_row(status: RackStatus, state: AgentState, now: datetime) -> MachineRow:
    trend = status.trends.get(state.agent)
    judged = trend.judged if trend else 0
    provision_s = median(trend.provision_s) if trend and trend.provision_s else None
    provision = "-"
    if trend and provision_s is not None:
        ratio = health.slowdown(trend.provision_s)
        provision = duration(provision_s) + (f" slower ×{ratio:.1f}" if ratio else "")
    return MachineRow(
        agent=state.agent,
        href=agent_href(state.agent),
        machine=state.machine or "",
        colour=cell_colour(status, state.agent),
        health=health_text(status, state, now),
        last_outcome=str(state.last.outcome) if state.last else "-",
        checked=ago(_checked_at(state.last), now) if state.last else "-",
        failures=state.consecutive_failures,
        pass_rate=f"{trend.passed}/{judged}" if trend and judged else "-",
        pass_share=trend.passed / judged if trend and judged else None,
        provision=provision,
        provision_s=provision_s,
        maas_status=status.maas_status_of(state.agent) or "",
        detail=_detail(status, state),
    )


def _detail(status: RackStatus, state: AgentState) -> str:
    known = status.health_of(state.agent)
    if known.state is Health.UNHEALTHY:
        return with_error_line(known.reason, status.health_logs.get(state.agent))
    return with_error_line(state.last.detail, state.last.provision_log) if state.last else ""


def lab_summary(racks: Sequence[RackStatus], boxes: Sequence[RackBox]) -> str:
    """The lab in a line, from the racks and their boxes: "2,000 agents in 20 racks: 1,950
    healthy, 20 unhealthy, ...; 23 need a person; 0 rack incidents open"."""
    colours = Counter(cell.colour for box in boxes for cell in box.cells)
    agents = sum(len(box.cells) for box in boxes)
    needing = sum(cell.needs_a_person for box in boxes for cell in box.cells)
    incidents = sum(rack.incident is not None for rack in racks)
    counts = ", ".join(f"{colours[colour]:,} {colour}" for colour in CELL_ORDER)
    return (
        f"{plural(agents, 'agent')} in {plural(len(racks), 'rack')}: {counts};"
        f" {needing:,} {'needs' if needing == 1 else 'need'} a person;"
        f" {plural(incidents, 'rack incident')} open"
    )


@dataclass(frozen=True, slots=True)
class CheckRow:
    """One check on its agent's page."""

    started: str  # UTC
    rack: str
    outcome: str
    job_id: str
    job_url: str | None
    provision_status: str
    took: str
    detail: str
    log: str | None  # its provision log excerpt


def check_rows(checks: Sequence[CheckRecord], web_base: str | None) -> list[CheckRow]:
    return [
        CheckRow(
            started=utc(check.created_at),
            rack=check.rack,
            outcome=str(check.outcome) if check.outcome else "unfinished",
            job_id=check.job_id or "",
            job_url=job_url(web_base, check.job_id),
            provision_status="" if check.provision_status is None else str(check.provision_status),
            took=duration(check.duration_s) if check.job_id else "",
            detail=check.detail + (f"; later: {check.late_result}" if check.late_result else ""),
            log=check.provision_log,
        )
        for check in checks
    ]


@dataclass(frozen=True, slots=True)
class AgentSummary:
    """The head of an agent's page: its health, since when and why."""

    agent: str
    rack: str
    rack_href: str
    machine: str
    colour: str
    state: str
    since: str  # "since 2026-12-01 20:14:40 UTC (2h 0m)", or ""
    reason: str
    job_id: str | None
    job_url: str | None
    silence: str | None
    maas_status: str
    needs_a_person: bool


def agent_summary(
    agent: str,
    latest: CheckRecord,
    known: AgentHealth,
    *,
    silence: Silence | None,
    maas_status: str | None,
    unhealthy_log: str | None,
    now: datetime,
    web_base: str | None,
) -> AgentSummary:
    """The agent's health as recorded (`known`), under the rack of its `latest` check;
    `unhealthy_log` is the provision log of the check that made it unhealthy."""
    said = None
    if silence is not None:
        said = silence_text(silence) + (f" (rack {silence.rack})" if silence.rack else "")
    return AgentSummary(
        agent=agent,
        rack=latest.rack,
        rack_href=rack_href(latest.rack),
        machine=latest.machine or "",
        colour=SILENCED if silence is not None else str(known.state),
        state=str(known.state),
        since=(
            f"since {utc(known.since)} UTC ({format_age(now - known.since)})" if known.since else ""
        ),
        reason=with_error_line(known.reason, unhealthy_log),
        job_id=known.job_id,
        job_url=job_url(web_base, known.job_id),
        silence=said,
        maas_status=maas_status or "",
        needs_a_person=silence is None and health.needs_a_person(known, maas_status),
    )


def _reading(status: RackStatus) -> str:
    if status.last_cycle is None:
        return "never checked"
    if status.last_cycle.finished_at is None:
        return "running"
    return status.reading or "-"


def _checked_at(check: CheckRecord) -> datetime:
    return check.finished_at or check.created_at
