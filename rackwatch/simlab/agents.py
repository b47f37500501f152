"""The agents' simulated work, and the jobs as the Testflinger server stores them.

`AgentFleet` stores jobs (`SimJob`) as the Testflinger server does and plays every agent
(`SimAgent`) with timers on the event loop (loop.call_later), never with a task per agent, so
thousands of idle agents cost nothing. An agent that takes a job walks it through setup, provision
(then test and reserve when the job asks for them) and cleanup, as the real agent does, and ends it
"complete" whatever the outcome; its `Behaviour` decides the outcome and whether it takes jobs at
all.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from rackwatch.simlab.state import Behaviour, SimAgent, SimJob

STALE_AGE_S = 3 * 24 * 3600.0
FINAL_JOB_STATES = frozenset({"complete", "completed", "cancelled"})
_EXIT_CODES = {Behaviour.FAIL: 1, Behaviour.RECOVERY_FAIL: 46}
_RESTING_STATES = {
    Behaviour.OFFLINE: ("offline", "Set to offline by admin. Reason: PSU fault reported"),
    Behaviour.MAINTENANCE: ("maintenance", "Set to offline by admin for lab-related task."),
}


class AgentFleet:
    """The agents, their queues and the jobs, with the timings of the simulated work."""

    def __init__(self, *, provision_seconds: float, pickup_seconds: float, slow_factor: float):
        self.provision_seconds = provision_seconds
        self.pickup_seconds = pickup_seconds  # also the length of setup, cleanup, test, reserve
        self.slow_factor = slow_factor
        # Lines a failing provisioning adds to its output before its error, as a device
        # connector that logs what it sent does (a test puts credentials there).
        self.failure_echo = ""
        self.agents: dict[str, SimAgent] = {}
        self.submissions: list[dict[str, Any]] = []  # every accepted job body, in order
        self.cancelled: list[str] = []  # job ids cancelled through the API
        self._agents_by_hostname: dict[str, SimAgent] = {}
        self._queue_agents: dict[str, list[SimAgent]] = {}
        self._waiting: dict[str, list[SimJob]] = {}
        self._jobs: dict[str, list[SimJob]] = {}

    def add_agent(
        self,
        name: str,
        behaviour: Behaviour = Behaviour.PASS,
        queues: Sequence[str] = (),
        location: str = "",
        *,
        hostname: str | None = None,
        device_ip: str | None = None,
    ) -> SimAgent:
        """Add an agent, idle in the state its behaviour calls for."""
        if name in self.agents:
            raise ValueError(f"agent name {name!r} appears twice")
        number = len(self.agents)
        agent = SimAgent(
            name=name,
            hostname=hostname or name,
            behaviour=behaviour,
            queues=[],
            location=location,
            device_ip=device_ip or f"10.1.{number // 250}.{number % 250 + 1}",
        )
        if behaviour is Behaviour.FAIL_STREAK:
            agent.streak_type, agent.streak_count = "fail", 25
        self.agents[name] = agent
        self._agents_by_hostname[agent.hostname] = agent
        self._rest(agent)
        self.set_queues(name, queues)
        return agent

    def stop(self) -> None:
        """Stop every agent's timer: nothing happens in the fleet any more."""
        for agent in self.agents.values():
            if agent.timer is not None:
                agent.timer.cancel()
                agent.timer = None

    def agent(self, name: str) -> SimAgent:
        """The agent of that name, or of the machine of that hostname."""
        agent = self.agents.get(name) or self._agents_by_hostname.get(name)
        if agent is None:
            raise KeyError(f"no agent {name!r}")
        return agent

    def set_behaviour(self, name: str, behaviour: Behaviour) -> None:
        """Change how an agent behaves; a running job finishes first (with the new outcome)."""
        agent = self.agent(name)
        agent.behaviour = behaviour
        if agent.job is None:
            self._rest(agent)
            self._look_for_work(agent)

    def set_agent_state(self, name: str, state: str, comment: str = "") -> None:
        """Set an agent's state as an admin would; during a job it applies again at the end."""
        agent = self.agent(name)
        agent.state, agent.comment = state, comment
        self.touch(agent)
        if agent.job is not None:
            agent.deferred_state = (state, comment)
        else:
            self._look_for_work(agent)

    def set_queues(self, name: str, queues: Sequence[str]) -> None:
        agent = self.agent(name)
        for queue in agent.queues:
            self._queue_agents[queue].remove(agent)
        agent.queues = list(queues)
        for queue in agent.queues:
            self._queue_agents.setdefault(queue, []).append(agent)
        self._look_for_work(agent)

    def submissions_for(self, queue: str) -> list[dict[str, Any]]:
        return [body for body in self.submissions if body.get("job_queue") == queue]

    def job(self, job_id: str) -> SimJob | None:
        """The first job stored under that id (what the real server's lookups find)."""
        jobs = self._jobs.get(job_id)
        return jobs[0] if jobs else None

    def jobs(self, job_id: str) -> list[SimJob]:
        """Every job stored under that id."""
        return list(self._jobs.get(job_id, ()))

    def job_state(self, job_id: str) -> str | None:
        job = self.job(job_id)
        return job.state if job else None

    def search_jobs(
        self, tags: Sequence[str] = (), *, every_tag: bool = False, states: Collection[str] = ()
    ) -> list[SimJob]:
        """The jobs GET /v1/job/search finds, oldest first, each of a shared id included.

        With `tags`, a job must carry one of them (all of them with `every_tag`); a job without
        tags never matches. With `states`, its job_state must be one of them, where "active"
        stands for every state but cancelled, complete and completed.
        """
        found = []
        for jobs in self._jobs.values():
            for job in jobs:
                if tags:
                    carried = set(job.tags)
                    present = [tag in carried for tag in tags]
                    if not (all(present) if every_tag else any(present)):
                        continue
                if "active" in states:
                    if job.state in FINAL_JOB_STATES:
                        continue
                elif states and job.state not in states:
                    continue
                found.append(job)
        return sorted(found, key=lambda job: job.created_at)

    def agents_serving(self, queue: str) -> list[SimAgent]:
        return list(self._queue_agents.get(queue, ()))

    # -- the Testflinger server's side of jobs --------------------------------------------------

    def submit_job(self, body: dict[str, Any], job_id: str | None = None) -> str:
        """Store a validated job and let an idle agent of its queue come for it."""
        job = SimJob(
            job_id=job_id or str(uuid.uuid4()),
            queue=body["job_queue"],
            body=body,
            seq=len(self.submissions),
            priority=int(body.get("job_priority") or 0),
            exclude=frozenset(body.get("exclude_agents") or ()),
        )
        self.submissions.append(body)
        self._jobs.setdefault(job.job_id, []).append(job)
        self._waiting.setdefault(job.queue, []).append(job)
        for agent in self._queue_agents.get(job.queue, ()):
            if agent.takes_jobs and agent.timer is None:
                self._later(agent, self.pickup_seconds, partial(self._pick_up, agent))
                break
        return job.job_id

    def cancel_job(self, job_id: str) -> bool:
        """Cancel the first unfinished job of that id; False when there is none."""
        job = next((j for j in self._jobs.get(job_id, ()) if j.state not in FINAL_JOB_STATES), None)
        if job is None:
            return False
        job.state = "cancelled"
        self.cancelled.append(job_id)
        agent = job.agent
        # The agent notices at its next check, except during provision, which runs to its end.
        if agent is not None and agent.phase not in ("provision", "cleanup"):
            if agent.timer is not None:
                agent.timer.cancel()
            agent.plan.clear()
            self._later(agent, self.pickup_seconds, partial(self._next_phase, agent))
        return True

    # -- the agents -----------------------------------------------------------------------------

    def _later(self, agent: SimAgent, delay: float, step: Callable[[], None]) -> None:
        def fire() -> None:
            agent.timer = None
            step()

        agent.timer = asyncio.get_running_loop().call_later(delay, fire)

    def touch(self, agent: SimAgent) -> None:
        """Refresh updated_at, as every post about an agent does (STALE agents stay 3 days old)."""
        stale = agent.behaviour is Behaviour.STALE
        agent.updated_at = time.time() - (STALE_AGE_S if stale else 0.0)

    def _rest(self, agent: SimAgent) -> None:
        """Put an agent without a job of ours in the state its behaviour calls for."""
        if agent.behaviour is Behaviour.BUSY:
            if agent.foreign_job is None:
                queue = agent.queues[0] if agent.queues else agent.name
                agent.foreign_job = SimJob(
                    job_id=str(uuid.uuid4()),
                    queue=queue,
                    body={"job_queue": queue},
                    seq=-1,
                    state="test",
                    statuses={"setup": 0, "provision": 0},
                    device_info={"agent_name": agent.name, "device_ip": agent.device_ip},
                )
                self._jobs[agent.foreign_job.job_id] = [agent.foreign_job]
            agent.state, agent.comment = "test", ""
            agent.job_id = agent.foreign_job.job_id
        else:
            if agent.foreign_job is not None:
                agent.foreign_job.statuses.update(test=0, cleanup=0)
                agent.foreign_job.state = "complete"
                agent.foreign_job = None
                agent.job_id = ""
            agent.state, agent.comment = _RESTING_STATES.get(agent.behaviour, ("waiting", ""))
        self.touch(agent)

    def _look_for_work(self, agent: SimAgent) -> None:
        waiting = any(self._waiting.get(queue) for queue in agent.queues)
        if waiting and agent.takes_jobs and agent.timer is None:
            self._later(agent, self.pickup_seconds, partial(self._pick_up, agent))

    def _next_job(self, agent: SimAgent) -> SimJob | None:
        """Take the waiting job of highest priority (then oldest) from the agent's queues."""
        best: SimJob | None = None
        for queue in agent.queues:
            jobs = self._waiting.get(queue)
            if not jobs:
                continue
            jobs[:] = [job for job in jobs if job.state == "waiting"]
            for job in jobs:
                if agent.name in job.exclude:
                    continue
                if best is None or (-job.priority, job.seq) < (-best.priority, best.seq):
                    best = job
        if best is not None:
            self._waiting[best.queue].remove(best)
        return best

    def _pick_up(self, agent: SimAgent) -> None:
        if not agent.takes_jobs:
            return
        job = self._next_job(agent)
        if job is None:
            return
        job.state, job.agent = "running", agent
        job.device_info = {"agent_name": agent.name, "device_ip": agent.device_ip}
        agent.job, agent.job_id = job, job.job_id
        agent.plan = self._plan(agent, job)
        self._next_phase(agent)

    def _plan(self, agent: SimAgent, job: SimJob) -> list[tuple[str, float, int]]:
        step = self.pickup_seconds
        seconds = self.provision_seconds
        if agent.behaviour is Behaviour.SLOW:
            seconds *= self.slow_factor
        code = _EXIT_CODES.get(agent.behaviour, 0)
        if job.body.get("provision_data") is None:
            # The real agent reports a skipped provision phase as exit code 0.
            seconds, code = 0.0, 0
        plan = [("setup", step, 0), ("provision", seconds, code)]
        if "test_data" in job.body:
            plan.append(("test", step, 0))
        if "reserve_data" in job.body:
            plan.append(("reserve", step, 0))
        return plan

    def _next_phase(self, agent: SimAgent) -> None:
        job = agent.job
        if job is None:
            return
        if job.state == "cancelled" or not agent.plan:
            agent.phase = "cleanup"  # the state keeps showing the last phase entered
            self._later(agent, self.pickup_seconds, partial(self._finish, agent))
            return
        phase, seconds, code = agent.plan.pop(0)
        agent.phase = job.state = agent.state = phase
        self.touch(agent)
        self._later(agent, seconds, partial(self._end_phase, agent, phase, code))

    def _end_phase(self, agent: SimAgent, phase: str, code: int) -> None:
        job = agent.job
        if job is None:
            return
        job.statuses[phase] = code
        if phase == "provision":
            kind = "fail" if code else "pass"
            same = agent.streak_type == kind and agent.streak_count is not None
            agent.streak_count = agent.streak_count + 1 if same and agent.streak_count else 1
            agent.streak_type = kind
            job.provision_output = connector_log(
                agent.hostname, job, code, time.time(), echo=self.failure_echo
            )
            if code == 46:
                agent.deferred_state = (
                    "offline",
                    f"Set to offline by agent. Recovery failed during job '{job.job_id}' "
                    "execution.",
                )
        if code != 0 and phase != "test":
            agent.plan.clear()  # later phases are skipped; cleanup still runs
        self._next_phase(agent)

    def _finish(self, agent: SimAgent) -> None:
        job = agent.job
        if job is None:
            return
        job.statuses["cleanup"] = 0
        job.state, job.agent = "complete", None
        agent.job, agent.phase, agent.job_id = None, None, ""
        if agent.deferred_state is not None:
            (agent.state, agent.comment), agent.deferred_state = agent.deferred_state, None
            self.touch(agent)
        else:
            self._rest(agent)
        self._look_for_work(agent)


def connector_log(hostname: str, job: SimJob, code: int, ended: float, *, echo: str = "") -> str:
    """The provision output of the MAAS device connector, as an agent posts it: the phase's
    banner, then timestamped lines up to `ended` (a time.time() value). A failure ends with the
    lines of `echo`, the error that says why (exit 1: the deployment failed; 46: so did the
    device's recovery), and then the connector's cleanup line."""

    def at(seconds_before: float) -> str:
        return datetime.fromtimestamp(ended - seconds_before, UTC).strftime("%Y-%m-%d %H:%M:%S")

    distro = (job.body.get("provision_data") or {}).get("distro", "noble")
    lines = [
        "*** TESTFLINGER SYSTEM RUN [provision] ***",
        "",
        f"{at(9)} INFO: BEGIN provision",
        f"{at(9)} INFO: Provisioning device",
        f"{at(8)} INFO: Releasing node {hostname}",
        f"{at(7)} INFO: Acquiring node {hostname}",
        f"{at(6)} INFO: Starting node {hostname} with distro {distro}",
        f"{at(4)} INFO: {hostname}: Deploying",
    ]
    deploy_failed = (
        f'{at(2)} ERROR: MAAS deployment of {hostname} failed: status "Failed deployment"'
        " (curtin: grub-install failed)"
    )
    if code == 0:
        lines += [f"{at(1)} INFO: {hostname}: Deployed", f"{at(0)} INFO: END provision"]
        return "\n".join(lines) + "\n"
    lines += [f"{at(3)} DEBUG: {line}" for line in echo.splitlines()]
    if code == 46:
        lines += [
            deploy_failed,
            f"{at(2)} INFO: Recovering {hostname}: power cycle through its BMC",
            f"{at(1)} ERROR: Device recovery failed: {hostname} did not come back after a power"
            " cycle (BMC: Connection timed out)",
            f"{at(0)} INFO: Cleaning up: releasing node {hostname}",
        ]
    else:
        lines += [
            f"{at(3)} INFO: {hostname}: curtin: installing grub to /dev/sda",
            deploy_failed,
            f"{at(0)} INFO: Cleaning up: releasing node {hostname}",
        ]
    return "\n".join(lines) + "\n"
