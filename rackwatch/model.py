"""Plain domain data: what MAAS and Testflinger told us, and what a check concluded.

Frozen dataclasses and string enums only, the health of an agent among them. This module imports nothing but the standard
library, so the decisions in `policy` and every adapter can share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


def utc_now() -> datetime:
    """The clock every part of rackwatch reads by default; the decisions take `now` instead."""
    return datetime.now(UTC)


class Outcome(StrEnum):
    """The result of checking one agent (or one machine without an agent) in one cycle."""

    # Not checkable: nothing was submitted.
    NO_AGENT = "no_agent"
    OFFLINE = "offline"
    BUSY = "busy"
    QUARANTINED = "quarantined"
    STALE = "stale"
    NO_QUEUE = "no_queue"
    # --dry-run: a job would have been submitted.
    READY = "ready"
    # A job was submitted and tracked to its end.
    PASSED = "passed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    # The APIs kept failing for this agent; says nothing about the machine.
    ERROR = "error"

    @property
    def is_failure(self) -> bool:
        """Whether this outcome makes a run-once exit non-zero."""
        return self in (Outcome.FAILED, Outcome.TIMED_OUT, Outcome.ERROR)

    @property
    def is_skip(self) -> bool:
        """Whether the agent was not exercised at all (no job submitted)."""
        return self in SKIPS


SKIPS = frozenset(
    {
        Outcome.NO_AGENT,
        Outcome.OFFLINE,
        Outcome.BUSY,
        Outcome.QUARANTINED,
        Outcome.STALE,
        Outcome.NO_QUEUE,
        Outcome.READY,
    }
)


@dataclass(frozen=True, slots=True)
class Machine:
    """A machine as MAAS lists it."""

    hostname: str
    system_id: str
    status: str  # MAAS status_name: "Deployed", "Ready", "Broken", ...
    power_state: str  # "on", "off", "unknown", "error"
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Agent:
    """A Testflinger agent record."""

    name: str
    state: str  # "waiting", a phase name, "offline", "maintenance", ...
    queues: tuple[str, ...] = ()
    location: str = ""
    updated_at: datetime | None = None
    job_id: str = ""  # the job it runs now, "" when idle
    comment: str = ""
    provision_streak_type: str | None = None  # "pass" or "fail"
    provision_streak_count: int | None = None

    @property
    def lacking(self) -> tuple[str, ...]:
        """The fields of its record that the stale and quarantine rules need and that it lacks.

        Testflinger sets updated_at whenever anything is posted about an agent, so a record
        without it (or with one unreadable) was cut short, as the server's declared output
        schema would cut it: then provision_streak_* are not to be had either. A record with
        updated_at and no streak is an agent that never provisioned, which lacks nothing.
        """
        if self.updated_at is not None:
            return ()
        if self.provision_streak_type is None:
            return ("updated_at", "provision_streak_*")
        return ("updated_at",)


# The rule that a field of an agent record serves: off for every agent whose record lacks it.
DETECTION_BY_FIELD = {"updated_at": "stale", "provision_streak_*": "quarantine"}


def detection_off(agents: Iterable[Agent]) -> list[tuple[str, str]]:
    """(field, line) for each field some of the agents' records lack, the line saying which
    detection that turns off: "stale detection is off for 3 agents: Testflinger's records lack
    updated_at"."""
    listed = list(agents)
    found = []
    for field, rule in DETECTION_BY_FIELD.items():
        count = sum(field in agent.lacking for agent in listed)
        if count:
            agents_text = f"{count} agent{'s' if count != 1 else ''}"
            line = f"{rule} detection is off for {agents_text}: Testflinger's records lack {field}"
            found.append((field, line))
    return found


# Job states after which Testflinger does nothing more with a job. "cancelled" is final only
# when no agent had taken the job; a running job that is cancelled later ends "complete".
FINAL_JOB_STATES = frozenset({"complete", "completed", "cancelled"})


@dataclass(frozen=True, slots=True)
class JobResult:
    """What GET /v1/result/<job_id> says about a job."""

    job_id: str
    state: str  # job_state: "waiting", "running", a phase, "complete", "cancelled", ...
    provision_status: int | None = None
    setup_status: int | None = None
    provision_output: str | None = None  # the provision phase's standard output, as posted

    @property
    def has_ended(self) -> bool:
        return self.state in FINAL_JOB_STATES


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """A job that GET /v1/job/search lists as active: neither cancelled nor complete."""

    job_id: str
    state: str  # job_state: "waiting", "running", a phase name, ...


@dataclass(frozen=True, slots=True)
class JobDefinition:
    """What GET /v1/job/<job_id> says a job was submitted as."""

    job_id: str
    queue: str
    tags: tuple[str, ...] = ()


class Health(StrEnum):
    """An agent's health state (see `rackwatch.health` for the rules)."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EXCLUDED = "excluded"


@dataclass(frozen=True, slots=True)
class Fact:
    """One recorded check, as far as health is concerned."""

    outcome: Outcome
    detail: str
    job_id: str | None
    at: datetime
    in_incident: bool = False  # its rack cycle was a rack incident
    provision_log: str | None = None  # the end of its job's provision output, if it failed


@dataclass(frozen=True, slots=True)
class AgentHealth:
    """An agent's health, since when, and why."""

    state: Health
    since: datetime | None = None
    reason: str = ""
    job_id: str | None = None
    outcome: Outcome | None = None  # of the check that gave the reason; None while unknown


UNKNOWN = AgentHealth(Health.UNKNOWN)


@dataclass(frozen=True, slots=True)
class HealthChange:
    """An agent's health moving from one state to another in a cycle."""

    agent: str
    before: AgentHealth
    after: AgentHealth


@dataclass(frozen=True, slots=True)
class Silence:
    """An agent (`agent` set) or a whole rack (`rack` set) that is checked but not announced.

    It lasts until `until`, or until `ended_at` when it was ended before; `settled` once the
    first cycle after its end has announced what it kept quiet (see `rackwatch.silences`).
    """

    id: int
    agent: str | None
    rack: str | None
    reason: str
    by: str  # who silenced it: the user who ran `rackwatch silence`
    created_at: datetime
    until: datetime
    ended_at: datetime | None = None
    settled: bool = False

    @property
    def ends_at(self) -> datetime:
        """When it ends, or ended: `until`, or `ended_at` when it was ended before that."""
        return self.until if self.ended_at is None else min(self.until, self.ended_at)


class EventKind(StrEnum):
    """What an alert event announces."""

    UNHEALTHY = "unhealthy"
    RECOVERED = "recovered"
    INCIDENT_OPENED = "incident_opened"
    INCIDENT_CLOSED = "incident_closed"
    DRIFT = "drift"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One change to announce: an agent's health, the rack's incident, or drift.

    `kind` is plain text only for a kind this rackwatch does not know, read back from an outbox
    that a later rackwatch left behind. `before` and `after` are an agent's health states;
    `error_line` is the line of the job's provision log that says why it failed.
    """

    kind: EventKind | str
    rack: str
    reason: str = ""
    agent: str | None = None
    before: str | None = None
    after: str | None = None
    job_id: str | None = None
    error_line: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as the outbox stores it, the webhook receives it and the log shows it.

        `error_line` is there only when the event has one, so that an event without one reads
        as it did before events had it.
        """
        data: dict[str, Any] = {
            "kind": str(self.kind),
            "rack": self.rack,
            "agent": self.agent,
            "from": self.before,
            "to": self.after,
            "reason": self.reason,
            "job_id": self.job_id,
        }
        if self.error_line is not None:
            data["error_line"] = self.error_line
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertEvent:
        """The event that `to_json` gave `data`."""
        return cls(
            kind=_event_kind(str(data.get("kind"))),
            rack=str(data.get("rack") or ""),
            reason=str(data.get("reason") or ""),
            agent=_text_or_none(data.get("agent")),
            before=_text_or_none(data.get("from")),
            after=_text_or_none(data.get("to")),
            job_id=_text_or_none(data.get("job_id")),
            error_line=_text_or_none(data.get("error_line")),
        )


@dataclass(frozen=True, slots=True)
class Alert:
    """One rack cycle's events, announced in one message."""

    rack: str
    cycle_id: int
    events: tuple[AlertEvent, ...]

    def to_json(self) -> dict[str, Any]:
        """The alert's body in the outbox."""
        return {
            "rack": self.rack,
            "cycle_id": self.cycle_id,
            "events": [event.to_json() for event in self.events],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alert:
        """The alert that `to_json` gave `data`."""
        return cls(
            rack=str(data.get("rack") or ""),
            cycle_id=int(data.get("cycle_id") or 0),
            events=tuple(AlertEvent.from_json(event) for event in data.get("events") or ()),
        )


def _event_kind(text: str) -> EventKind | str:
    try:
        return EventKind(text)
    except ValueError:
        return text


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
