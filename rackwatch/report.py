"""How results read: text tables for people, JSON for programs, a progress line.

A cycle's results (run-once, demo), where each agent stands (status), and one agent's checks
(history). Functions here return strings; only `cli` prints them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rackwatch.check import RackReport, Tally
from rackwatch.model import Outcome
from rackwatch.policy import format_age
from rackwatch.store import AgentState, CheckRecord, CycleRecord

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
    "LAST OUTCOME",
    "WHEN",
    "FAILURES",
    "LAST PASSED",
    "JOB IN FLIGHT",
    "DETAIL",
)


@dataclass(frozen=True, slots=True)
class RackStatus:
    """One rack as `rackwatch status` shows it."""

    rack: str
    last_cycle: CycleRecord | None
    next_check: datetime | None  # None for a rack not in the configuration: never scheduled
    agents: Sequence[AgentState]


def status_text(racks: Sequence[RackStatus], now: datetime) -> str:
    """A header and a table per rack, then one summary line."""
    blocks = [_rack_status_text(rack, now) for rack in racks]
    return "\n\n".join([*blocks, status_summary(racks)])


def _rack_status_text(status: RackStatus, now: datetime) -> str:
    cycle = status.last_cycle
    header = f"{status.rack}: {_cycle_text(cycle, now)}; {_next_text(status.next_check, now)}"
    if cycle is not None and cycle.error:
        header += f"\n  {cycle.error}"
    rows = [
        (
            state.agent,
            str(state.last.outcome) if state.last else "-",
            _ago(_checked_at(state.last), now) if state.last else "-",
            str(state.consecutive_failures),
            _ago(state.last_passed_at, now) if state.last_passed_at else "never",
            (state.in_flight.job_id or "") if state.in_flight else "",
            state.last.detail if state.last else "",
        )
        for state in status.agents
    ]
    if not rows:
        return header + "\n  no agents recorded"
    return header + "\n" + table(STATUS_COLUMNS, rows, indent="  ")


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
    """One line: how many agents stand where, and how many jobs are in flight."""
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
    return (
        f"{plural(len(racks), 'rack')}, {plural(len(agents), 'agent')} by their last outcome: "
        + ", ".join(parts)
        + f"; {plural(in_flight, 'job')} in flight"
    )


def status_json(racks: Sequence[RackStatus]) -> str:
    """The structure `rackwatch status --help` documents; times are UTC ISO 8601."""
    return json.dumps({"racks": [_rack_status_json(rack) for rack in racks]}, indent=2)


def _rack_status_json(status: RackStatus) -> dict[str, Any]:
    cycle = status.last_cycle
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
        "agents": [
            {
                "agent": state.agent,
                "machine": state.machine,
                "last_outcome": str(state.last.outcome) if state.last else None,
                "last_checked_at": _iso(_checked_at(state.last)) if state.last else None,
                "consecutive_failures": state.consecutive_failures,
                "last_passed_at": _iso(state.last_passed_at),
                "job_in_flight": state.in_flight.job_id if state.in_flight else None,
                "detail": state.last.detail if state.last else None,
            }
            for state in status.agents
        ],
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
            check.detail,
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
