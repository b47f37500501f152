"""`rackwatch status` as text and JSON: a header, a table and drift per rack, then a summary.

A silenced rack has a line under its header, and each agent silenced on its own a line under
the table ("r1-m2: silenced until 2026-12-08 20:31 UTC by alice: reflashing the BMC").

The text takes a `Look`: with a width (a terminal's), every line fits in it, the tables cut
and narrowed alike and the other lines wrapped; in colour, HEALTH and LAST OUTCOME are coloured.

May import: `health` (to apply the slowdown rule it prints), `model`, `policy`, `status` (the
read-model it renders), `store` (for its record types), `render.silence` and `render.table`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from statistics import median
from typing import Any

from rackwatch import health
from rackwatch.model import Health, Outcome
from rackwatch.policy import format_age
from rackwatch.render.silence import silence_json, silence_text
from rackwatch.render.table import (
    PLAIN,
    Layout,
    Look,
    ago,
    colour_of_health,
    colour_of_outcome,
    duration,
    fit,
    iso,
    natural,
    plural,
    rounded,
    skips,
    table,
    with_error_line,
    wrap,
)
from rackwatch.status import RackStatus
from rackwatch.store import AgentState, CheckRecord, CycleRecord

STATUS_COLUMNS = (
    "AGENT",
    "HEALTH",
    "LAST OUTCOME",
    "WHEN",
    "FAILURES",
    "PASS RATE",
    "PROVISION",
    "LAST PASSED",
    "JOB IN FLIGHT",
    "DETAIL",
)

HEALTH_ORDER = (Health.HEALTHY, Health.UNHEALTHY, Health.EXCLUDED, Health.UNKNOWN)

# How the tables narrow to a terminal's width: DETAIL is cut first, then HEALTH and AGENT, each
# to the width named; then the columns least needed at a glance are left out, in this order
# (--wide and --json have them); last the cut columns are cut down to their headings.
_CUT_TO = {"DETAIL": 24, "HEALTH": 16, "AGENT": 16}
_LEAVE_OUT = ("JOB IN FLIGHT", "PROVISION", "PASS RATE", "LAST PASSED", "WHEN", "FAILURES")
_INDENT = "  "
_COLOURS = {"HEALTH": colour_of_health, "LAST OUTCOME": colour_of_outcome}


def status_text(racks: Sequence[RackStatus], now: datetime, look: Look = PLAIN) -> str:
    """A header, a table and drift per rack, then two summary lines.

    With a `look.width`, every line fits in it: the tables share one layout `fit` to it (a
    line under them says what was cut or left out), and the other lines are wrapped."""
    summary = "\n".join(_wrapped(*status_summary(racks).splitlines(), look=look))
    return "\n\n".join([*_racks_text(racks, now, look), summary])


def unhealthy_text(racks: Sequence[RackStatus], now: datetime, look: Look = PLAIN) -> str:
    """`status --unhealthy` for racks `needing_a_person` kept: first one line saying how much
    needs a person, since a Nagios check shows the first line, then the racks."""
    if not racks:
        return "nothing needs a person"
    agents = sum(len(rack.agents) for rack in racks)
    incidents = sum(rack.incident is not None for rack in racks)
    counts = [plural(n, noun) for n, noun in ((agents, "agent"), (incidents, "rack incident")) if n]
    head = f"needs a person: {' and '.join(counts)}, in {plural(len(racks), 'rack')}"
    blocks = _racks_text(racks, now, look, none="  no agent needs a person")
    return "\n\n".join(["\n".join(_wrapped(head, look=look)), *blocks])


def _racks_text(
    racks: Sequence[RackStatus], now: datetime, look: Look, none: str = "  no agents recorded"
) -> list[str]:
    """A block per rack, then, when the tables were narrowed, a line that says how."""
    rows = [[_agent_row(rack, state, now) for state in rack.agents] for rack in racks]
    every_row = [row for rack_rows in rows for row in rack_rows]
    if look.width is None:
        layout = natural(STATUS_COLUMNS, every_row)
    else:
        layout = fit(
            STATUS_COLUMNS,
            every_row,
            look.width,
            indent=_INDENT,
            cut_to=_CUT_TO,
            leave_out=_LEAVE_OUT,
        )
    blocks = [
        _rack_text(rack, now, rack_rows, layout, look, none)
        for rack, rack_rows in zip(racks, rows, strict=True)
    ]
    said = _narrowed(layout, look.width) if look.width else ""
    return blocks + (["\n".join(_wrapped(said, look=look))] if said else [])


def _narrowed(layout: Layout, width: int) -> str:
    """What was done to fit the tables in `width` columns; "" when nothing was."""
    done = ["… ends what is cut short"] if layout.is_cut else []
    done += [f"left out: {', '.join(layout.left_out)}"] if layout.left_out else []
    if not done:
        return ""
    return f"fitted to {width} columns ({'; '.join(done)}): status --wide shows everything"


def _wrapped(*lines: str, look: Look) -> list[str]:
    """The `lines` wrapped to `look.width`; a line feed in one shows as an escape, as in a cell."""
    return [wrapped for line in lines for wrapped in wrap(line, look.width)]


def _rack_text(
    status: RackStatus,
    now: datetime,
    rows: Sequence[Sequence[str]],
    layout: Layout,
    look: Look,
    none: str,
) -> str:
    cycle = status.last_cycle
    lines = [
        f"{status.rack}: {cycle_text(cycle, now, status.reading)};"
        f" {next_text(status.next_check, now)}"
    ]
    if cycle is not None and cycle.error:
        lines.append(f"  {cycle.error}")
    if status.incident is not None:
        opened = format_age(now - status.incident.opened_at)
        lines.append(f"  ⚠ rack incident for {opened}: {status.incident.reason}")
    if status.silence is not None:
        lines.append(f"  rack {silence_text(status.silence)}")
    under = [
        f"  {state.agent}: {silence_text(silence)}"
        for state in status.agents
        if (silence := status.silenced.get(state.agent)) is not None and silence.agent is not None
    ]
    colours = _COLOURS if look.colour else None
    return "\n".join(
        [
            *_wrapped(*lines, look=look),
            table(STATUS_COLUMNS, rows, _INDENT, layout=layout, colours=colours) if rows else none,
            *_wrapped(*under, *(f"  {line}" for line in drift_lines(status, now)), look=look),
        ]
    )


def _agent_row(status: RackStatus, state: AgentState, now: datetime) -> tuple[str, ...]:
    known = status.health_of(state.agent)
    trend = status.trends.get(state.agent)
    if known.state is Health.UNHEALTHY:
        # Why it became unhealthy, its log's error line, and the job whose log says more.
        detail = with_error_line(known.reason, status.health_logs.get(state.agent))
        detail += f" (job {known.job_id})" if known.job_id else ""
    else:
        detail = with_error_line(state.last.detail, state.last.provision_log) if state.last else ""
    return (
        state.agent,
        str(known.state)
        + (f" {format_age(now - known.since)}" if known.since else "")
        + (" (silenced)" if _silenced_alone(status, state) else ""),
        str(state.last.outcome) if state.last else "-",
        ago(_checked_at(state.last), now) if state.last else "-",
        str(state.consecutive_failures),
        f"{trend.passed}/{trend.judged}" if trend and trend.judged else "-",
        _provision_text(trend.provision_s) if trend and trend.provision_s else "-",
        ago(state.last_passed_at, now) if state.last_passed_at else "never",
        (state.in_flight.job_id or "") if state.in_flight else "",
        detail,
    )


def _provision_text(provision_s: Sequence[float]) -> str:
    text = duration(median(provision_s))
    ratio = health.slowdown(provision_s)
    return text if ratio is None else f"{text} slower ×{ratio:.1f}"


def drift_lines(status: RackStatus, now: datetime, *, with_health: bool = True) -> list[str]:
    """Where MAAS and Testflinger disagree on the rack, one line per kind, as the status and the
    web pages say it; `with_health`: a machine MAAS speaks of says its agent's health too."""
    found = status.drift
    lines = []
    if found.no_agent:
        lines.append("no agent: " + ", ".join(found.no_agent))
    if found.stale:
        stale = [
            agent + (f" (for {format_age(now - since)})" if since else "")
            for agent, since in found.stale
        ]
        lines.append("stale: " + ", ".join(stale))
    if found.maas:
        said = [
            f"{state.machine or state.agent} {maas_status}"
            + (f" ({_agent_health_text(status, state)})" if with_health else "")
            for state, maas_status in found.maas
        ]
        lines.append("MAAS says: " + ", ".join(said))
    return lines


def _agent_health_text(status: RackStatus, state: AgentState) -> str:
    if state.last is not None and state.last.outcome is Outcome.NO_AGENT:
        return "no agent"
    return f"agent {status.health_of(state.agent).state}"


def cycle_text(cycle: CycleRecord | None, now: datetime, reading: str | None = None) -> str:
    """The rack's last cycle, as the status and the web pages say it: when it started, how long
    it took, then `reading` (its status as shown) when given."""
    if cycle is None:
        return "never checked"
    started = f"last cycle started {ago(cycle.started_at, now)}"
    if cycle.finished_at is None:
        return f"{started}, still running"
    took = duration((cycle.finished_at - cycle.started_at).total_seconds())
    ended = f"{started}, ended after {took}"
    return f"{ended}: {reading}" if reading else ended


def next_text(next_check: datetime | None, now: datetime) -> str:
    """When the rack's next check is due, as the status and the web pages say it."""
    if next_check is None:
        return "not scheduled (not in the configuration)"
    if next_check <= now:
        return "next check due now"
    return f"next check in {format_age(next_check - now)}"


def status_summary(racks: Sequence[RackStatus]) -> str:
    """Two lines: how many agents stand where and how many jobs are in flight; then their health
    and the open rack incidents."""
    agents = [state for rack in racks for state in rack.agents]
    latest = [
        (state.last.outcome, state.last.detail)
        for state in agents
        if state.last and state.last.outcome
    ]
    counts = Counter(outcome for outcome, _ in latest)
    in_flight = sum(state.in_flight is not None for state in agents)
    parts = [
        f"{counts[Outcome.PASSED]} passed",
        f"{counts[Outcome.FAILED] + counts[Outcome.TIMED_OUT]} failed or timed out",
        plural(counts[Outcome.ERROR], "error"),
        *skips(latest),
    ]
    states = Counter(rack.health_of(state.agent).state for rack in racks for state in rack.agents)
    incidents = sum(rack.incident is not None for rack in racks)
    return (
        f"{plural(len(racks), 'rack')}, {plural(len(agents), 'agent')} by their last outcome: "
        + ", ".join(parts)
        + f"; {plural(in_flight, 'job')} in flight\n"
        + "by health: "
        + ", ".join(f"{states[state]} {state}" for state in HEALTH_ORDER)
        + f"; {plural(incidents, 'rack incident')} open"
    )


def status_json(racks: Sequence[RackStatus]) -> str:
    """The structure `rackwatch status --help` documents; times are UTC ISO 8601."""
    return json.dumps({"racks": [_rack_json(rack) for rack in racks]}, indent=2)


def _rack_json(status: RackStatus) -> dict[str, Any]:
    cycle = status.last_cycle
    incident = status.incident
    found = status.drift
    return {
        "rack": status.rack,
        "last_cycle": (
            None
            if cycle is None
            else {
                "started_at": iso(cycle.started_at),
                "finished_at": iso(cycle.finished_at),
                "status": status.reading if cycle.finished_at else "running",
                "error": cycle.error,
                "duration_s": (
                    rounded((cycle.finished_at - cycle.started_at).total_seconds())
                    if cycle.finished_at
                    else None
                ),
            }
        ),
        "next_check": iso(status.next_check),
        "incident": (
            None
            if incident is None
            else {"opened_at": iso(incident.opened_at), "reason": incident.reason}
        ),
        "drift": {
            "no_agent": found.no_agent,
            "stale": [{"agent": agent, "since": iso(since)} for agent, since in found.stale],
            "maas": [
                {"agent": state.agent, "machine": state.machine, "maas_status": maas_status}
                for state, maas_status in found.maas
            ],
        },
        "agents": [_agent_json(status, state) for state in status.agents],
    }


def _agent_json(status: RackStatus, state: AgentState) -> dict[str, Any]:
    known = status.health_of(state.agent)
    trend = status.trends.get(state.agent)
    provision_s = trend.provision_s if trend else ()
    return {
        "agent": state.agent,
        "machine": state.machine,
        "health": {
            "state": str(known.state),
            "since": iso(known.since),
            "reason": known.reason,
            "job_id": known.job_id,
        },
        "last_outcome": str(state.last.outcome) if state.last else None,
        "last_checked_at": iso(_checked_at(state.last)) if state.last else None,
        "consecutive_failures": state.consecutive_failures,
        "pass_rate": {
            "passed": trend.passed if trend else 0,
            "judged": trend.judged if trend else 0,
        },
        "median_provision_s": rounded(median(provision_s)) if provision_s else None,
        "last_provision_s": rounded(provision_s[0]) if provision_s else None,
        "last_passed_at": iso(state.last_passed_at),
        "job_in_flight": state.in_flight.job_id if state.in_flight else None,
        "maas_status": trend.maas_status if trend else None,
        "detail": state.last.detail if state.last else None,
        "silence": silence_json(status.silenced.get(state.agent)),
    }


def _silenced_alone(status: RackStatus, state: AgentState) -> bool:
    """Whether the agent has a silence of its own (a rack's shows under the rack's header)."""
    silence = status.silenced.get(state.agent)
    return silence is not None and silence.agent is not None


def _checked_at(check: CheckRecord) -> datetime:
    return check.finished_at or check.created_at
