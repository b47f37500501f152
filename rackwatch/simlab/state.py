"""The simulated lab's records, and what the simulated services need of a lab.

`SimMachine` and `SimRack` describe a lab's MAAS inventory; `SimAgent` and `SimJob` are Testflinger's
agents and jobs, each agent playing its `Behaviour`. `MaasInventory` is what the MAAS routes
(`maas`) read of a lab, and `Accounts` what the Testflinger routes (`testflinger`) read and change
of its logins; `lab.Lab` is both. This module imports no other module of the lab, so that the
service modules never import `lab`, which serves them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "Behaviour",
    "SimMachine",
    "SimRack",
    "SimJob",
    "SimAgent",
    "iso_time",
    "MaasInventory",
    "Accounts",
]


class Behaviour(StrEnum):
    """How a machine's agent behaves."""

    PASS = "pass"  # noqa: S105 - waiting; takes the job; provisioning passes
    FAIL = "fail"  # provisioning fails with exit code 1
    RECOVERY_FAIL = "recovery_fail"  # provisioning fails with 46; the agent then goes offline
    NEVER_PICKS_UP = "never_picks_up"  # waiting and recently updated, but never takes a job
    SLOW = "slow"  # provisioning takes Lab.slow_factor times the provision time
    OFFLINE = "offline"  # state offline, set by an admin
    MAINTENANCE = "maintenance"  # state maintenance
    BUSY = "busy"  # running someone else's job, which never ends
    STALE = "stale"  # waiting, but updated_at is 3 days old; never takes jobs
    FAIL_STREAK = "fail_streak"  # waiting with a fail streak of 25; would pass if given a job
    SHARED_QUEUE = "shared_queue"  # its only queue is shared with another agent


_NEVER_TAKES_JOBS = frozenset({Behaviour.NEVER_PICKS_UP, Behaviour.STALE})


@dataclass
class SimMachine:
    """A machine in MAAS, and its Testflinger agent unless `behaviour` is None."""

    hostname: str
    behaviour: Behaviour | None = Behaviour.PASS
    maas_status: str = "Deployed"  # MAAS status_name
    agent_name: str | None = None  # defaults to the hostname
    tags: tuple[str, ...] = ()  # MAAS tags besides its rack's, e.g. another rack's


@dataclass
class SimRack:
    """A rack: a MAAS tag on its machines, and the location text of their agents."""

    name: str
    machines: list[SimMachine]
    location: str = ""  # defaults to the rack name in capitals


@dataclass(eq=False)
class SimJob:
    """One stored job. Two jobs may share a job_id, as on the real server."""

    job_id: str
    queue: str
    body: dict[str, Any]
    seq: int
    priority: int = 0
    exclude: frozenset[str] = frozenset()
    state: str = "waiting"
    statuses: dict[str, int] = field(default_factory=dict)
    device_info: dict[str, str] = field(default_factory=dict)
    provision_output: str | None = None
    agent: SimAgent | None = None  # the agent running it
    created_at: float = field(default_factory=time.time)  # Unix time of submission

    @property
    def tags(self) -> list[str]:
        return list(self.body.get("tags") or ())

    def result(self) -> dict[str, Any]:
        """The body of GET /v1/result/<job_id>: only what is known so far."""
        result: dict[str, Any] = {"job_state": self.state}
        for phase, code in self.statuses.items():
            result[f"{phase}_status"] = code
        if self.provision_output is not None:
            result["provision_output"] = self.provision_output
        if self.device_info:
            result["device_info"] = dict(self.device_info)
        return result


@dataclass(eq=False)
class SimAgent:
    """A Testflinger agent: its record and where it is in its current job."""

    name: str
    hostname: str
    behaviour: Behaviour
    queues: list[str]
    location: str
    device_ip: str
    provision_type: str = "maas2"
    identifier: str | None = None
    state: str = "waiting"
    comment: str = ""
    job_id: str | None = None  # absent from the record until the agent first posts one
    updated_at: float = 0.0  # Unix time
    streak_type: str | None = None
    streak_count: int | None = None
    job: SimJob | None = None
    foreign_job: SimJob | None = None  # someone else's job, for BUSY
    phase: str | None = None
    plan: list[tuple[str, float, int]] = field(default_factory=list)  # (phase, seconds, exit code)
    timer: asyncio.TimerHandle | None = None
    deferred_state: tuple[str, str] | None = None  # (state, comment) to take when the job ends

    @property
    def takes_jobs(self) -> bool:
        return (
            self.job is None and self.state == "waiting" and self.behaviour not in _NEVER_TAKES_JOBS
        )

    def record(self) -> dict[str, Any]:
        """The agent as GET /v1/agents/data shows it."""
        record: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "queues": list(self.queues),
            "location": self.location,
            "provision_type": self.provision_type,
            "comment": self.comment,
            "updated_at": iso_time(self.updated_at),
            "restricted_to": {},
        }
        if self.identifier is not None:
            record["identifier"] = self.identifier
        if self.job_id is not None:
            record["job_id"] = self.job_id
        if self.streak_type is not None:
            record["provision_streak_type"] = self.streak_type
            record["provision_streak_count"] = self.streak_count
        return record


def iso_time(unix: float) -> str:
    """A timestamp as Testflinger writes what it reads back from its database."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class MaasInventory(Protocol):
    """A lab as MAAS serves it: its machines in creation order, and by hostname their details."""

    maas_api_key: str  # consumer_key:token_key:token_secret
    maas_tags: set[str]
    machines: list[SimMachine]
    machine_rack: dict[str, str]  # the rack, and so the first tag, of each machine
    system_ids: dict[str, str]
    ip_addresses: dict[str, str]


class Accounts(Protocol):
    """A lab's Testflinger logins: the one it accepts, and the tokens it has issued."""

    testflinger_login: tuple[str, str] | None  # (client_id, secret); None serves anyone
    testflinger_role: str  # the role every token carries
    token_lifetime: float  # seconds
    tokens: dict[str, float]  # access token -> time.monotonic() at issue
    refresh_tokens: set[str]
    logins: int  # successful logins
