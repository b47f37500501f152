"""After each rack cycle: the rack's incident, its agents' health, and the alert to send.

The decisions are `health`'s and `silences`' pure functions; this module reads what they need
from the store and writes what they decided in one transaction, so that a transition is
recorded, and its alert queued, exactly once, whatever crashes and restarts come in between.
The alert leaves out what a silence covers; a silence that has ended is settled in the same
transaction, with the alert that announces what it kept quiet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from rackwatch import health, silences
from rackwatch.model import (
    UNKNOWN,
    AgentHealth,
    Alert,
    AlertEvent,
    EventKind,
    Fact,
    Health,
    HealthChange,
    Silence,
)
from rackwatch.provision_log import error_line
from rackwatch.store import CycleRecord, Store

# Cycles that listed the rack and ran to their end.
COMPLETE = ("ok", "failures")
# How many of an agent's latest checks are read to judge its health.
FACTS_READ = 20


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a cycle changed: health transitions and the rack's incident, as alert events."""

    changes: list[HealthChange]
    events: list[AlertEvent]  # every change, silenced or not
    incident: str | None  # the reason, while the cycle is part of an incident
    announced: list[AlertEvent]  # those of `events` that no silence leaves out of the alert


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
    if cycle.partial:
        # A cycle of a few named agents says nothing about the rack: an open incident goes on.
        reason = open_incident.reason if open_incident is not None else None
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
                    error_line=None if healthy else _error_line(facts, after.job_id),
                )
            )

    events += _new_drift(store, cycle)
    # An incident open before this cycle and still open: one its rack's silence may have hidden.
    still_open = open_incident.reason if open_incident is not None and not closed else None
    unsettled = store.silences()
    ended = silences.due(
        unsettled, rack=cycle.rack, rack_of=_racks_of(store, unsettled, recorded, at), at=at
    )
    if ended:
        healths = {agent: known for agent, (_, known) in recorded.items()}
        healths.update((change.agent, change.after) for change in changes)
        events += _after_silences(
            store, cycle.rack, ended, unsettled, healths, still_open, events, at
        )
    announced = [event for event in events if silences.is_announced(event, unsettled, at)]
    alert = Alert(cycle.rack, cycle.id, tuple(announced)).to_json() if announced else None
    store.record_health(
        cycle,
        changes=changes,
        incident_opened=opened,
        incident_closed=closed,
        alert=alert,
        at=at,
        settled_silences=[silence.id for silence in ended],
    )
    return Verdict(changes, events, reason, announced)


def _racks_of(
    store: Store,
    unsettled: Sequence[Silence],
    recorded: Mapping[str, tuple[str, AgentHealth]],
    at: datetime,
) -> dict[str, str]:
    """The rack each agent's health is recorded under, as far as the ended silences need it."""
    ending = {s.agent for s in unsettled if s.agent is not None and s.ends_at <= at}
    known = recorded if ending <= recorded.keys() else store.health()
    return {agent: rack for agent, (rack, _) in known.items()}


def _after_silences(
    store: Store,
    rack: str,
    ended: Sequence[Silence],
    unsettled: Sequence[Silence],
    health: Mapping[str, AgentHealth],
    still_open: str | None,
    events: Sequence[AlertEvent],
    at: datetime,
) -> list[AlertEvent]:
    """What the cycle announces for the silences it settles, each agent with its error line."""
    announced = {e.agent for e in events if e.kind is EventKind.UNHEALTHY and e.agent is not None}
    found = silences.after_silences(
        ended,
        unsettled,
        rack=rack,
        health=health,
        incident=still_open,
        announced=announced,
        at=at,
    )
    return [
        (
            replace(
                event,
                error_line=_error_line(
                    [fact for _, fact in store.facts(event.agent, FACTS_READ)], event.job_id
                ),
            )
            if event.agent is not None
            else event
        )
        for event in found
    ]


def _error_line(facts: list[Fact], job_id: str | None) -> str | None:
    """The line of the provision log of job `job_id`'s check, among `facts`, that says why."""
    fact = next((f for f in facts if job_id is not None and f.job_id == job_id), None)
    return error_line(fact.provision_log) if fact is not None else None


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
