"""How results read: text tables for people, JSON for programs, a progress line.

A cycle's results (run-once, demo), where each agent and rack stands and what needs a person
(status), and one agent's checks (history). Functions here return strings; only `cli` prints them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from statistics import median
from typing import Any

from rackwatch.check import RackReport, Tally
from rackwatch.health import MAAS_TROUBLE
from rackwatch.model import UNKNOWN, AgentHealth, Health, Outcome
from rackwatch.policy import format_age
from rackwatch.store import AgentState, AgentTrend, CheckRecord, CycleRecord, IncidentRecord

COLUMNS = ("AGENT", "MACHINE", "OUTCOME", "JOB ID", "DURATION", "DETAIL")

OUTCOME_MEANINGS: Sequence[tuple[Outcome, str]] = (
    (Outcome.PASSED, "the provisioning job ran and provision_status was 0"),
    (Outcome.FAILED, "the job ended, but provisioning exited non-zero or never ran"),
    (Outcome.TIMED_OUT, "the job did not end within check.job_timeout; rackwatch cancelled it"),
    (Outcome.ERROR, "MAAS or Testflinger kept failing for this agent; says nothing of the machine"),
    (Outcome.OFFLINE, "the agent is offline or in maintenance; not checked"),
    (Outcome.BUSY, "the agent runs someone else's job; never preempted"),
    (Outcome.QUARANTINED, "a fail streak longer than check.max_fail_streak; not checked"),
    (Outcome.STALE, "waiting, but silent for longer than check.stale_after: a dead agent?"),
    (Outcome.NO_QUEUE, "no queue that this agent alone serves, so a job could land elsewhere"),
    (Outcome.NO_AGENT, "a machine of the rack with no Testflinger agent"),
    (Outcome.READY, "--dry-run: a job would have been submitted"),
)


def exit_code(reports: Sequence[RackReport]) -> int:
    """69 when a rack could not be checked, 1 when a check failed, else 0."""
    if any(r.cycle.status == "error" for r in reports):
        return 69
    if any(c.outcome is not None and c.outcome.is_failure for r in reports for c in r.checks):
        return 1
    return 0


def as_json(reports: Sequence[RackReport]) -> str:
    return json.dumps({"racks": [_rack_json(r) for r in reports]}, indent=2)


def _rack_json(report: RackReport) -> dict[str, Any]:
    cycle = report.cycle
    return {
        "rack": cycle.rack,
        "status": cycle.status,
        "error": cycle.error,
        "started_at": _iso(cycle.started_at),
        "finished_at": _iso(cycle.finished_at),
        "agents": [
            {
                "agent": check.agent,
                "machine": check.machine,
                "outcome": str(check.outcome) if check.outcome else None,
                "job_id": check.job_id,
                "provision_status": check.provision_status,
                "detail": check.detail,
                "duration_s": _round(check.duration_s) if check.job_id else None,
            }
            for check in sorted(report.checks, key=lambda c: c.agent)
        ],
    }


def as_text(reports: Sequence[RackReport]) -> str:
    """A table per rack, then one summary line."""
    blocks = [_rack_text(report) for report in reports]
    return "\n\n".join(blocks) + "\n\n" + summary(reports)


def _rack_text(report: RackReport) -> str:
    cycle = report.cycle
    took = cycle.finished_at - cycle.started_at if cycle.finished_at else None
    header = f"{cycle.rack}: {cycle.status or 'unfinished'}"
    if took is not None:
        header += f" in {format_age(took)}"
    if cycle.error:
        header += f"\n  {cycle.error}"
    rows = [
        (
            check.agent,
            check.machine or "",
            str(check.outcome) if check.outcome else "unfinished",
            check.job_id or "",
            _duration(check.duration_s) if check.job_id else "",
            check.detail,
        )
        for check in sorted(report.checks, key=lambda c: c.agent)
    ]
    if not rows:
        return header
    return header + "\n" + table(COLUMNS, rows, indent="  ")


def summary(reports: Sequence[RackReport]) -> str:
    counts = Counter(str(c.outcome) for r in reports for c in r.checks if c.outcome)
    skipped = sum(n for outcome, n in counts.items() if Outcome(outcome).is_skip)
    errors = sum(r.cycle.status == "error" for r in reports)
    parts = [
        f"{sum(counts.values())} agents",
        f"{counts[Outcome.PASSED]} passed",
        f"{counts[Outcome.FAILED]} failed",
        f"{counts[Outcome.TIMED_OUT]} timed out",
        f"{counts[Outcome.ERROR]} errors",
        f"{skipped} not checked",
    ]
    racks = f"{len(reports)} rack" + ("s" if len(reports) != 1 else "")
    if errors:
        racks += f" ({errors} could not be checked)"
    return f"{racks}: " + ", ".join(parts)


def progress_line(racks: Sequence[str], tally: Tally, elapsed: timedelta) -> str:
    names = ", ".join(racks) if len(racks) <= 3 else f"{len(racks)} racks"
    return (
        f"{names}: {tally.submitted} submitted, {tally.running} running, "
        f"{tally.passed} passed, {tally.failed} failed, {tally.left} left · {format_age(elapsed)}"
    )


def explain_outcomes() -> str:
    width = max(len(o) for o, _ in OUTCOME_MEANINGS)
    return "What the outcomes mean:\n" + "\n".join(
        f"  {outcome:<{width}}  {meaning}" for outcome, meaning in OUTCOME_MEANINGS
    )


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """A fixed-width table; the last column is left ragged."""
    widths = [max(len(str(row[i])) for row in [columns, *rows]) for i in range(len(columns))]
    lines = []
    for row in [columns, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    return format_age(timedelta(seconds=seconds))


def _round(seconds: float | None) -> float | None:
    return round(seconds, 3) if seconds is not None else None


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


# status


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

# MAAS status names saying that MAAS itself found the machine broken: Broken, and the states
# MAAS's "failed" filter groups together.

# A latest pass this many times the median of the latest passes is flagged: a machine whose
# provisioning slows down is degrading before it fails. Fewer passes make no median to trust.
SLOWER_RATIO = 2.0
SLOWER_MIN_PASSES = 3


@dataclass(frozen=True, slots=True)
class RackStatus:
    """One rack as `rackwatch status` shows it."""

    rack: str
    last_cycle: CycleRecord | None
    next_check: datetime | None  # None for a rack not in the configuration: never scheduled
    agents: Sequence[AgentState]
    incident: IncidentRecord | None = None  # the rack's open incident
    health: Mapping[str, AgentHealth] = field(default_factory=dict)  # by agent; else unknown
    trends: Mapping[str, AgentTrend] = field(default_factory=dict)  # by agent

    def health_of(self, agent: str) -> AgentHealth:
        return self.health.get(agent, UNKNOWN)


@dataclass(frozen=True, slots=True)
class Drift:
    """Where a rack differs from a lab whose every machine is checked and well, by the records."""

    no_agent: list[str]  # machines of the rack with no Testflinger agent
    stale: list[tuple[str, datetime | None]]  # agents gone silent, and since when checks say so
    maas: list[tuple[AgentState, str]]  # agents whose machine MAAS marks broken or failed


def drift(status: RackStatus) -> Drift:
    """The rack's drift, from each agent's latest check: its outcome and its MAAS status."""
    no_agent, stale, maas = [], [], []
    for state in status.agents:
        outcome = state.last.outcome if state.last and not state.in_flight else None
        trend = status.trends.get(state.agent)
        if outcome is Outcome.NO_AGENT:
            no_agent.append(state.machine or state.agent)
        if outcome is Outcome.STALE:
            stale.append((state.agent, trend.stale_since if trend else None))
        if trend is not None and trend.maas_status in MAAS_TROUBLE:
            maas.append((state, trend.maas_status))
    return Drift(no_agent, stale, maas)


def slowdown(provision_s: Sequence[float]) -> float | None:
    """How many times the median the latest pass took (newest first), if SLOWER_RATIO or more."""
    if len(provision_s) < SLOWER_MIN_PASSES:
        return None
    middle = median(provision_s)
    if middle <= 0:
        return None
    ratio = provision_s[0] / middle
    return ratio if ratio >= SLOWER_RATIO else None


def needs_a_person(status: RackStatus, state: AgentState) -> bool:
    """Unhealthy; out of service by its own failure; or its machine is broken by MAAS's account.

    An agent that took itself offline (a failed device recovery), one gone stale, and one
    quarantined for its fail streak need a person. One an admin took offline or put in
    maintenance does not, nor one without a queue of its own: rackwatch cannot check it, but
    it serves jobs.
    """
    health = status.health_of(state.agent)
    if health.state is Health.UNHEALTHY:
        return True
    if health.state is Health.EXCLUDED and _is_agent_side(health.reason):
        return True
    trend = status.trends.get(state.agent)
    return trend is not None and trend.maas_status in MAAS_TROUBLE


def _is_agent_side(reason: str) -> bool:
    # A Testflinger agent whose device recovery failed sets itself offline with a comment
    # saying so ("... Recovery failed during job ..."), which the offline reason quotes.
    outcome = reason.split(":", 1)[0]
    return outcome in (Outcome.STALE, Outcome.QUARANTINED) or "recovery failed" in reason.casefold()


def needing_a_person(racks: Sequence[RackStatus]) -> list[RackStatus]:
    """`status --unhealthy`: the racks with an open incident or an agent that needs a person,
    each with those agents only."""
    kept = []
    for status in racks:
        agents = [state for state in status.agents if needs_a_person(status, state)]
        if agents or status.incident is not None:
            kept.append(replace(status, agents=agents))
    return kept


def status_text(racks: Sequence[RackStatus], now: datetime) -> str:
    """A header, a table and drift per rack, then two summary lines."""
    blocks = [_rack_status_text(rack, now) for rack in racks]
    return "\n\n".join([*blocks, status_summary(racks)])


def unhealthy_text(racks: Sequence[RackStatus], now: datetime) -> str:
    """`status --unhealthy` for racks `needing_a_person` kept: first one line saying how much
    needs a person, since a Nagios check shows the first line, then the racks."""
    if not racks:
        return "nothing needs a person"
    agents = sum(len(rack.agents) for rack in racks)
    incidents = sum(rack.incident is not None for rack in racks)
    counts = [plural(n, noun) for n, noun in ((agents, "agent"), (incidents, "rack incident")) if n]
    head = f"needs a person: {' and '.join(counts)}, in {plural(len(racks), 'rack')}"
    blocks = [_rack_status_text(rack, now, none="  no agent needs a person") for rack in racks]
    return "\n\n".join([head, *blocks])


def _rack_status_text(status: RackStatus, now: datetime, none: str = "  no agents recorded") -> str:
    cycle = status.last_cycle
    lines = [f"{status.rack}: {_cycle_text(cycle, now)}; {_next_text(status.next_check, now)}"]
    if cycle is not None and cycle.error:
        lines.append(f"  {cycle.error}")
    if status.incident is not None:
        opened = format_age(now - status.incident.opened_at)
        lines.append(f"  ⚠ rack incident for {opened}: {status.incident.reason}")
    rows = [_agent_row(status, state, now) for state in status.agents]
    lines.append(table(STATUS_COLUMNS, rows, indent="  ") if rows else none)
    lines.extend(_drift_lines(status, now))
    return "\n".join(lines)


def _agent_row(status: RackStatus, state: AgentState, now: datetime) -> tuple[str, ...]:
    health = status.health_of(state.agent)
    trend = status.trends.get(state.agent)
    if health.state is Health.UNHEALTHY:
        # Why it became unhealthy, and the job whose log says more.
        detail = health.reason + (f" (job {health.job_id})" if health.job_id else "")
    else:
        detail = state.last.detail if state.last else ""
    return (
        state.agent,
        str(health.state) + (f" {format_age(now - health.since)}" if health.since else ""),
        str(state.last.outcome) if state.last else "-",
        _ago(_checked_at(state.last), now) if state.last else "-",
        str(state.consecutive_failures),
        f"{trend.passed}/{trend.judged}" if trend and trend.judged else "-",
        _provision_text(trend.provision_s) if trend and trend.provision_s else "-",
        _ago(state.last_passed_at, now) if state.last_passed_at else "never",
        (state.in_flight.job_id or "") if state.in_flight else "",
        detail,
    )


def _provision_text(provision_s: Sequence[float]) -> str:
    text = _duration(median(provision_s))
    ratio = slowdown(provision_s)
    return text if ratio is None else f"{text} slower ×{ratio:.1f}"


def _drift_lines(status: RackStatus, now: datetime) -> list[str]:
    found = drift(status)
    lines = []
    if found.no_agent:
        lines.append("  no agent: " + ", ".join(found.no_agent))
    if found.stale:
        stale = [
            agent + (f" (for {format_age(now - since)})" if since else "")
            for agent, since in found.stale
        ]
        lines.append("  stale: " + ", ".join(stale))
    if found.maas:
        said = [
            f"{state.machine or state.agent} {maas_status} ({_agent_health_text(status, state)})"
            for state, maas_status in found.maas
        ]
        lines.append("  MAAS says: " + ", ".join(said))
    return lines


def _agent_health_text(status: RackStatus, state: AgentState) -> str:
    if state.last is not None and state.last.outcome is Outcome.NO_AGENT:
        return "no agent"
    return f"agent {status.health_of(state.agent).state}"


def _cycle_text(cycle: CycleRecord | None, now: datetime) -> str:
    if cycle is None:
        return "never checked"
    started = f"last cycle started {_ago(cycle.started_at, now)}"
    if cycle.finished_at is None:
        return f"{started}, still running"
    took = _duration((cycle.finished_at - cycle.started_at).total_seconds())
    return f"{started}, ended after {took}: {cycle.status}"


def _next_text(next_check: datetime | None, now: datetime) -> str:
    if next_check is None:
        return "not scheduled (not in the configuration)"
    if next_check <= now:
        return "next check due now"
    return f"next check in {format_age(next_check - now)}"


def status_summary(racks: Sequence[RackStatus]) -> str:
    """Two lines: how many agents stand where and how many jobs are in flight; then their health
    and the open rack incidents."""
    agents = [state for rack in racks for state in rack.agents]
    counts = Counter(state.last.outcome for state in agents if state.last and state.last.outcome)
    skipped = sum(n for outcome, n in counts.items() if outcome.is_skip)
    in_flight = sum(state.in_flight is not None for state in agents)
    parts = [
        f"{counts[Outcome.PASSED]} passed",
        f"{counts[Outcome.FAILED] + counts[Outcome.TIMED_OUT]} failed or timed out",
        plural(counts[Outcome.ERROR], "error"),
        f"{skipped} not checked",
    ]
    health = Counter(rack.health_of(state.agent).state for rack in racks for state in rack.agents)
    incidents = sum(rack.incident is not None for rack in racks)
    return (
        f"{plural(len(racks), 'rack')}, {plural(len(agents), 'agent')} by their last outcome: "
        + ", ".join(parts)
        + f"; {plural(in_flight, 'job')} in flight\n"
        + "by health: "
        + ", ".join(f"{health[state]} {state}" for state in HEALTH_ORDER)
        + f"; {plural(incidents, 'rack incident')} open"
    )


def status_json(racks: Sequence[RackStatus]) -> str:
    """The structure `rackwatch status --help` documents; times are UTC ISO 8601."""
    return json.dumps({"racks": [_rack_status_json(rack) for rack in racks]}, indent=2)


def _rack_status_json(status: RackStatus) -> dict[str, Any]:
    cycle = status.last_cycle
    incident = status.incident
    found = drift(status)
    return {
        "rack": status.rack,
        "last_cycle": (
            None
            if cycle is None
            else {
                "started_at": _iso(cycle.started_at),
                "finished_at": _iso(cycle.finished_at),
                "status": cycle.status if cycle.finished_at else "running",
                "error": cycle.error,
                "duration_s": (
                    _round((cycle.finished_at - cycle.started_at).total_seconds())
                    if cycle.finished_at
                    else None
                ),
            }
        ),
        "next_check": _iso(status.next_check),
        "incident": (
            None
            if incident is None
            else {"opened_at": _iso(incident.opened_at), "reason": incident.reason}
        ),
        "drift": {
            "no_agent": found.no_agent,
            "stale": [{"agent": agent, "since": _iso(since)} for agent, since in found.stale],
            "maas": [
                {"agent": state.agent, "machine": state.machine, "maas_status": maas_status}
                for state, maas_status in found.maas
            ],
        },
        "agents": [_agent_status_json(status, state) for state in status.agents],
    }


def _agent_status_json(status: RackStatus, state: AgentState) -> dict[str, Any]:
    health = status.health_of(state.agent)
    trend = status.trends.get(state.agent)
    provision_s = trend.provision_s if trend else ()
    return {
        "agent": state.agent,
        "machine": state.machine,
        "health": {
            "state": str(health.state),
            "since": _iso(health.since),
            "reason": health.reason,
            "job_id": health.job_id,
        },
        "last_outcome": str(state.last.outcome) if state.last else None,
        "last_checked_at": _iso(_checked_at(state.last)) if state.last else None,
        "consecutive_failures": state.consecutive_failures,
        "pass_rate": {
            "passed": trend.passed if trend else 0,
            "judged": trend.judged if trend else 0,
        },
        "median_provision_s": _round(median(provision_s)) if provision_s else None,
        "last_provision_s": _round(provision_s[0]) if provision_s else None,
        "last_passed_at": _iso(state.last_passed_at),
        "job_in_flight": state.in_flight.job_id if state.in_flight else None,
        "maas_status": trend.maas_status if trend else None,
        "detail": state.last.detail if state.last else None,
    }


# history

HISTORY_COLUMNS = ("TIME (UTC)", "RACK", "OUTCOME", "JOB ID", "PROVISION", "DURATION", "DETAIL")


def history_text(agent: str, checks: Sequence[CheckRecord]) -> str:
    """A header line, then one row per check in the order given (newest first)."""
    rows = [
        (
            _utc(check.created_at),
            check.rack,
            str(check.outcome) if check.outcome else "unfinished",
            check.job_id or "",
            "" if check.provision_status is None else str(check.provision_status),
            _duration(check.duration_s) if check.job_id else "",
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
                    "created_at": _iso(check.created_at),
                    "submitted_at": _iso(check.submitted_at),
                    "finished_at": _iso(check.finished_at),
                    "duration_s": _round(check.duration_s) if check.job_id else None,
                    "late_result": check.late_result,
                }
                for check in checks
            ],
        },
        indent=2,
    )


def _checked_at(check: CheckRecord) -> datetime:
    return check.finished_at or check.created_at


def _ago(when: datetime, now: datetime) -> str:
    age = now - when
    if age < timedelta(seconds=1):
        return "just now"
    return f"{format_age(age)} ago"


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def plural(count: int, noun: str) -> str:
    """The count and the noun, plural unless the count is 1: "1 agent", "2,412 agents"."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")
