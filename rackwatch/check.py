"""One check cycle over one or more racks: list, decide, submit, track, record.

Every agent of every rack is exercised at once; the number of requests in flight is bounded
by the clients. Every step is written to the store before the next one is taken, so a process
killed at any moment leaves a state that the next cycle resumes without submitting twice: the
job id is recorded before the job is posted.

Testflinger is the truth for "one job per queue": each cycle starts by asking it which rackwatch
jobs are active (one search by the tag every rackwatch job carries), and no job goes to a queue
that holds one, whichever state file made it. A job's own life (submitted at most once, tracked,
followed up) is in `jobs`.

A machine that MAAS lists in two racks gets one job: the first rack to decide on it checks it,
and the other reports it `busy`, naming that rack.

The decisions themselves are in `policy`; this module only carries them out.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from rackwatch import ledger, policy
from rackwatch.config import Settings
from rackwatch.errors import StoreError, UpstreamError
from rackwatch.jobs import JOB_TAG, Job, Jobs, Tally, Testflinger, gather_or_cancel
from rackwatch.model import (
    Agent,
    Machine,
    Outcome,
    utc_now,
)
from rackwatch.store import CheckRecord, CycleRecord, Store

log = structlog.get_logger("rackwatch.check")


class Maas(Protocol):
    async def machines(self, rack: str) -> list[Machine]: ...


@dataclass(frozen=True, slots=True)
class RackReport:
    """One rack's cycle as recorded."""

    cycle: CycleRecord
    checks: list[CheckRecord]

    @property
    def rack(self) -> str:
        return self.cycle.rack


@dataclass(frozen=True, slots=True)
class CheckPlan:
    """What a cycle needs from the configuration."""

    limits: policy.Limits
    poll_interval: timedelta
    submit_grace: timedelta = timedelta(minutes=2)
    location: str = ""
    job_template: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    failures_to_unhealthy: int = 2
    incident_ratio: float = 0.5
    secrets: tuple[str, ...] = ()  # scrubbed from the provision logs kept

    @classmethod
    def from_settings(cls, settings: Settings, *, dry_run: bool = False) -> CheckPlan:
        return cls(
            limits=policy.Limits(
                max_fail_streak=settings.check.max_fail_streak,
                stale_after=settings.check.stale_after,
                job_timeout=settings.check.job_timeout,
            ),
            poll_interval=settings.check.poll_interval,
            submit_grace=settings.check.submit_grace,
            location=settings.testflinger.location,
            job_template=settings.job,
            dry_run=dry_run,
            failures_to_unhealthy=settings.health.failures_to_unhealthy,
            incident_ratio=settings.health.rack_incident_ratio,
            secrets=tuple(settings.secret_values()),
        )


async def run_cycle(
    settings: Settings,
    racks: Sequence[str],
    *,
    store: Store,
    maas: Maas,
    testflinger: Testflinger,
    dry_run: bool = False,
    clock: Callable[[], datetime] = utc_now,
    on_progress: Callable[[Tally], None] | None = None,
    agents: Collection[str] | None = None,
) -> list[RackReport]:
    """Check the racks once with the configured plan: what run-once, the daemon and tests run.

    With `agents`, only those agents of the racks (see `Checker.run`).
    """
    checker = Checker(
        maas=maas,
        testflinger=testflinger,
        store=store,
        plan=CheckPlan.from_settings(settings, dry_run=dry_run),
        clock=clock,
        on_progress=on_progress,
    )
    return await checker.run(racks, agents=agents)


async def racks_holding(
    names: Sequence[str], racks: Sequence[str], maas: Maas
) -> dict[str, list[str]]:
    """The racks among `racks` whose MAAS machines include each named one, by name.

    A machine and its agent share a name (matched without regard to case); a name that no
    rack holds maps to [].
    """
    machines = await gather_or_cancel(maas.machines(rack) for rack in racks)
    holding: dict[str, list[str]] = {name: [] for name in names}
    for rack, listed in zip(racks, machines, strict=True):
        hostnames = {machine.hostname.casefold() for machine in listed}
        for name in names:
            if name.casefold() in hostnames:
                holding[name].append(rack)
    return holding


class Checker:
    """Runs check cycles against one MAAS and one Testflinger, recording into one store."""

    def __init__(
        self,
        *,
        maas: Maas,
        testflinger: Testflinger,
        store: Store,
        plan: CheckPlan,
        clock: Callable[[], datetime] = utc_now,
        on_progress: Callable[[Tally], None] | None = None,
    ) -> None:
        self._maas = maas
        self._tf = testflinger
        self._store = store
        self._wanted: set[str] | None = None  # a partial run's agents, casefolded
        self._plan = plan
        self._clock = clock
        self._jobs = Jobs(
            testflinger,
            store,
            limits=plan.limits,
            poll_interval=plan.poll_interval,
            submit_grace=plan.submit_grace,
            job_template=plan.job_template,
            clock=clock,
            on_progress=on_progress,
            secrets=plan.secrets,
        )

    @property
    def tally(self) -> Tally:
        """Where the jobs of this checker's runs stand."""
        return self._jobs.tally

    async def run(
        self, racks: Sequence[str], *, agents: Collection[str] | None = None
    ) -> list[RackReport]:
        """Check the racks once, together, and wait for every job to end.

        With `agents`, a partial cycle of each rack: only those agents (by name, without regard
        to case) are checked and recorded, and only their earlier jobs resumed.
        """
        self._wanted = None if agents is None else {name.casefold() for name in agents}
        cycles = {
            rack: self._store.start_cycle(rack, self._clock(), agents=agents) for rack in racks
        }
        survey: tuple[list[Agent], policy.HeldJobs] | UpstreamError
        try:
            survey = await self._survey()
        except UpstreamError as exc:
            self._jobs.upstream_failed(exc)
            survey = exc
        claims: dict[str, str] = {}  # agent -> the rack whose cycle exercises it in this run
        return await gather_or_cancel(
            self._rack(rack, cycles[rack], survey, claims) for rack in racks
        )

    async def _survey(self) -> tuple[list[Agent], policy.HeldJobs]:
        """Every agent, and the rackwatch jobs Testflinger holds: one listing, one search."""
        if self._plan.dry_run:
            return await self._tf.agents(), policy.NO_HELD_JOBS
        agents, active = await gather_or_cancel([self._tf.agents(), self._tf.active_jobs(JOB_TAG)])
        assert isinstance(agents, list) and isinstance(active, list)
        return agents, await self._jobs.held_jobs(agents, active)

    async def _rack(
        self,
        rack: str,
        cycle_id: int,
        survey: tuple[list[Agent], policy.HeldJobs] | UpstreamError,
        claims: dict[str, str],
    ) -> RackReport:
        """One rack's cycle; an agent that `claims` gives to another rack of the run is busy."""
        started = self._clock()
        resumed = [c for c in self._store.unfinished(rack) if self._is_wanted(c.agent)]
        in_flight = {check.agent: check for check in self._store.unfinished()}
        log.info("cycle.started", rack=rack, cycle_id=cycle_id, resumed=len(resumed))
        work = [self._guard(self._jobs.resume(c), cycle_id, rack, c.agent) for c in resumed]
        resuming = {check.agent for check in resumed}
        error: str | None = None
        try:
            if isinstance(survey, UpstreamError):
                raise survey
            machines = await self._maas.machines(rack)
        except UpstreamError as exc:
            if exc is not survey:
                self._jobs.upstream_failed(exc)
            error = str(exc)
            log.error("cycle.rack_failed", rack=rack, error=error)
        else:
            agents, held = survey
            if not self._plan.dry_run:
                running = {agent.job_id for agent in agents if agent.job_id}
                await gather_or_cancel(
                    self._jobs.follow_up(check, running)
                    for check in self._store.lingering(rack)
                    if self._is_wanted(check.agent)
                )
            decisions = policy.plan_rack(
                machines,
                agents,
                location=self._plan.location,
                now=started,
                limits=self._plan.limits,
                held=held,
            )
            for decision in decisions:
                if decision.name in resuming or not self._is_wanted(decision.name):
                    continue
                if (check := in_flight.get(decision.name)) is not None:
                    decision = _busy_elsewhere(decision, check.rack, check.job_id)
                elif decision.outcome is None:
                    claimed = claims.setdefault(decision.name, rack)
                    if claimed != rack:
                        decision = _busy_elsewhere(decision, claimed)
                if decision.outcome is not None:
                    self._record(cycle_id, rack, decision)
                else:
                    work.append(
                        self._guard(
                            self._exercise(cycle_id, rack, decision, held),
                            cycle_id,
                            rack,
                            decision.name,
                        )
                    )
        await gather_or_cancel(work)

        checks = self._store.checks_of_cycle(cycle_id)
        outcomes = [c.outcome for c in checks if c.outcome is not None]
        status = policy.rack_status(outcomes, error)
        finished = self._clock()
        self._store.finish_cycle(cycle_id, finished, status, error)
        if not self._plan.dry_run:
            verdict = ledger.settle(
                self._store,
                cycle_id,
                failures_to_unhealthy=self._plan.failures_to_unhealthy,
                incident_ratio=self._plan.incident_ratio,
                at=finished,
            )
            for event in verdict.events:
                log.warning("health.changed", **event.to_json())
        log.info(
            "cycle.finished",
            rack=rack,
            status=status,
            checks=len(checks),
            failures=sum(o.is_failure for o in outcomes),
            duration_s=round((finished - started).total_seconds(), 1),
        )
        return RackReport(self._store.cycle(cycle_id), checks)

    def _is_wanted(self, agent: str) -> bool:
        return self._wanted is None or agent.casefold() in self._wanted

    def _record(self, cycle_id: int, rack: str, decision: policy.Decision) -> None:
        assert decision.outcome is not None
        self._store.record_outcome(
            cycle_id,
            rack=rack,
            agent=decision.name,
            machine=decision.machine.hostname,
            outcome=decision.outcome,
            detail=decision.detail,
            queue=decision.queue,
            at=self._clock(),
            maas_status=decision.machine.status,
        )
        log.info(
            "check.finished",
            rack=rack,
            agent=decision.name,
            outcome=str(decision.outcome),
            detail=decision.detail,
        )

    async def _guard(self, work: Awaitable[None], cycle_id: int, rack: str, agent: str) -> None:
        """Run one agent's check so that nothing it raises stops the others or loses its row."""
        try:
            await work
        except Exception as exc:
            if isinstance(exc, UpstreamError):
                self._jobs.upstream_failed(exc)  # resume lets its upstream errors through
            log.exception("check.crashed", rack=rack, agent=agent)
            detail = f"unexpected error: {exc!r}"
            for check in self._store.unfinished(rack):
                if check.agent == agent:
                    self._jobs.finish(Job.of(check), Outcome.ERROR, detail, lingering=True)
                    return
            if not any(c.agent == agent for c in self._store.checks_of_cycle(cycle_id)):
                self._store.record_outcome(
                    cycle_id,
                    rack=rack,
                    agent=agent,
                    machine=None,
                    outcome=Outcome.ERROR,
                    detail=detail,
                    at=self._clock(),
                )

    async def _exercise(
        self, cycle_id: int, rack: str, decision: policy.Decision, held: policy.HeldJobs
    ) -> None:
        """Read the agent again, submit a job to its own queue and track it to its end."""
        try:
            fresh = await self._tf.agent(decision.name)
        except UpstreamError as exc:
            self._jobs.upstream_failed(exc)
            decision = replace(decision, outcome=Outcome.ERROR, detail=str(exc))
        else:
            decision = policy.recheck(
                decision, fresh, held=held, now=self._clock(), limits=self._plan.limits
            )
            if decision.outcome is Outcome.BUSY and fresh is not None and fresh.job_id:
                # Busy with a job that another rack's cycle (listing the machine) began since.
                other = self._store.checks_of_jobs([fresh.job_id]).get(fresh.job_id)
                if other is not None and other.rack != rack:
                    decision = _busy_elsewhere(decision, other.rack, other.job_id)
        if decision.outcome is None and self._plan.dry_run:
            detail = f"a job would go to queue {decision.queue}"
            decision = replace(decision, outcome=Outcome.READY, detail=detail)
        if decision.outcome is not None:
            self._record(cycle_id, rack, decision)
            return

        assert decision.queue is not None
        job_id = str(uuid.uuid4())
        try:
            check_id = self._store.begin_job(
                cycle_id,
                rack=rack,
                agent=decision.name,
                machine=decision.machine.hostname,
                queue=decision.queue,
                job_id=job_id,
                at=self._clock(),
                maas_status=decision.machine.status,
            )
        except StoreError:
            # The state file keeps one unfinished job per agent: the cycle of another rack that
            # lists the machine (in another process, say) began one since this cycle looked.
            other = next((c for c in self._store.unfinished() if c.agent == decision.name), None)
            if other is None:
                raise
            self._record(cycle_id, rack, _busy_elsewhere(decision, other.rack, other.job_id))
            return
        await self._jobs.submit(Job(check_id, rack, decision.name, job_id, decision.queue))


def _busy_elsewhere(
    decision: policy.Decision, rack: str, job_id: str | None = None
) -> policy.Decision:
    """The decision for an agent that the cycle of another `rack` listing it checks.

    With `job_id`, that cycle's job on it, which the state file records as unfinished.
    """
    doing = f"has rackwatch job {job_id} in flight" if job_id else "checks it in this run"
    detail = f"in rack {rack} too, whose cycle {doing}"
    return replace(decision, outcome=Outcome.BUSY, queue=None, detail=detail)
