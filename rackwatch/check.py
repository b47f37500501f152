"""One check cycle over one or more racks: list, decide, submit, track, record.

Every agent of every rack is exercised at once; the number of requests in flight is bounded
by the clients. Every step is written to the store before the next one is taken, so a process
killed at any moment leaves a state that the next cycle resumes without submitting twice: the
job id is recorded before the job is posted.

A job is posted at most once unless it provably never arrived. A post with no clear answer (a
timeout, a dropped connection, a 500) is looked up by its id for `check.submit_grace`; only a job
that never appeared, on a queue that holds no rackwatch job, is posted again under the same id.
Testflinger is the truth for "one job per queue": each cycle starts by asking it which rackwatch
jobs are active (one search by the tag every rackwatch job carries), and no job goes to a queue
that holds one, whichever state file made it. A job that may run on after its check ended (a
timeout: Testflinger cannot stop a provisioning) is followed up in later cycles, its cancel
retried, and what became of it recorded on that check.

The decisions themselves are in `policy`; this module only carries them out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar

import structlog

from rackwatch import ledger, policy
from rackwatch.config import Settings
from rackwatch.errors import UpstreamError, UpstreamOutcomeUnknown, UpstreamUnavailable
from rackwatch.model import (
    ActiveJob,
    Agent,
    JobDefinition,
    JobResult,
    Machine,
    Outcome,
    utc_now,
)
from rackwatch.store import CheckRecord, CycleRecord, Store

log = structlog.get_logger("rackwatch.check")

# Every rackwatch job carries this tag, and "rackwatch-<the state file's identity>".
JOB_TAG = "rackwatch"
# Posts of one job with no clear answer, each followed by a look for it, before giving up.
SUBMIT_ATTEMPTS = 3

T = TypeVar("T")


class Maas(Protocol):
    async def machines(self, rack: str) -> list[Machine]: ...


class Testflinger(Protocol):
    async def agents(self) -> list[Agent]: ...
    async def agent(self, name: str) -> Agent | None: ...
    async def submit(self, job: Mapping[str, Any]) -> str: ...
    async def result(self, job_id: str) -> JobResult | None: ...
    async def cancel(self, job_id: str) -> bool: ...
    async def active_jobs(self, tag: str) -> list[ActiveJob]: ...
    async def job(self, job_id: str) -> JobDefinition | None: ...


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
    submit_grace: timedelta = timedelta(minutes=2)
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
            submit_grace=settings.check.submit_grace,
            location=settings.testflinger.location,
            job_template=settings.job,
            dry_run=dry_run,
            failures_to_unhealthy=settings.health.failures_to_unhealthy,
            incident_ratio=settings.health.rack_incident_ratio,
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
) -> list[RackReport]:
    """Check the racks once with the configured plan: what run-once, the daemon and tests run."""
    checker = Checker(
        maas=maas,
        testflinger=testflinger,
        store=store,
        plan=CheckPlan.from_settings(settings, dry_run=dry_run),
        clock=clock,
        on_progress=on_progress,
    )
    return await checker.run(racks)


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
        self._tags = (JOB_TAG, f"{JOB_TAG}-{store.identity()}")

    async def run(self, racks: Sequence[str]) -> list[RackReport]:
        """Check the racks once, together, and wait for every job to end."""
        cycles = {rack: self._store.start_cycle(rack, self._clock()) for rack in racks}
        survey: tuple[list[Agent], policy.HeldJobs] | UpstreamError
        try:
            survey = await self._survey()
        except UpstreamError as exc:
            self._upstream_failed(exc)
            survey = exc
        return await gather_or_cancel(self._rack(rack, cycles[rack], survey) for rack in racks)

    async def _survey(self) -> tuple[list[Agent], policy.HeldJobs]:
        """Every agent, and the rackwatch jobs Testflinger holds: one listing, one search."""
        if self._plan.dry_run:
            return await self._tf.agents(), policy.NO_HELD_JOBS
        agents, active = await gather_or_cancel([self._tf.agents(), self._tf.active_jobs(JOB_TAG)])
        assert isinstance(agents, list) and isinstance(active, list)
        return agents, await self._held_jobs(agents, active)

    async def _held_jobs(
        self, agents: Sequence[Agent], active: Sequence[ActiveJob]
    ) -> policy.HeldJobs:
        """The rackwatch jobs that are active, or that an agent still runs, told ours or not.

        A job this state file did not record is looked up (GET /v1/job/<id>) for its queue.
        """
        running = {agent.job_id: agent for agent in agents if agent.job_id}
        active_ids = {job.job_id for job in active}
        ours = self._store.checks_of_jobs(active_ids | running.keys())
        foreign = [job for job in active if job.job_id not in ours]
        definitions = await gather_or_cancel(self._tf.job(job.job_id) for job in foreign)
        held = [
            policy.HeldJob(job.job_id, check.queue, job.state, True, _sent(check))
            for job in active
            if (check := ours.get(job.job_id)) is not None
        ]
        held += [
            policy.HeldJob(job_id, check.queue, running[job_id].state, True, _sent(check))
            for job_id, check in ours.items()
            if job_id in running and job_id not in active_ids
        ]
        for job, definition in zip(foreign, definitions, strict=True):
            if definition is None:
                continue  # gone since the search
            origin = next((t for t in definition.tags if t.startswith(f"{JOB_TAG}-")), "")
            held.append(
                policy.HeldJob(job.job_id, definition.queue, job.state, False, None, origin)
            )
        return policy.HeldJobs.of(held)

    async def _rack(
        self,
        rack: str,
        cycle_id: int,
        survey: tuple[list[Agent], policy.HeldJobs] | UpstreamError,
    ) -> RackReport:
        started = self._clock()
        resumed = self._store.unfinished(rack)
        in_flight = {check.agent for check in self._store.unfinished()}
        log.info("cycle.started", rack=rack, cycle_id=cycle_id, resumed=len(resumed))
        work = [self._guard(self._resume(c), cycle_id, rack, c.agent) for c in resumed]
        resuming = {check.agent for check in resumed}
        error: str | None = None
        try:
            if isinstance(survey, UpstreamError):
                raise survey
            machines = await self._maas.machines(rack)
        except UpstreamError as exc:
            if exc is not survey:
                self._upstream_failed(exc)
            error = str(exc)
            log.error("cycle.rack_failed", rack=rack, error=error)
        else:
            agents, held = survey
            if not self._plan.dry_run:
                running = {agent.job_id for agent in agents if agent.job_id}
                await gather_or_cancel(
                    self._follow_up(check, running) for check in self._store.lingering(rack)
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
                    self._finish(Job.of(check), Outcome.ERROR, detail, lingering=True)
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
            self._upstream_failed(exc)
            decision = replace(decision, outcome=Outcome.ERROR, detail=str(exc))
        else:
            decision = policy.recheck(
                decision, fresh, held=held, now=self._clock(), limits=self._plan.limits
            )
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
        await self._submit(Job(check_id, rack, decision.name, job_id, decision.queue))

    async def _resume(self, check: CheckRecord) -> None:
        """Carry on with a job recorded by an earlier run."""
        job = Job.of(check)
        if job.submitted_at is None:
            # The earlier run died between recording the id and hearing back from the POST,
            # which may still be on its way: look before posting again.
            found = await self._look_for(job, sent_at=check.created_at)
            if found == "ended":
                return
            if found == "absent":
                await self._submit(job, resumed=True)
                return
            job = self._submitted(job, check.created_at, resumed=True)
        else:
            log.info("check.resumed", rack=job.rack, agent=job.agent, job_id=job.job_id)
            self.tally.submitted += 1
            self._progress()
        await self._track(job)

    async def _submit(self, job: Job, *, resumed: bool = False) -> None:
        """Post the job, then track it. A post with no clear answer is never repeated blindly."""
        for attempt in range(SUBMIT_ATTEMPTS):
            sent_at = self._clock()
            try:
                await self._tf.submit(self._definition(job))
            except UpstreamOutcomeUnknown as exc:
                self._upstream_failed(exc)
                log.warning(
                    "check.submit_unclear",
                    rack=job.rack,
                    agent=job.agent,
                    job_id=job.job_id,
                    error=str(exc),
                )
                found = await self._look_for(job, sent_at=sent_at)
                if found == "ended":
                    return
                if found == "absent":
                    continue
            except UpstreamError as exc:
                self._upstream_failed(exc)
                # After an unclear post, a late copy of it could still arrive.
                self._finish(job, Outcome.ERROR, f"submit failed: {exc}", lingering=attempt > 0)
                return
            await self._track(self._submitted(job, self._clock(), resumed=resumed))
            return
        detail = f"no clear answer to {SUBMIT_ATTEMPTS} submissions, and the job never appeared"
        self._finish(job, Outcome.ERROR, detail, lingering=True)

    async def _look_for(
        self, job: Job, *, sent_at: datetime
    ) -> Literal["stored", "absent", "ended"]:
        """Whether a job posted at `sent_at` with no clear answer is there, or may go again.

        Looks it up by its id until it appears or `submit_grace` has passed since it was sent.
        It may go again ("absent") only if it never appeared, its agent still waits, and no
        rackwatch job is active on its queue; otherwise the check is ended here ("ended").
        """
        grace_ends = sent_at + self._plan.submit_grace
        poll_s = self._plan.poll_interval.total_seconds()
        while True:
            try:
                if await self._tf.result(job.job_id) is not None:
                    return "stored"
            except UpstreamError as exc:
                self._upstream_failed(exc)  # keep looking: it is there or not, whatever we see
            left_s = (grace_ends - self._clock()).total_seconds()
            if left_s <= 0:
                break
            await asyncio.sleep(min(poll_s, left_s))
        try:
            fresh = await self._tf.agent(job.agent)
            active = await self._tf.active_jobs(JOB_TAG)
            held = await self._held_jobs([fresh] if fresh is not None else [], active)
        except UpstreamError as exc:
            self._upstream_failed(exc)
            detail = f"cannot tell whether its job was stored: {exc}"
            self._finish(job, Outcome.ERROR, detail, lingering=True)
            return "ended"
        if job.job_id in held.by_id:
            return "stored"
        if (holder := held.by_queue.get(job.queue)) is not None:
            detail = (
                f"queue {job.queue} holds rackwatch job {holder.job_id} ({holder.state});"
                " no job submitted"
            )
            self._finish(job, Outcome.BUSY, detail, lingering=True)
            return "ended"
        if fresh is None or fresh.state != "waiting":
            state = fresh.state if fresh else "unknown to Testflinger"
            detail = f"became {state} before the job was submitted"
            self._finish(job, Outcome.BUSY, detail, lingering=True)
            return "ended"
        log.info("check.resubmitting", rack=job.rack, agent=job.agent, job_id=job.job_id)
        return "absent"

    async def _follow_up(self, check: CheckRecord, running: set[str]) -> None:
        """See what became of a lingering check's job: record its end, or retry its cancel."""
        job = Job.of(check)
        try:
            result = await self._tf.result(job.job_id)
        except UpstreamError as exc:
            self._upstream_failed(exc)
            return  # the next cycle looks again
        if result is None:
            late = "Testflinger does not know its job (never stored, or expired)"
        elif result.has_ended and not (result.state == "cancelled" and job.job_id in running):
            deadline = _sent(check) + self._plan.limits.job_timeout
            late = policy.late_result(result, max(self._clock() - deadline, timedelta(0)))
        else:
            if result.state != "cancelled":
                await self._cancel(job)  # still waiting or running: its cancel failed before
            return
        self._store.settle_late(check.id, late)
        log.info(
            "check.late_result", rack=job.rack, agent=job.agent, job_id=job.job_id, result=late
        )

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
                detail = f"{exc}; {await self._cancel(job)}"
                self._finish(job, Outcome.ERROR, detail, lingering=True)
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
                    self._finish(job, Outcome.ERROR, detail, lingering=True)
                else:
                    detail = f"not ended within {limit}; {cancel}"
                    self._finish(job, Outcome.TIMED_OUT, detail, lingering=True)
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
        template = self._plan.job_template
        tags = list(template.get("tags") or ())
        tags += [tag for tag in self._tags if tag not in tags]
        return {**template, "tags": tags, "job_queue": job.queue, "job_id": job.job_id}

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
        self,
        job: Job,
        outcome: Outcome,
        detail: str,
        *,
        provision_status: int | None = None,
        lingering: bool = False,
    ) -> None:
        """End the check; `lingering` when its job may run on (see `_follow_up`)."""
        now = self._clock()
        self._store.finish_check(
            job.check_id,
            outcome=outcome,
            at=now,
            detail=detail,
            provision_status=provision_status,
            lingering=lingering,
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


def _sent(check: CheckRecord) -> datetime:
    """When the check's job went to Testflinger, or was about to."""
    return check.submitted_at or check.created_at


async def gather_or_cancel(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Await them together; when one fails, cancel the others before raising its error.

    So that a crashed cycle leaves none of its tasks running on after the HTTP session closes.
    """
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
