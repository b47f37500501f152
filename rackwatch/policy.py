"""The decisions of a check, as pure functions over plain data.

No I/O, no clock, no logging: `now` is always a parameter. The check cycle in `check` feeds
these functions what MAAS and Testflinger said and acts on what they return.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from rackwatch.model import Agent, JobResult, Machine, Outcome

# What a non-zero provision_status means (Testflinger agent exit codes).
PROVISION_EXIT_CODES: Mapping[int, str] = {
    1: "device connector error",
    46: "device recovery failed; the agent set itself offline",
    100: "agent exception",
    247: "killed, by the global timeout or similar",
}

OFFLINE_STATES = frozenset({"offline", "maintenance"})


@dataclass(frozen=True, slots=True)
class Limits:
    """The parts of the configuration that decisions depend on."""

    max_fail_streak: int
    stale_after: timedelta
    job_timeout: timedelta


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one machine of a rack in this cycle.

    `outcome` is None when a job should be submitted to `queue`.
    """

    machine: Machine
    agent: Agent | None
    outcome: Outcome | None
    queue: str | None = None
    detail: str = ""

    @property
    def name(self) -> str:
        """The row's key: the agent's name, or the hostname of a machine without an agent."""
        return self.agent.name if self.agent is not None else self.machine.hostname


@dataclass(frozen=True, slots=True)
class AgentIndex:
    """Every agent of the server, indexed once per cycle for all its racks.

    `by_name` holds the agents of the location (all when it is "") by casefolded name;
    `servers` how many agents listen on each queue, across the whole server.
    """

    by_name: Mapping[str, Sequence[Agent]]
    servers: Mapping[str, int]


def index_agents(agents: Iterable[Agent], location: str = "") -> AgentIndex:
    """The index of the agents; with `location`, by_name keeps only agents whose location
    contains that text (case-insensitive)."""
    agents = list(agents)
    wanted = location.casefold()
    by_name: dict[str, list[Agent]] = {}
    for agent in agents:
        if wanted in agent.location.casefold():
            by_name.setdefault(agent.name.casefold(), []).append(agent)
    return AgentIndex(by_name, count_queue_servers(agents))


def match_agents(
    machines: Sequence[Machine], agents: Iterable[Agent] | AgentIndex, location: str = ""
) -> list[tuple[Machine, Agent | None]]:
    """Pair each machine with the agent of the same name (case-insensitive).

    With `location`, only agents whose location contains that text (case-insensitive) count
    (an index is already of its location).
    """
    index = agents if isinstance(agents, AgentIndex) else index_agents(agents, location)
    pairs: list[tuple[Machine, Agent | None]] = []
    for machine in machines:
        candidates = index.by_name.get(machine.hostname.casefold(), ())
        exact = [a for a in candidates if a.name == machine.hostname]
        best = exact or candidates
        pairs.append((machine, best[0] if best else None))
    return pairs


def count_queue_servers(agents: Iterable[Agent]) -> Counter[str]:
    """How many agents listen on each queue, across the whole server."""
    return Counter(queue for agent in agents for queue in set(agent.queues))


def own_queue(agent: Agent, servers: Mapping[str, int]) -> str | None:
    """A queue only this agent serves, preferring the one named after the agent."""
    own = [q for q in agent.queues if servers.get(q, 0) == 1]
    if not own:
        return None
    for queue in own:
        if queue == agent.name:
            return queue
    for queue in own:
        if queue.casefold() == agent.name.casefold():
            return queue
    return sorted(own)[0]


def decide(
    machine: Machine,
    agent: Agent | None,
    *,
    servers: Mapping[str, int],
    now: datetime,
    limits: Limits,
) -> Decision:
    """Whether to exercise this machine's agent, and if not, why not."""
    if agent is None:
        return Decision(machine, None, Outcome.NO_AGENT, detail="no Testflinger agent of that name")
    if agent.state in OFFLINE_STATES:
        detail = f"{agent.state}: {agent.comment}" if agent.comment else agent.state
        return Decision(machine, agent, Outcome.OFFLINE, detail=detail)
    if agent.state != "waiting":
        job = f", job {agent.job_id}" if agent.job_id else ""
        return Decision(machine, agent, Outcome.BUSY, detail=f"state {agent.state}{job}")
    if (
        agent.provision_streak_type == "fail"
        and agent.provision_streak_count is not None
        and agent.provision_streak_count > limits.max_fail_streak
    ):
        return Decision(
            machine,
            agent,
            Outcome.QUARANTINED,
            detail=f"{agent.provision_streak_count} failed provisionings in a row "
            f"(more than {limits.max_fail_streak})",
        )
    if agent.updated_at is not None and now - agent.updated_at > limits.stale_after:
        return Decision(
            machine,
            agent,
            Outcome.STALE,
            detail=f"waiting, but last heard from {format_age(now - agent.updated_at)} ago",
        )
    queue = own_queue(agent, servers)
    if queue is None:
        shared = ", ".join(agent.queues) or "none"
        return Decision(
            machine,
            agent,
            Outcome.NO_QUEUE,
            detail=f"no queue of its own (queues: {shared})",
        )
    return Decision(machine, agent, None, queue=queue)


@dataclass(frozen=True, slots=True)
class HeldJob:
    """A rackwatch job that Testflinger still holds: active on its queue, or run by an agent.

    `ours` when this state file recorded it, with the time it was submitted; otherwise it came
    from another state file (a lost one, or another rackwatch's), named by `origin`.
    """

    job_id: str
    queue: str | None
    state: str
    ours: bool
    submitted_at: datetime | None = None
    origin: str = ""


@dataclass(frozen=True, slots=True)
class HeldJobs:
    """The rackwatch jobs Testflinger holds, by job id and by queue, as a cycle starts."""

    by_id: Mapping[str, HeldJob]
    by_queue: Mapping[str, HeldJob]

    @classmethod
    def of(cls, jobs: Iterable[HeldJob]) -> HeldJobs:
        jobs = list(jobs)
        return cls(
            by_id={job.job_id: job for job in jobs},
            by_queue={job.queue: job for job in jobs if job.queue is not None},
        )


NO_HELD_JOBS = HeldJobs(by_id={}, by_queue={})


def plan_rack(
    machines: Sequence[Machine],
    agents: AgentIndex,
    *,
    now: datetime,
    limits: Limits,
    held: HeldJobs = NO_HELD_JOBS,
) -> list[Decision]:
    """A decision for every machine of a rack, given the index of every agent of the server.

    No job goes to a queue that already holds a rackwatch job (`held`), whatever made it.
    """
    return [
        hold(
            decide(machine, agent, servers=agents.servers, now=now, limits=limits),
            held,
            now,
            limits,
        )
        for machine, agent in match_agents(machines, agents)
    ]


def hold(decision: Decision, held: HeldJobs, now: datetime, limits: Limits) -> Decision:
    """The decision for an agent whose own queue or whose work is a rackwatch job already.

    An agent still running a job of ours that has had its time is not busy with someone
    else's work: its check times out again, and no job is added. Any other rackwatch job on
    its queue, ours or not, means no job is submitted: it is reported, never doubled.
    """
    agent = decision.agent
    if agent is None:
        return decision
    if decision.outcome is Outcome.BUSY and agent.job_id in held.by_id:
        job, running = held.by_id[agent.job_id], True
    elif (
        decision.outcome is None and decision.queue is not None and decision.queue in held.by_queue
    ):
        job, running = held.by_queue[decision.queue], False
    else:
        return decision
    if not job.ours:
        origin = f" of state file {job.origin}" if job.origin else " of another state file"
        where = "running" if running else f"queue {decision.queue} holds"
        detail = f"{where} rackwatch job {job.job_id}{origin} ({job.state})"
        return replace(decision, outcome=Outcome.BUSY, queue=None, detail=detail)
    age = now - job.submitted_at if job.submitted_at is not None else None
    since = f", submitted {format_age(age)} ago" if age is not None else ""
    if age is not None and age >= limits.job_timeout:
        if running:
            doing = f"still running rackwatch's job {job.job_id} ({job.state}){since}"
        else:
            doing = f"rackwatch's job {job.job_id} is still {job.state} on queue {job.queue}{since}"
        detail = f"{doing}, past its {format_age(limits.job_timeout)}; no job submitted"
        return replace(decision, outcome=Outcome.TIMED_OUT, queue=None, detail=detail)
    detail = f"still busy with rackwatch's job {job.job_id} ({job.state}){since}"
    return replace(decision, outcome=Outcome.BUSY, queue=None, detail=detail)


def late_result(result: JobResult, past_deadline: timedelta) -> str:
    """What became of a job seen to end after its check had ended (timed out or unclear)."""
    seen = f"seen ended {format_age(past_deadline)} after its timeout"
    if result.provision_status is not None:
        meaning = PROVISION_EXIT_CODES.get(result.provision_status)
        status = f"provision_status {result.provision_status}" + (
            f" ({meaning})" if meaning else ""
        )
        return f"{seen}, {status}"
    if result.state == "cancelled":
        return "cancelled before its provisioning started"
    return f"{seen}, without a provision status (provisioning never ran)"


def cancelled_text(last_state: str | None) -> str:
    """What a cancel of a job that had not ended did, by the job's state as last seen.

    A job still waiting was never taken by an agent; one in setup (or just taken, "running")
    was stopped before its provisioning, which a cancel cannot interrupt once it runs.
    """
    if last_state == "waiting":
        return "cancelled before an agent picked it up"
    if last_state in ("running", "setup"):
        return "cancelled before its provisioning started"
    return "cancelled"


def judge(result: JobResult) -> tuple[Outcome, str] | None:
    """The outcome of a job that has ended, with its detail; None while it runs.

    Testflinger writes "complete" for failed jobs too, so only provision_status tells.
    """
    if not result.has_ended:
        return None
    status = result.provision_status
    if status == 0:
        return Outcome.PASSED, ""
    if status is not None:
        meaning = PROVISION_EXIT_CODES.get(status)
        return Outcome.FAILED, f"provisioning exited {status}" + (
            f" ({meaning})" if meaning else ""
        )
    if result.setup_status:
        return Outcome.FAILED, f"provisioning never ran: setup exited {result.setup_status}"
    if result.state == "cancelled":
        return Outcome.FAILED, "provisioning never ran: the job was cancelled before it started"
    return Outcome.FAILED, f"provisioning never ran (job {result.state} without a provision status)"


def runs_on_cancelled(result: JobResult, last_state: str | None) -> bool:
    """Whether a job read "cancelled" still runs on its agent, to end "complete" later.

    A cancel never interrupts a provisioning: an agent that had taken the job (it was last seen
    past "waiting", or its setup ended) runs it to its end, then posts "complete" with the
    provision status. A job no agent took stays cancelled; `last_state` is the state the job
    was last seen in before, None when never.
    """
    if result.state != "cancelled" or result.provision_status is not None:
        return False
    return result.setup_status is not None or last_state not in (None, "waiting")


def is_overdue(submitted_at: datetime, now: datetime, limits: Limits) -> bool:
    """Whether a job has had all the time it gets."""
    return now - submitted_at >= limits.job_timeout


def rack_status(outcomes: Iterable[Outcome], error: str | None) -> str:
    """ "error" when the rack could not be listed, "failures" when any check failed, else "ok"."""
    if error:
        return "error"
    return "failures" if any(o.is_failure for o in outcomes) else "ok"


def format_age(age: timedelta) -> str:
    """A short human duration: "3d 2h", "5h 10m", "42s"."""
    seconds = int(age.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"
