"""`rackwatch status`'s read-model: where each rack and each of its agents stands.

`build_status` reads the state file and the schedule into `RackStatus` values, and `health`'s
rules say what drifts and what needs a person; nothing here prints (`render.status` does).
May import: `config`, `errors`, `health`, `model`, `schedule` and `store`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from rackwatch import health
from rackwatch.config import ScheduleSettings
from rackwatch.errors import UsageError
from rackwatch.health import DriftKind
from rackwatch.model import UNKNOWN, AgentHealth
from rackwatch.schedule import next_check
from rackwatch.store import AgentState, AgentTrend, CycleRecord, IncidentRecord, Store


@dataclass(frozen=True, slots=True)
class Drift:
    """Where a rack differs from a lab whose every machine is checked and well, by the records."""

    no_agent: list[str]  # machines of the rack with no Testflinger agent
    stale: list[tuple[str, datetime | None]]  # agents gone silent, and since when checks say so
    maas: list[tuple[AgentState, str]]  # agents whose machine MAAS marks broken or failed


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

    def maas_status_of(self, agent: str) -> str | None:
        trend = self.trends.get(agent)
        return trend.maas_status if trend is not None else None

    @property
    def drift(self) -> Drift:
        """The rack's drift, from each agent's latest check: its outcome and its MAAS status."""
        found = Drift([], [], [])
        for state in self.agents:
            outcome = state.last.outcome if state.last and not state.in_flight else None
            maas_status = self.maas_status_of(state.agent)
            kinds = health.drift_kinds(outcome, maas_status)
            if DriftKind.NO_AGENT in kinds:
                found.no_agent.append(state.machine or state.agent)
            if DriftKind.STALE in kinds:
                trend = self.trends.get(state.agent)
                found.stale.append((state.agent, trend.stale_since if trend else None))
            if DriftKind.MAAS in kinds and maas_status is not None:
                found.maas.append((state, maas_status))
        return found

    def needs_a_person(self, state: AgentState) -> bool:
        return health.needs_a_person(self.health_of(state.agent), self.maas_status_of(state.agent))


def build_status(
    store: Store | None,
    racks: Sequence[str],
    schedule: ScheduleSettings,
    now: datetime,
    *,
    named: Sequence[str] = (),
) -> list[RackStatus]:
    """Each rack as the state file records it (`store` None: no file yet, nothing recorded).

    `racks` are the configured racks, which alone are scheduled. The racks given are those
    `named`, else every configured rack and then every other rack the state file records.

    Raises:
        UsageError: a named rack is neither configured nor recorded.
    """
    recorded = store.racks() if store is not None else []
    unknown = [rack for rack in named if rack not in racks and rack not in recorded]
    if unknown:
        listed = ", ".join(repr(rack) for rack in unknown)
        raise UsageError(f"unknown rack {listed}: not in the configuration and never checked")
    names = list(named) or [*racks, *(rack for rack in recorded if rack not in racks)]
    recorded_health = (
        {agent: known for agent, (_, known) in store.health().items()} if store else {}
    )
    interval, jitter = schedule.interval, schedule.jitter
    statuses = []
    for rack in names:
        last_cycle = store.last_cycle(rack) if store is not None else None
        started = last_cycle.started_at if last_cycle else None
        due = None
        if rack in racks:
            due = next_check(rack, started, now=now, interval=interval, jitter=jitter)
        status = RackStatus(rack, last_cycle, due, [])
        if store is not None:
            status = _recorded(store, status, recorded_health)
        statuses.append(status)
    return statuses


def _recorded(store: Store, status: RackStatus, known: Mapping[str, AgentHealth]) -> RackStatus:
    """The rack with what the state file records of its agents and its incident."""
    agents = store.agent_states(status.rack)
    return replace(
        status,
        agents=agents,
        incident=store.open_incident(status.rack),
        health={state.agent: known[state.agent] for state in agents if state.agent in known},
        trends=store.trends([state.agent for state in agents]),
    )


def needing_a_person(racks: Sequence[RackStatus]) -> list[RackStatus]:
    """`status --unhealthy`: the racks with an open incident or an agent that needs a person,
    each with those agents only."""
    kept = []
    for status in racks:
        agents = [state for state in status.agents if status.needs_a_person(state)]
        if agents or status.incident is not None:
            kept.append(replace(status, agents=agents))
    return kept
