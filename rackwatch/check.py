"""One check cycle over one or more racks: list, decide, submit, track, record.

Every agent of every rack is exercised at once; the number of requests in flight is bounded
by the clients. Every step is written to the store before the next one is taken, so a process
killed at any moment leaves a state that the next cycle resumes without submitting twice:
the job id is recorded before the job is posted, and a job Testflinger does not know is
posted again under the same id.

The decisions themselves are in `policy`; this module only carries them out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from rackwatch import ledger, policy
from rackwatch.config import Settings
from rackwatch.errors import UpstreamError, UpstreamUnavailable
from rackwatch.model import Agent, JobResult, Machine, Outcome
from rackwatch.store import CheckRecord, CycleRecord, Store

log = structlog.get_logger("rackwatch.check")


class Maas(Protocol):
    async def machines(self, rack: str) -> list[Machine]: ...


class Testflinger(Protocol):
    async def agents(self) -> list[Agent]: ...
    async def agent(self, name: str) -> Agent | None: ...
    async def submit(self, job: Mapping[str, Any]) -> str: ...
    async def result(self, job_id: str) -> JobResult | None: ...
    async def cancel(self, job_id: str) -> bool: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Tally:
    """Where the jobs of a run stand, for a progress line."""

    submitted: int = 0
    running: int = 0
    passed: int = 0
    failed: int = 0  # failed, timed out or error

    @property
    def left(self) -> int:
        return self.submitted - self.passed - self.failed


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
    location: str = ""
    job_template: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    failures_to_unhealthy: int = 2
    incident_ratio: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings, *, dry_run: bool = False) -> CheckPlan:
        return cls(
            limits=policy.Limits(
                max_fail_streak=settings.check.max_fail_streak,
                stale_after=settings.check.stale_after,
                job_timeout=settings.check.job_timeout,
            ),
            poll_interval=settings.check.poll_interval,
            location=settings.testflinger.location,
            job_template=settings.job,
            dry_run=dry_run,
            failures_to_unhealthy=settings.health.failures_to_unhealthy,
            incident_ratio=settings.health.rack_incident_ratio,
        )


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
        self._plan = plan
        self._clock = clock
        self._on_progress = on_progress
        self.tally = Tally()

    async def run(self, racks: Sequence[str]) -> list[RackReport]:
        """Check the racks once, together, and wait for every job to end."""
        cycles = {rack: self._store.start_cycle(rack, self._clock()) for rack in racks}
        agents: list[Agent] | UpstreamError
        try:
            agents = await self._tf.agents()
        except UpstreamError as exc:
            self._upstream_failed(exc)
            agents = exc
        return list(
            await asyncio.gather(*(self._rack(rack, cycles[rack], agents) for rack in racks))
        )

    async def _rack(
        self, rack: str, cycle_id: int, agents: list[Agent] | UpstreamError
    ) -> RackReport:
        started = self._clock()
        resumed = self._store.unfinished(rack)
        in_flight = {check.agent for check in self._store.unfinished()}
        log.info("cycle.started", rack=rack, cycle_id=cycle_id, resumed=len(resumed))
        work = [self._guard(self._resume(c), cycle_id, rack, c.agent) for c in resumed]
        resuming = {check.agent for check in resumed}
        error: str | None = None
        try:
            if isinstance(agents, UpstreamError):
                raise agents
            machines = await self._maas.machines(rack)
        except UpstreamError as exc:
            if exc is not agents:
                self._upstream_failed(exc)
            error = str(exc)
            log.error("cycle.rack_failed", rack=rack, error=error)
        else:
            decisions = policy.plan_rack(
                machines,
                agents,
                location=self._plan.location,
                now=started,
                limits=self._plan.limits,
            )
            for decision in decisions:
                if decision.name in resuming:
                    continue
                if decision.name in in_flight:
                    decision = policy.Decision(
                        decision.machine,
                        decision.agent,
                        Outcome.BUSY,
                        detail="a rackwatch job of another rack's cycle is in flight",
                    )
                if decision.outcome is not None:
                    self._record(cycle_id, rack, decision)
                else:
                    work.append(
                        self._guard(
                            self._exercise(cycle_id, rack, decision), cycle_id, rack, decision.name
                        )
                    )
        await asyncio.gather(*work)

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
                log.warning("health.changed", **event)
        log.info(
            "cycle.finished",
            rack=rack,
            status=status,
            checks=len(checks),
            failures=sum(o.is_failure for o in outcomes),
            duration_s=round((finished - started).total_seconds(), 1),
        )
        return RackReport(self._store.cycle(cycle_id), checks)

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
                self._upstream_failed(exc)  # _resume lets its upstream errors through
            log.exception("check.crashed", rack=rack, agent=agent)
            detail = f"unexpected error: {exc!r}"
            for check in self._store.unfinished(rack):
                if check.agent == agent:
                    self._finish(Job.of(check), Outcome.ERROR, detail)
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
        """Read the agent again, submit a job to its own queue and track it to its end."""
        try:
            decision = policy.recheck(decision, await self._tf.agent(decision.name))
        except UpstreamError as exc:
            self._upstream_failed(exc)
            decision = replace(decision, outcome=Outcome.ERROR, detail=str(exc))
        if decision.outcome is None and self._plan.dry_run:
            detail = f"a job would go to queue {decision.queue}"
            decision = replace(decision, outcome=Outcome.READY, detail=detail)
        if decision.outcome is not None:
            self._record(cycle_id, rack, decision)
            return

        assert decision.queue is not None
        job_id = str(uuid.uuid4())
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
        job = Job(check_id, rack, decision.name, job_id, decision.queue)
        try:
            await self._tf.submit(self._definition(job))
        except UpstreamError as exc:
            self._upstream_failed(exc)
            self._finish(job, Outcome.ERROR, f"submit failed: {exc}")
            return
        await self._track(self._submitted(job, self._clock()))

    async def _resume(self, check: CheckRecord) -> None:
        """Carry on with a job recorded by an earlier run."""
        job = Job.of(check)
        if job.submitted_at is None:
            # The earlier run died between recording the id and hearing back from the POST.
            if await self._tf.result(job.job_id) is not None:
                job = self._submitted(job, check.created_at, resumed=True)
            else:
                fresh = await self._tf.agent(job.agent)
                if fresh is None or fresh.state != "waiting":
                    state = fresh.state if fresh else "unknown to Testflinger"
                    self._finish(job, Outcome.BUSY, f"became {state} before the job was submitted")
                    return
                await self._tf.submit(self._definition(job))
                job = self._submitted(job, self._clock(), resumed=True)
        else:
            log.info("check.resumed", rack=job.rack, agent=job.agent, job_id=job.job_id)
            self.tally.submitted += 1
            self._progress()
        await self._track(job)

    async def _track(self, job: Job) -> None:
        """Poll the job until it ends or its time is up; cancel it when its time is up."""
        assert job.submitted_at is not None
        deadline = job.submitted_at + self._plan.limits.job_timeout
        poll_s = self._plan.poll_interval.total_seconds()
        running = False
        last_error: UpstreamError | None = None
        while True:
            await asyncio.sleep(max(0.0, min(poll_s, (deadline - self._clock()).total_seconds())))
            try:
                result = await self._tf.result(job.job_id)
            except UpstreamUnavailable as exc:
                self._upstream_failed(exc)
                last_error = exc  # keep polling: the job runs on whether we can see it or not
            except UpstreamError as exc:
                self._upstream_failed(exc)
                self._finish(job, Outcome.ERROR, f"{exc}; {await self._cancel(job)}")
                return
            else:
                last_error = None
                if result is None:
                    self._finish(job, Outcome.ERROR, "Testflinger no longer knows the job")
                    return
                verdict = policy.judge(result)
                if verdict is not None:
                    self._finish(job, *verdict, provision_status=result.provision_status)
                    return
                if not running and result.state != "waiting":
                    running = True
                    self.tally.running += 1
                    self._progress()
            if self._clock() >= deadline:
                limit = policy.format_age(self._plan.limits.job_timeout)
                cancel = await self._cancel(job)
                if last_error is not None:
                    detail = f"no result readable for {limit}: {last_error}; {cancel}"
                    self._finish(job, Outcome.ERROR, detail)
                else:
                    self._finish(job, Outcome.TIMED_OUT, f"not ended within {limit}; {cancel}")
                return

    async def _cancel(self, job: Job) -> str:
        try:
            cancelled = await self._tf.cancel(job.job_id)
        except UpstreamError as exc:
            self._upstream_failed(exc)
            log.warning("check.cancel_failed", rack=job.rack, agent=job.agent, error=str(exc))
            return f"cancelling it failed: {exc}"
        return "cancelled" if cancelled else "it had ended by the time it was cancelled"

    def _definition(self, job: Job) -> dict[str, Any]:
        return {**self._plan.job_template, "job_queue": job.queue, "job_id": job.job_id}

    def _submitted(self, job: Job, at: datetime, *, resumed: bool = False) -> Job:
        self._store.mark_submitted(job.check_id, at)
        log.info(
            "check.submitted",
            rack=job.rack,
            agent=job.agent,
            job_id=job.job_id,
            queue=job.queue,
            resumed=resumed,
        )
        self.tally.submitted += 1
        self._progress()
        return replace(job, submitted_at=at)

    def _finish(
        self, job: Job, outcome: Outcome, detail: str, *, provision_status: int | None = None
    ) -> None:
        now = self._clock()
        self._store.finish_check(
            job.check_id, outcome=outcome, at=now, detail=detail, provision_status=provision_status
        )
        started = job.submitted_at
        log.log(
            logging.WARNING if outcome.is_failure else logging.INFO,
            "check.finished",
            rack=job.rack,
            agent=job.agent,
            job_id=job.job_id,
            outcome=str(outcome),
            duration_s=round((now - started).total_seconds(), 1) if started else None,
            detail=detail,
        )
        if started is not None:
            if outcome is Outcome.PASSED:
                self.tally.passed += 1
            else:
                self.tally.failed += 1
            self._progress()

    def _upstream_failed(self, exc: UpstreamError) -> None:
        """Count a call that failed for good, for rackwatch_upstream_errors_total."""
        self._store.count("upstream_errors", exc.service)

    def _progress(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.tally)


@dataclass(frozen=True, slots=True)
class Job:
    """A rackwatch job being carried out: its row in the store and where it went."""

    check_id: int
    rack: str
    agent: str
    job_id: str
    queue: str
    submitted_at: datetime | None = None

    @classmethod
    def of(cls, check: CheckRecord) -> Job:
        assert check.job_id is not None and check.queue is not None
        return cls(check.id, check.rack, check.agent, check.job_id, check.queue, check.submitted_at)
