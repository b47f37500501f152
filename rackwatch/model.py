"""Plain domain data: what MAAS and Testflinger told us, and what a check concluded.

Frozen dataclasses and string enums only, the health of an agent among them. This module imports nothing but the standard
library, so the decisions in `policy` and every adapter can share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum


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

    @property
    def has_ended(self) -> bool:
        return self.state in FINAL_JOB_STATES


@dataclass(frozen=True, slots=True)
class ActiveJob:
    """A job that GET /v1/job/search lists as active: neither cancelled nor complete."""

    job_id: str
    state: str  # job_state: "waiting", "running", a phase name, ...
    created_at: datetime | None = None


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


@dataclass(frozen=True, slots=True)
class AgentHealth:
    """An agent's health, since when, and why."""

    state: Health
    since: datetime | None = None
    reason: str = ""
    job_id: str | None = None


UNKNOWN = AgentHealth(Health.UNKNOWN)


@dataclass(frozen=True, slots=True)
class HealthChange:
    """An agent's health moving from one state to another in a cycle."""

    agent: str
    before: AgentHealth
    after: AgentHealth
