"""Health over time: each agent's health state and each rack's incidents, as pure functions.

An agent is `unknown` until a check says something about the machine, `healthy` once its last
judged check passed, `unhealthy` once its last `failures_to_unhealthy` judged checks failed or
timed out, and `excluded` while it cannot be checked (offline, quarantined, stale, no queue).
`error` outcomes, busy agents and dry runs say nothing about the machine and change nothing.

A rack cycle in which a large share of the checked agents fail is a rack incident (a switch,
power or the MAAS images, rather than the machines): its failures do not count against the
agents. So is a rack whose MAAS or Testflinger listing failed two cycles in a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rackwatch.model import AgentHealth, Fact, Health, Outcome

EXCLUDING = frozenset({Outcome.OFFLINE, Outcome.QUARANTINED, Outcome.STALE, Outcome.NO_QUEUE})
JUDGED = frozenset({Outcome.PASSED, Outcome.FAILED, Outcome.TIMED_OUT})
FAILING = frozenset({Outcome.FAILED, Outcome.TIMED_OUT})
# MAAS statuses (status_name) that say the machine itself is in trouble.
MAAS_TROUBLE = frozenset(
    {
        "Broken",
        "Failed commissioning",
        "Failed deployment",
        "Failed testing",
        "Failed disk erasing",
        "Releasing failed",
        "Failed to enter rescue mode",
        "Failed to exit rescue mode",
    }
)


def assess(
    current: AgentHealth, facts: Sequence[Fact], *, failures_to_unhealthy: int
) -> AgentHealth:
    """The agent's health after its latest check; `facts` are its checks, newest first.

    The state changes only on a check that says something about the machine; `since` and
    `reason` change only when the state does.
    """
    if not facts:
        return current
    latest = facts[0]
    if latest.outcome in EXCLUDING:
        return _become(current, Health.EXCLUDED, latest)
    if latest.outcome is Outcome.PASSED:
        return _become(current, Health.HEALTHY, latest)
    if latest.outcome in FAILING and not latest.in_incident:
        judged = [f for f in facts if f.outcome in JUDGED and not f.in_incident]
        streak = judged[:failures_to_unhealthy]
        if len(streak) == failures_to_unhealthy and all(f.outcome in FAILING for f in streak):
            return _become(current, Health.UNHEALTHY, latest)
        if current.state is Health.EXCLUDED:
            # Back in service but not yet proven either way.
            return _become(current, Health.UNKNOWN, latest)
    return current


def _become(current: AgentHealth, state: Health, fact: Fact) -> AgentHealth:
    reason = str(fact.outcome) + (f": {fact.detail}" if fact.detail else "")
    if current.state is state:
        if state is Health.EXCLUDED and current.reason != reason:
            return replace(current, reason=reason, job_id=fact.job_id)
        return current
    return AgentHealth(state, since=fact.at, reason=reason, job_id=fact.job_id)


def is_alerting(before: Health, after: Health) -> bool:
    """Transitions a person hears about: falling ill, and recovering."""
    return after is Health.UNHEALTHY or (before is Health.UNHEALTHY and after is Health.HEALTHY)


def incident_reason(
    outcomes: Sequence[Outcome],
    *,
    ratio: float,
    listing_error: str | None,
    previous_listing_error: str | None,
) -> str | None:
    """Why this rack cycle is a rack incident, or None when it is not.

    Needs at least three checked agents, so that one or two bad machines are never taken
    for a lab-wide failure.
    """
    if listing_error is not None:
        if previous_listing_error is not None:
            return f"the rack could not be listed two cycles in a row: {listing_error}"
        return None
    checked = [o for o in outcomes if o in JUDGED]
    failed = [o for o in checked if o in FAILING]
    if len(checked) >= 3 and len(failed) / len(checked) >= ratio:
        return (
            f"{len(failed)} of {len(checked)} checked agents failed "
            f"({len(failed) / len(checked):.0%}): suspected lab infrastructure failure "
            "(switch, power, MAAS images)"
        )
    return None


def drift(outcome: Outcome, maas_status: str | None) -> str | None:
    """What is wrong with the inventory around one machine, or None.

    A machine with no agent, an agent gone silent, or a machine MAAS itself marks as broken or
    failed: things a test run would trip over that no provisioning job reports.
    """
    if maas_status in MAAS_TROUBLE:
        return f"MAAS marks the machine {maas_status}"
    if outcome is Outcome.NO_AGENT:
        return "a machine of the rack with no Testflinger agent"
    if outcome is Outcome.STALE:
        return "its agent went stale"
    return None
