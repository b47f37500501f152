"""`rackwatch status`'s read-model: where each rack and each of its agents stands.

`build_status` reads the state file and the schedule into `RackStatus` values, `health`'s
rules say what drifts and what needs a person, and `silences`' which silence covers an agent:
a silenced agent, and a silenced rack's incident, need no person while the silence lasts.
Nothing here prints (`render.status` does). May import: `config`, `errors`, `health`, `model`,
`schedule`, `silences` and `store`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from rackwatch import health, silences
from rackwatch.config import ScheduleSettings
from rackwatch.errors import UsageError
from rackwatch.health import DriftKind
from rackwatch.model import UNKNOWN, AgentHealth, Health, Silence
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
    silence: Silence | None = None  # the rack's own silence in force
    silenced: Mapping[str, Silence] = field(default_factory=dict)  # by agent: what covers it
    # By unhealthy agent: the provision log of the check that made it unhealthy, if it has one.
    health_logs: Mapping[str, str] = field(default_factory=dict)

    def health_of(self, agent: str) -> AgentHealth:
        return self.health.get(agent, UNKNOWN)

    @property
    def reading(self) -> str | None:
        """The last cycle's status as shown: "attention" for an "ok" one while an agent of the
        rack is stale or quarantined by its latest check (`health.rack_reading`)."""
        if self.last_cycle is None:
            return None
        latest = [state.last.outcome for state in self.agents if state.last and state.last.outcome]
        return health.rack_reading(self.last_cycle.status, latest)

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
        if state.agent in self.silenced:
            return False
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
    in_force = store.silences_in_force(now) if store is not None else []
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
            status = _recorded(store, status, recorded_health, in_force, now)
        statuses.append(status)
    return statuses


def _recorded(
    store: Store,
    status: RackStatus,
    known: Mapping[str, AgentHealth],
    in_force: Sequence[Silence],
    now: datetime,
) -> RackStatus:
    """The rack with what the state file records of its agents, its incident and silences."""
    agents = store.agent_states(status.rack)
    rack_health = {state.agent: known[state.agent] for state in agents if state.agent in known}
    made_unhealthy = {
        agent: said.job_id
        for agent, said in rack_health.items()
        if said.state is Health.UNHEALTHY and said.job_id is not None
    }
    by_job = store.checks_of_jobs(set(made_unhealthy.values()))
    covered = {
        state.agent: silences.covering(in_force, agent=state.agent, rack=status.rack, at=now)
        for state in agents
    }
    return replace(
        status,
        agents=agents,
        incident=store.open_incident(status.rack),
        health=rack_health,
        trends=store.trends([state.agent for state in agents]),
        health_logs={
            agent: log
            for agent, job_id in made_unhealthy.items()
            if job_id in by_job and (log := by_job[job_id].provision_log)
        },
        silence=silences.of_rack(in_force, status.rack, now),
        silenced={agent: silence for agent, silence in covered.items() if silence is not None},
    )


def needing_a_person(racks: Sequence[RackStatus]) -> list[RackStatus]:
    """`status --unhealthy`: the racks with an open incident or an agent that needs a person,
    each with those agents only. A silenced rack's incident is left out, as are silenced agents."""
    kept = []
    for status in racks:
        agents = [state for state in status.agents if status.needs_a_person(state)]
        incident = status.incident if status.silence is None else None
        if agents or incident is not None:
            kept.append(replace(status, agents=agents, incident=incident))
    return kept
