"""Health over time: each agent's health state and each rack's incidents, as pure functions.

An agent is `unknown` until a check says something about the machine, `healthy` once its last
judged check passed, `unhealthy` once its last `failures_to_unhealthy` judged checks failed or
timed out, and `excluded` while it cannot be checked (offline, quarantined, stale, no queue).
`error` outcomes, busy agents and dry runs say nothing about the machine and change nothing.

A rack cycle in which a large share of the checked agents fail is a rack incident (a switch,
power or the MAAS images, rather than the machines): its failures do not count against the
agents. So is a rack whose MAAS or Testflinger listing failed two cycles in a row.

The rules that read health are here too: what needs a person, how the inventory around a
machine drifts, and when a machine's provisioning has slowed down. `status` applies them and
`render` prints what they found. This module imports only `model` and the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from enum import StrEnum
from statistics import median

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
# Excluded for these, an agent is out of service by its own failure.
OWN_FAILURES = frozenset({Outcome.STALE, Outcome.QUARANTINED})
# Skipped for these, an agent cannot be checked: it serves no jobs of ours, but is not offline.
NOT_CHECKABLE = frozenset({Outcome.STALE, Outcome.QUARANTINED, Outcome.NO_QUEUE})

# A latest pass this many times the median of the latest passes is flagged: a machine whose
# provisioning slows down is degrading before it fails. Fewer passes make no median to trust.
SLOWER_RATIO = 2.0
SLOWER_MIN_PASSES = 3


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
    reason = _reason(fact)
    if current.state is state:
        if state is Health.EXCLUDED and current.reason != reason:
            return replace(current, reason=reason, job_id=fact.job_id, outcome=fact.outcome)
        return current
    return AgentHealth(
        state, since=fact.at, reason=reason, job_id=fact.job_id, outcome=fact.outcome
    )


def _reason(fact: Fact) -> str:
    return str(fact.outcome) + (f": {fact.detail}" if fact.detail else "")


def needs_a_person(health: AgentHealth, maas_status: str | None) -> bool:
    """Unhealthy; out of service by its own failure; or its machine is broken by MAAS's account.

    An agent that took itself offline (a failed device recovery), one gone stale, and one
    quarantined for its fail streak need a person. One an admin took offline or put in
    maintenance does not, nor one without a queue of its own: rackwatch cannot check it, but
    it serves jobs. `maas_status` is its machine's MAAS status at its latest check.
    """
    if health.state is Health.UNHEALTHY:
        return True
    if health.state is Health.EXCLUDED and _is_own_failure(health):
        return True
    return maas_status in MAAS_TROUBLE


def _is_own_failure(health: AgentHealth) -> bool:
    return health.outcome in OWN_FAILURES or _says_recovery_failed(health.reason)


def _says_recovery_failed(text: str) -> bool:
    # A Testflinger agent whose device recovery failed sets itself offline with a comment
    # saying so ("... Recovery failed during job ..."), which the offline detail quotes.
    return "recovery failed" in text.casefold()


def is_set_offline_by_admin(outcome: Outcome, detail: str) -> bool:
    """Offline or in maintenance by an admin's hand, not by the agent's failed recovery."""
    return outcome is Outcome.OFFLINE and not _says_recovery_failed(detail)


def rack_reading(status: str | None, outcomes: Iterable[Outcome]) -> str | None:
    """A rack's cycle status as `run-once` and `status` show it: "attention" for an "ok" one in
    which an agent is stale or quarantined (`outcomes` are its agents' latest), else as it is.

    Derived, never stored: the state file keeps "ok", which is what the cycle's checks found.
    """
    if status == "ok" and any(outcome in OWN_FAILURES for outcome in outcomes):
        return "attention"
    return status


def slowdown(provision_s: Sequence[float]) -> float | None:
    """How many times the median the latest pass took (newest first), if SLOWER_RATIO or more."""
    if len(provision_s) < SLOWER_MIN_PASSES:
        return None
    middle = median(provision_s)
    if middle <= 0:
        return None
    ratio = provision_s[0] / middle
    return ratio if ratio >= SLOWER_RATIO else None


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


class DriftKind(StrEnum):
    """A way the inventory around one machine differs from a lab whose every machine is checked."""

    MAAS = "maas"  # MAAS itself marks the machine broken or failed
    NO_AGENT = "no_agent"  # a machine of the rack with no Testflinger agent
    STALE = "stale"  # its agent went silent


def drift_kinds(outcome: Outcome | None, maas_status: str | None) -> frozenset[DriftKind]:
    """How the inventory around one machine drifts, by its latest outcome and MAAS status."""
    kinds: set[DriftKind] = set()
    if maas_status in MAAS_TROUBLE:
        kinds.add(DriftKind.MAAS)
    if outcome is Outcome.NO_AGENT:
        kinds.add(DriftKind.NO_AGENT)
    if outcome is Outcome.STALE:
        kinds.add(DriftKind.STALE)
    return frozenset(kinds)


def drift(outcome: Outcome, maas_status: str | None) -> str | None:
    """What is wrong with the inventory around one machine, or None.

    A machine with no agent, an agent gone silent, or a machine MAAS itself marks as broken or
    failed: things a test run would trip over that no provisioning job reports. Where more
    than one holds, MAAS's word comes first, then a missing agent.
    """
    kinds = drift_kinds(outcome, maas_status)
    if DriftKind.MAAS in kinds:
        return f"MAAS marks the machine {maas_status}"
    if DriftKind.NO_AGENT in kinds:
        return "a machine of the rack with no Testflinger agent"
    if DriftKind.STALE in kinds:
        return "its agent went stale"
    return None
