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

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Protocol

import structlog

from rackwatch import ledger, policy
from rackwatch.check_plan import CheckPlan
from rackwatch.clients.testflinger import why_unservable
from rackwatch.config import Settings
from rackwatch.errors import StoreError, UpstreamError
from rackwatch.jobs import Job, Jobs, Tally, Testflinger, gather_or_cancel
from rackwatch.model import (
    Agent,
    Machine,
    Outcome,
    utc_now,
)
from rackwatch.store import CheckRecord, CycleRecord, Store
from rackwatch.tracking import Once, Watch

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
class Survey:
    """What a run starts from: every agent, indexed once for all racks, and the held jobs."""

    agents: list[Agent]
    index: policy.AgentIndex
    held: policy.HeldJobs


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
    watch: Watch | None = None,
) -> list[RackReport]:
    """Check the racks once with the configured plan: what run-once, the daemon and tests run.

    With `agents`, only those agents of the racks (see `Checker.run`). Cycles that share a
    `watch` of `testflinger` (the daemon's) share its listings, searches and job tracking.
    """
    checker = Checker(
        maas=maas,
        testflinger=testflinger,
        store=store,
        plan=CheckPlan.from_settings(settings, dry_run=dry_run),
        clock=clock,
        on_progress=on_progress,
        watch=watch,
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
        watch: Watch | None = None,
    ) -> None:
        """Without a `watch` of `testflinger` shared with other checkers, it has one of its own."""
        self._maas = maas
        self._tf = testflinger
        self._store = store
        self._wanted: set[str] | None = None  # a partial run's agents, casefolded
        self._plan = plan
        self._clock = clock
        if watch is None:
            watch = Watch(
                testflinger, on_error=lambda exc: store.count("upstream_errors", exc.service)
            )
        watch.tracker.poll_interval = plan.poll_interval  # of the latest cycle to start
        self._watch = watch
        # So that the first jobs go out before every other job's row is written.
        self._posting = asyncio.Semaphore(plan.concurrency)
        self._jobs = Jobs(
            testflinger,
            store,
            tracker=watch.tracker,
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

        One survey of Testflinger (`_survey`) serves every rack: it is taken first, then MAAS
        lists the racks, and each rack's jobs go out as soon as its listing is read.
        With `agents`, a partial cycle of each rack: only those agents (by name, without regard
        to case) are checked and recorded, and only their earlier jobs resumed.
        """
        self._wanted = None if agents is None else {name.casefold() for name in agents}
        cycles = {
            rack: self._store.start_cycle(rack, self._clock(), agents=agents) for rack in racks
        }
        claims: dict[str, str] = {}  # agent -> the rack whose cycle exercises it in this run
        survey = Once(self._survey)
        try:
            return await gather_or_cancel(
                self._rack(rack, cycles[rack], claims, survey) for rack in racks
            )
        finally:
            await survey.cancel()

    async def _survey(self) -> Survey | UpstreamError:
        """Every agent, indexed, and the rackwatch jobs Testflinger holds: one listing and one
        search, taken before MAAS lists the racks; or why they could not be."""
        try:
            if self._plan.dry_run:
                agents, held = await self._watch.agents(), policy.NO_HELD_JOBS
            else:
                listed, active = await gather_or_cancel(
                    [self._watch.agents(), self._watch.active_jobs()]
                )
                assert isinstance(listed, list) and isinstance(active, list)
                agents, held = listed, await self._jobs.held_jobs(listed, active)
        except UpstreamError as exc:
            self._jobs.upstream_failed(exc)
            return exc
        return Survey(agents, policy.index_agents(agents, self._plan.location), held)

    async def _rack(
        self,
        rack: str,
        cycle_id: int,
        claims: dict[str, str],
        survey: Once[Survey | UpstreamError],
    ) -> RackReport:
        """One rack's cycle; an agent that `claims` gives to another rack of the run is busy.

        The run's racks share one `survey`, taken before MAAS lists them.
        """
        started = self._clock()
        resumed = [c for c in self._store.unfinished(rack) if self._is_wanted(c.agent)]
        log.info("cycle.started", rack=rack, cycle_id=cycle_id, resumed=len(resumed))
        work: list[Awaitable[None]] = [
            self._guard(self._jobs.resume(c), cycle_id, rack, c.agent) for c in resumed
        ]
        error: str | None = None
        machines: list[Machine] | None = None
        # Taken before MAAS lists any rack: Testflinger answers it while MAAS is still busy
        # listing the racks, and the first rack listed goes on at once.
        seen = await survey()
        try:
            machines = await self._maas.machines(rack)
        except UpstreamError as exc:
            self._jobs.upstream_failed(exc)
            error = str(exc)
            log.error("cycle.rack_failed", rack=rack, error=error)
        if machines is not None:
            if isinstance(seen, UpstreamError):
                error = str(seen)
                log.error("cycle.rack_failed", rack=rack, error=error)
            else:
                resuming = {check.agent for check in resumed}
                work += await self._plan_work(cycle_id, rack, machines, seen, resuming, claims)
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

    async def _plan_work(
        self,
        cycle_id: int,
        rack: str,
        machines: list[Machine],
        survey: Survey,
        resuming: set[str],
        claims: dict[str, str],
    ) -> list[Awaitable[None]]:
        """Follow up the rack's lingering jobs, record each machine that gets no job, and
        return the checks to carry out."""
        if not self._plan.dry_run:
            running = {agent.job_id for agent in survey.agents if agent.job_id}
            await gather_or_cancel(
                self._jobs.follow_up(check, running)
                for check in self._store.lingering(rack)
                if self._is_wanted(check.agent)
            )
        # Read after the survey, so that another rack's job begun meanwhile is seen.
        in_flight = {check.agent: check for check in self._store.unfinished()}
        decisions = policy.plan_rack(
            machines, survey.index, now=self._clock(), limits=self._plan.limits, held=survey.held
        )
        work: list[Awaitable[None]] = []
        with self._store.batch():  # the machines that get no job, recorded in one transaction
            for decision in decisions:
                if decision.name in resuming or not self._is_wanted(decision.name):
                    continue
                claimed = claims.get(decision.name, rack)
                if claimed != rack:  # another rack of this run checks it, its job begun or not
                    decision = _busy_elsewhere(decision, claimed)
                elif (check := in_flight.get(decision.name)) is not None:
                    decision = _busy_elsewhere(decision, check.rack, check.job_id)
                elif decision.outcome is None:
                    claims[decision.name] = rack
                if decision.outcome is not None:
                    self._record(cycle_id, rack, decision)
                else:
                    exercise = self._exercise(cycle_id, rack, decision)
                    work.append(self._guard(exercise, cycle_id, rack, decision.name))
        return work

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
                    await self._jobs.finish(Job.of(check), Outcome.ERROR, detail, lingering=True)
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

    async def _exercise(self, cycle_id: int, rack: str, decision: policy.Decision) -> None:
        """Submit a job to the agent's own queue and track it to its end."""
        if (why := why_unservable(decision.name)) is not None:
            detail = f"{decision.name!r} is an agent name Testflinger cannot serve ({why})"
            decision = replace(decision, outcome=Outcome.ERROR, detail=detail)
        if decision.outcome is None and self._plan.dry_run:
            detail = f"a job would go to queue {decision.queue}"
            decision = replace(decision, outcome=Outcome.READY, detail=detail)
        if decision.outcome is not None:
            self._record(cycle_id, rack, decision)
            return

        assert decision.queue is not None
        job_id = str(uuid.uuid4())
        async with self._posting:
            begin = partial(
                self._store.begin_job,
                cycle_id,
                rack=rack,
                agent=decision.name,
                machine=decision.machine.hostname,
                queue=decision.queue,
                job_id=job_id,
                at=self._clock(),
                maas_status=decision.machine.status,
            )
            try:
                check_id = await self._jobs.write(begin)
            except StoreError:
                # The state file keeps one unfinished job per agent: the cycle of another rack
                # that lists the machine (in another process, say) began one since this cycle
                # looked.
                other = next(
                    (c for c in self._store.unfinished() if c.agent == decision.name), None
                )
                if other is None:
                    raise
                self._record(cycle_id, rack, _busy_elsewhere(decision, other.rack, other.job_id))
                return
            posted = await self._jobs.post(
                Job(check_id, rack, decision.name, job_id, decision.queue)
            )
        if posted is not None:
            await self._jobs.track(posted)


def _busy_elsewhere(
    decision: policy.Decision, rack: str, job_id: str | None = None
) -> policy.Decision:
    """The decision for an agent that the cycle of another `rack` listing it checks.

    With `job_id`, that cycle's job on it, which the state file records as unfinished.
    """
    doing = f"has rackwatch job {job_id} in flight" if job_id else "checks it in this run"
    detail = f"in rack {rack} too, whose cycle {doing}"
    return replace(decision, outcome=Outcome.BUSY, queue=None, detail=detail)
