"""After each rack cycle: the rack's incident, its agents' health, and the alert to send.

The decisions are `health`'s pure functions; this module reads what they need from the store
and writes what they decided in one transaction, so that a transition is recorded, and its
alert queued, exactly once, whatever crashes and restarts come in between.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from rackwatch import health
from rackwatch.model import UNKNOWN, Alert, AlertEvent, EventKind, Health, HealthChange
from rackwatch.store import CycleRecord, Store

# Cycles that listed the rack and ran to their end.
COMPLETE = ("ok", "failures")
# How many of an agent's latest checks are read to judge its health.
FACTS_READ = 20


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a cycle changed: health transitions and the rack's incident, as alert events."""

    changes: list[HealthChange]
    events: list[AlertEvent]
    incident: str | None  # the reason, while the cycle is part of an incident


def settle(
    store: Store,
    cycle_id: int,
    *,
    failures_to_unhealthy: int,
    incident_ratio: float,
    at: datetime,
) -> Verdict:
    """Record what the finished cycle means for the rack and its agents."""
    cycle = store.cycle(cycle_id)
    checks = store.checks_of_cycle(cycle_id)
    previous = store.last_cycle(cycle.rack, before=cycle)
    reason = health.incident_reason(
        [c.outcome for c in checks if c.outcome is not None],
        ratio=incident_ratio,
        listing_error=cycle.error if cycle.status == "error" else None,
        previous_listing_error=(
            previous.error if previous is not None and previous.status == "error" else None
        ),
    )
    open_incident = store.open_incident(cycle.rack)
    opened = reason if reason is not None and open_incident is None else None
    # A cycle that could not list the rack says nothing about whether the incident is over.
    closed = open_incident is not None and reason is None and cycle.status != "error"
    if reason is not None and open_incident is not None:
        store.mark_cycle_incident(cycle.id, open_incident.id)

    events: list[AlertEvent] = []
    if opened is not None:
        events.append(AlertEvent(EventKind.INCIDENT_OPENED, cycle.rack, reason=opened))
    if closed:
        assert open_incident is not None
        over = f"over: {open_incident.reason}"
        events.append(AlertEvent(EventKind.INCIDENT_CLOSED, cycle.rack, reason=over))

    recorded = store.health(cycle.rack)
    changes: list[HealthChange] = []
    for agent in sorted({c.agent for c in checks if c.outcome is not None}):
        before = recorded.get(agent, (cycle.rack, UNKNOWN))[1]
        facts = [
            replace(fact, in_incident=fact.in_incident or (cid == cycle.id and reason is not None))
            for cid, fact in store.facts(agent, FACTS_READ)
        ]
        after = health.assess(before, facts, failures_to_unhealthy=failures_to_unhealthy)
        if after == before:
            continue
        changes.append(HealthChange(agent, before, after))
        if health.is_alerting(before.state, after.state):
            healthy = after.state is Health.HEALTHY
            events.append(
                AlertEvent(
                    EventKind.RECOVERED if healthy else EventKind.UNHEALTHY,
                    cycle.rack,
                    agent=agent,
                    before=str(before.state),
                    after=str(after.state),
                    reason=after.reason,
                    job_id=after.job_id,
                )
            )

    events += _new_drift(store, cycle)
    alert = Alert(cycle.rack, cycle.id, tuple(events)).to_json() if events else None
    store.record_health(
        cycle,
        changes=changes,
        incident_opened=opened,
        incident_closed=closed,
        alert=alert,
        at=at,
    )
    return Verdict(changes, events, reason)


def _new_drift(store: Store, cycle: CycleRecord) -> list[AlertEvent]:
    """Drift that this cycle found and the rack's previous complete cycle did not."""
    previous = store.last_cycle(cycle.rack, before=cycle, statuses=COMPLETE)
    before = store.inventory(previous.id) if previous is not None else {}
    events = []
    for agent, (outcome, maas_status) in sorted(store.inventory(cycle.id).items()):
        now = health.drift(outcome, maas_status)
        if now is not None and (agent not in before or health.drift(*before[agent]) != now):
            events.append(AlertEvent(EventKind.DRIFT, cycle.rack, agent=agent, reason=now))
    return events
