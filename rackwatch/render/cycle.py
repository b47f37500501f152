"""A cycle's results as `run-once` and `demo` show them: a table per rack and a summary line,
the same as JSON, the terminal's progress line, and what each outcome means.

A rack reads "attention" where its cycle was "ok" but an agent is stale or quarantined
(`health.rack_reading`). May import: `check` (for its report types), `config` (for the job
links), `health`, `model`, `policy` and `render.table`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from rackwatch.check import RackReport
from rackwatch.config import job_url
from rackwatch.health import rack_reading
from rackwatch.jobs import Tally
from rackwatch.model import Outcome
from rackwatch.policy import format_age
from rackwatch.render.table import (
    duration,
    iso,
    rounded,
    skips,
    table,
    visible,
    with_error_line,
)

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


def as_json(reports: Sequence[RackReport], *, web_base: str | None = None) -> str:
    """The racks as data; each check with a job links to it under `web_base` (its `url`)."""
    return json.dumps({"racks": [_rack_json(r, web_base) for r in reports]}, indent=2)


def _rack_json(report: RackReport, web_base: str | None) -> dict[str, Any]:
    cycle = report.cycle
    return {
        "rack": cycle.rack,
        "status": _status(report),
        "error": cycle.error,
        "started_at": iso(cycle.started_at),
        "finished_at": iso(cycle.finished_at),
        "agents": [
            {
                "agent": check.agent,
                "machine": check.machine,
                "outcome": str(check.outcome) if check.outcome else None,
                "job_id": check.job_id,
                "provision_status": check.provision_status,
                "detail": check.detail,
                "duration_s": rounded(check.duration_s) if check.job_id else None,
                "provision_log": check.provision_log,
                "url": job_url(web_base, check.job_id),
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
    header = f"{cycle.rack}: {_status(report) or 'unfinished'}"
    if took is not None:
        header += f" in {format_age(took)}"
    if cycle.error:
        header += f"\n  {visible(cycle.error)}"
    rows = [
        (
            check.agent,
            check.machine or "",
            str(check.outcome) if check.outcome else "unfinished",
            check.job_id or "",
            duration(check.duration_s) if check.job_id else "",
            with_error_line(check.detail, check.provision_log),
        )
        for check in sorted(report.checks, key=lambda c: c.agent)
    ]
    if not rows:
        return header
    return header + "\n" + table(COLUMNS, rows, indent="  ")


def _status(report: RackReport) -> str | None:
    return rack_reading(report.cycle.status, [c.outcome for c in report.checks if c.outcome])


def summary(reports: Sequence[RackReport]) -> str:
    ended = [(c.outcome, c.detail) for r in reports for c in r.checks if c.outcome]
    counts = Counter(outcome for outcome, _ in ended)
    errors = sum(r.cycle.status == "error" for r in reports)
    parts = [
        f"{len(ended)} agents",
        f"{counts[Outcome.PASSED]} passed",
        f"{counts[Outcome.FAILED]} failed",
        f"{counts[Outcome.TIMED_OUT]} timed out",
        f"{counts[Outcome.ERROR]} errors",
        *skips(ended),
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
