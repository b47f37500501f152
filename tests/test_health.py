"""Health states and rack incidents, as tables of plain data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rackwatch.health import (
    DriftKind,
    assess,
    drift,
    drift_kinds,
    incident_reason,
    is_alerting,
    needs_a_person,
    slowdown,
)
from rackwatch.model import UNKNOWN, AgentHealth, Fact, Health, Outcome

T0 = datetime(2026, 11, 27, tzinfo=UTC)
Oc = Outcome


def facts(*outcomes: Outcome, incident: set[int] | None = None) -> list[Fact]:
    """Checks given oldest first, returned newest first, six hours apart."""
    made = [
        Fact(o, f"detail {i}", f"job-{i}", T0 + timedelta(hours=6 * i), i in (incident or set()))
        for i, o in enumerate(outcomes)
    ]
    return made[::-1]


def replay(*outcomes: Outcome, incident: set[int] | None = None, n: int = 2) -> list[AgentHealth]:
    """The health after each check, as a daemon would compute it cycle after cycle."""
    all_facts = facts(*outcomes, incident=incident)[::-1]
    states, current = [], UNKNOWN
    for i in range(len(all_facts)):
        current = assess(current, all_facts[: i + 1][::-1], failures_to_unhealthy=n)
        states.append(current)
    return states


def kinds(states: list[AgentHealth]) -> list[Health]:
    return [s.state for s in states]


H, U, X, Q = Health.HEALTHY, Health.UNHEALTHY, Health.EXCLUDED, Health.UNKNOWN


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([Oc.PASSED], [H]),
        ([Oc.FAILED], [Q]),
        ([Oc.FAILED, Oc.TIMED_OUT], [Q, U]),
        ([Oc.PASSED, Oc.FAILED, Oc.FAILED], [H, H, U]),
        ([Oc.FAILED, Oc.FAILED, Oc.PASSED], [Q, U, H]),
        ([Oc.FAILED, Oc.ERROR, Oc.FAILED], [Q, Q, U]),
        ([Oc.PASSED, Oc.BUSY, Oc.READY, Oc.ERROR], [H, H, H, H]),
        ([Oc.BUSY, Oc.NO_AGENT], [Q, Q]),
        ([Oc.PASSED, Oc.OFFLINE, Oc.PASSED], [H, X, H]),
        ([Oc.STALE, Oc.FAILED], [X, Q]),
        ([Oc.FAILED, Oc.PASSED, Oc.FAILED], [Q, H, H]),
    ],
)
def test_health_follows_the_checks(outcomes: list[Outcome], expected: list[Health]) -> None:
    """Two failures in a row make an agent unhealthy; a pass makes it healthy; errors change nothing."""
    assert kinds(replay(*outcomes)) == expected


def test_failures_to_unhealthy_is_configurable() -> None:
    """With one failure enough, the first failure makes the agent unhealthy."""
    assert kinds(replay(Oc.PASSED, Oc.FAILED, n=1)) == [H, U]


def test_incident_failures_do_not_count() -> None:
    """Failures in a rack incident cycle neither make nor extend a failure streak."""
    assert kinds(replay(Oc.PASSED, Oc.FAILED, Oc.FAILED, incident={1, 2})) == [H, H, H]
    assert kinds(replay(Oc.FAILED, Oc.FAILED, Oc.FAILED, incident={1})) == [Q, Q, U]


def test_since_and_reason_mark_when_the_state_began() -> None:
    """`since` is the check that changed the state; later checks of the same state keep it."""
    states = replay(Oc.PASSED, Oc.FAILED, Oc.FAILED, Oc.FAILED)
    unhealthy = states[2]
    assert unhealthy.since == T0 + timedelta(hours=12)
    assert unhealthy.reason == "failed: detail 2"
    assert unhealthy.job_id == "job-2"
    assert states[3] == unhealthy


def test_an_excluded_agent_keeps_its_latest_reason() -> None:
    """Going from offline to stale stays excluded since the first, with the newest reason."""
    states = replay(Oc.OFFLINE, Oc.STALE)
    assert states[1].state is X
    assert states[1].since == states[0].since
    assert states[1].reason == "stale: detail 1"


@pytest.mark.parametrize(
    ("before", "after", "alert"),
    [
        (H, U, True),
        (Q, U, True),
        (U, H, True),
        (Q, H, False),
        (H, X, False),
        (U, X, False),
    ],
)
def test_which_transitions_alert(before: Health, after: Health, alert: bool) -> None:
    """People hear about falling ill and about recovering, nothing else."""
    assert is_alerting(before, after) is alert


@pytest.mark.parametrize(
    ("outcomes", "incident"),
    [
        ([Oc.FAILED, Oc.FAILED, Oc.PASSED, Oc.PASSED], True),
        ([Oc.FAILED, Oc.TIMED_OUT, Oc.PASSED, Oc.PASSED, Oc.PASSED], False),
        ([Oc.FAILED, Oc.FAILED], False),
        ([Oc.FAILED, Oc.FAILED, Oc.FAILED, Oc.OFFLINE, Oc.OFFLINE, Oc.ERROR], True),
        ([Oc.FAILED, Oc.ERROR, Oc.ERROR, Oc.ERROR], False),
    ],
)
def test_a_rack_incident_needs_half_of_at_least_three_checked(
    outcomes: list[Outcome], incident: bool
) -> None:
    """Only judged checks count; skips and errors are neither failures nor passes."""
    reason = incident_reason(outcomes, ratio=0.5, listing_error=None, previous_listing_error=None)
    assert (reason is not None) is incident


def test_an_unreachable_rack_is_an_incident_on_the_second_cycle() -> None:
    """One failed listing is a rack error; two in a row are an incident."""
    first = incident_reason([], ratio=0.5, listing_error="503", previous_listing_error=None)
    second = incident_reason([], ratio=0.5, listing_error="503", previous_listing_error="503")
    assert first is None
    assert second is not None and "two cycles in a row" in second


@pytest.mark.parametrize(
    ("outcome", "maas_status", "said"),
    [
        (Oc.PASSED, "Deployed", None),
        (Oc.PASSED, "Broken", "MAAS marks the machine Broken"),
        (Oc.OFFLINE, "Failed deployment", "MAAS marks the machine Failed deployment"),
        (Oc.NO_AGENT, "Ready", "a machine of the rack with no Testflinger agent"),
        (Oc.STALE, None, "its agent went stale"),
        (Oc.FAILED, "Deployed", None),
    ],
)
def test_drift_names_what_is_wrong_around_a_machine(
    outcome: Outcome, maas_status: str | None, said: str | None
) -> None:
    """Missing agents, stale agents and machines MAAS marks broken or failed are drift."""
    assert drift(outcome, maas_status) == said


@pytest.mark.parametrize(
    ("outcome", "maas_status", "kinds"),
    [
        (Oc.PASSED, "Deployed", set()),
        (Oc.NO_AGENT, "Broken", {DriftKind.NO_AGENT, DriftKind.MAAS}),
        (Oc.STALE, "Failed testing", {DriftKind.STALE, DriftKind.MAAS}),
        (None, "Failed deployment", {DriftKind.MAAS}),
        (None, None, set()),
    ],
)
def test_drift_kinds_hold_together(
    outcome: Outcome | None, maas_status: str | None, kinds: set[DriftKind]
) -> None:
    """A machine can drift in more than one way at once; an in-flight check has no outcome."""
    assert drift_kinds(outcome, maas_status) == kinds


def test_slowdown_needs_three_passes_and_twice_the_median() -> None:
    """The latest pass is flagged at twice the median or more, and only with 3 passes or more."""
    assert slowdown([250, *[100] * 9]) == 2.5
    assert slowdown([200, 100, 100]) == 2.0
    assert slowdown([190, 100, 100]) is None
    assert slowdown([100, 250, 250]) is None  # faster than before
    assert slowdown([300, 100]) is None
    assert slowdown([]) is None


def test_assess_keeps_the_outcome_of_the_reason() -> None:
    """The check that gives the reason gives its outcome too; an excluded agent's newest one."""
    states = replay(Oc.PASSED, Oc.OFFLINE, Oc.STALE, Oc.BUSY)
    assert [s.outcome for s in states] == [Oc.PASSED, Oc.OFFLINE, Oc.STALE, Oc.STALE]


RECOVERY = "offline: Set to offline by agent: Recovery failed during job 7"


@pytest.mark.parametrize(
    ("health", "maas_status", "needed"),
    [
        (AgentHealth(U, reason="failed: x"), None, True),
        (AgentHealth(X, reason="stale", outcome=Oc.STALE), None, True),
        (AgentHealth(X, reason="quarantined: streak", outcome=Oc.QUARANTINED), None, True),
        (AgentHealth(X, reason=RECOVERY, outcome=Oc.OFFLINE), None, True),
        (AgentHealth(X, reason="offline: maintenance", outcome=Oc.OFFLINE), None, False),
        (AgentHealth(X, reason="no_queue: shared", outcome=Oc.NO_QUEUE), None, False),
        (AgentHealth(H, reason="passed", outcome=Oc.PASSED), "Broken", True),
        (AgentHealth(H, reason="passed", outcome=Oc.PASSED), "Deployed", False),
        (UNKNOWN, "Failed testing", True),
        (UNKNOWN, None, False),
    ],
)
def test_what_needs_a_person(health: AgentHealth, maas_status: str | None, needed: bool) -> None:
    """Unhealthy, out of service by its own failure, or broken by MAAS's account."""
    assert needs_a_person(health, maas_status) is needed
