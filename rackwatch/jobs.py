"""One rackwatch job's life: submitted at most once, tracked to its end, followed up after.

A job is posted at most once unless it provably never arrived. A post with no clear answer (a
timeout, a dropped connection, a 500) is looked up by its id for `check.submit_grace`; only a job
that never appeared, on a queue that holds no rackwatch job, is posted again under the same id.
A job that may run on after its check ended (a timeout: Testflinger cannot stop a provisioning)
is followed up in later cycles, its cancel retried, and what became of it recorded on that check.

Every step is written to the store before the next one is taken: the job id is recorded (by
the caller) before the job is posted, and a job whose check has no outcome is resumed. The
writes that the checks ask for in one turn of the event loop share a transaction (`write`, a
`group_commit.GroupCommit`), each awaited until it is committed. Jobs in flight are followed by
one `tracking.Tracker` for the whole process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

import structlog

from rackwatch import policy
from rackwatch.errors import UpstreamError, UpstreamOutcomeUnknown, UpstreamUnavailable
from rackwatch.group_commit import GroupCommit
from rackwatch.model import ActiveJob, Agent, JobDefinition, JobResult, Outcome
from rackwatch.provision_log import excerpt
from rackwatch.safe_text import Redactor
from rackwatch.store import CheckRecord, Store
from rackwatch.tracking import JOB_TAG, Tracker

log = structlog.get_logger("rackwatch.check")

# Posts of one job with no clear answer, each followed by a look for it, before giving up.
SUBMIT_ATTEMPTS = 3

T = TypeVar("T")


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


class Jobs:
    """Carries rackwatch's jobs on one Testflinger through their lives, recording into one store."""

    def __init__(
        self,
        testflinger: Testflinger,
        store: Store,
        *,
        tracker: Tracker,
        limits: policy.Limits,
        poll_interval: timedelta,
        submit_grace: timedelta,
        job_template: Mapping[str, Any],
        clock: Callable[[], datetime],
        on_progress: Callable[[Tally], None] | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        """`tracker` follows the jobs submitted; `secrets`, in every form `safe_text.Redactor`
        knows, are scrubbed from the provision logs kept of failed and timed-out jobs, as are
        Authorization headers and URL userinfo."""
        self._tf = testflinger
        self._tracker = tracker
        self._store = store
        self._limits = limits
        self._poll_interval = poll_interval
        self._submit_grace = submit_grace
        self._job_template = job_template
        self._clock = clock
        self._on_progress = on_progress
        self._redact = Redactor(secrets)
        self.write = GroupCommit(store)  # the checks' writes of one turn of the loop, together
        self._tags = (JOB_TAG, f"{JOB_TAG}-{store.identity()}")
        self.tally = Tally()

    async def held_jobs(
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

    async def resume(self, check: CheckRecord) -> None:
        """Carry on with a job recorded by an earlier run."""
        job = Job.of(check)
        if job.submitted_at is None:
            # The earlier run died between recording the id and hearing back from the POST,
            # which may still be on its way: look before posting again.
            found = await self._look_for(job, sent_at=check.created_at)
            if found == "ended":
                return
            if found == "absent":
                if (posted := await self.post(job, resumed=True)) is not None:
                    await self.track(posted)
                return
            job = await self._submitted(job, check.created_at, resumed=True)
        else:
            log.info("check.resumed", rack=job.rack, agent=job.agent, job_id=job.job_id)
            self.tally.submitted += 1
            self._progress()
        await self.track(job)

    async def post(self, job: Job, *, resumed: bool = False) -> Job | None:
        """Post the job: the job as submitted, to `track`; None when its check ended here.

        A post with no clear answer is never repeated blindly.
        """
        for attempt in range(SUBMIT_ATTEMPTS):
            sent_at = self._clock()
            try:
                await self._tf.submit(self._definition(job))
            except UpstreamOutcomeUnknown as exc:
                self.upstream_failed(exc)
                log.warning(
                    "check.submit_unclear",
                    rack=job.rack,
                    agent=job.agent,
                    job_id=job.job_id,
                    error=str(exc),
                )
                found = await self._look_for(job, sent_at=sent_at)
                if found == "ended":
                    return None
                if found == "absent":
                    continue
            except UpstreamError as exc:
                self.upstream_failed(exc)
                # After an unclear post, a late copy of it could still arrive.
                await self.finish(
                    job, Outcome.ERROR, f"submit failed: {exc}", lingering=attempt > 0
                )
                return None
            return await self._submitted(job, self._clock(), resumed=resumed)
        detail = f"no clear answer to {SUBMIT_ATTEMPTS} submissions, and the job never appeared"
        await self.finish(job, Outcome.ERROR, detail, lingering=True)
        return None

    async def _look_for(
        self, job: Job, *, sent_at: datetime
    ) -> Literal["stored", "absent", "ended"]:
        """Whether a job posted at `sent_at` with no clear answer is there, or may go again.

        Looks it up by its id until it appears or `submit_grace` has passed since it was sent.
        It may go again ("absent") only if it never appeared, its agent still waits, and no
        rackwatch job is active on its queue; otherwise the check is ended here ("ended").
        """
        grace_ends = sent_at + self._submit_grace
        poll_s = self._poll_interval.total_seconds()
        while True:
            try:
                if await self._tf.result(job.job_id) is not None:
                    return "stored"
            except UpstreamError as exc:
                self.upstream_failed(exc)  # keep looking: it is there or not, whatever we see
            left_s = (grace_ends - self._clock()).total_seconds()
            if left_s <= 0:
                break
            await asyncio.sleep(min(poll_s, left_s))
        try:
            fresh = await self._tf.agent(job.agent)
            active = await self._tf.active_jobs(JOB_TAG)
            held = await self.held_jobs([fresh] if fresh is not None else [], active)
        except UpstreamError as exc:
            self.upstream_failed(exc)
            detail = f"cannot tell whether its job was stored: {exc}"
            await self.finish(job, Outcome.ERROR, detail, lingering=True)
            return "ended"
        if job.job_id in held.by_id:
            return "stored"
        if (holder := held.by_queue.get(job.queue)) is not None:
            detail = (
                f"queue {job.queue} holds rackwatch job {holder.job_id} ({holder.state});"
                " no job submitted"
            )
            await self.finish(job, Outcome.BUSY, detail, lingering=True)
            return "ended"
        if fresh is None or fresh.state != "waiting":
            state = fresh.state if fresh else "unknown to Testflinger"
            detail = f"became {state} before the job was submitted"
            await self.finish(job, Outcome.BUSY, detail, lingering=True)
            return "ended"
        log.info("check.resubmitting", rack=job.rack, agent=job.agent, job_id=job.job_id)
        return "absent"

    async def follow_up(self, check: CheckRecord, running: set[str]) -> None:
        """See what became of a lingering check's job: record its end, or retry its cancel."""
        job = Job.of(check)
        try:
            result = await self._tf.result(job.job_id)
        except UpstreamError as exc:
            self.upstream_failed(exc)
            return  # the next cycle looks again
        if result is None:
            late = "Testflinger does not know its job (never stored, or expired)"
        elif result.has_ended and not (result.state == "cancelled" and job.job_id in running):
            deadline = _sent(check) + self._limits.job_timeout
            late = policy.late_result(result, max(self._clock() - deadline, timedelta(0)))
        else:
            if result.state != "cancelled":
                await self._cancel(job)  # still waiting or running: its cancel failed before
            return
        self._store.settle_late(check.id, late)
        log.info(
            "check.late_result", rack=job.rack, agent=job.agent, job_id=job.job_id, result=late
        )

    async def track(self, job: Job) -> None:
        """Follow the job (see `tracking`) until it ends or its time is up; cancel it then.

        A job read "cancelled" that its agent had taken runs on to end "complete" (provisioning
        is never interrupted): it is followed until then. A failed or timed-out check keeps the
        end of the provision output last read.
        """
        assert job.submitted_at is not None
        deadline = job.submitted_at + self._limits.job_timeout
        running = False
        last_error: UpstreamError | None = None
        last: JobResult | None = None
        while True:
            try:
                result = await self._tracker.sighting(
                    job.job_id,
                    known=last.state if last is not None else None,
                    within=deadline - self._clock(),
                )
            except UpstreamUnavailable as exc:
                self.upstream_failed(exc)
                last_error = exc  # keep polling: the job runs on whether we can see it or not
            except UpstreamError as exc:
                self.upstream_failed(exc)
                detail = f"{exc}; {await self._cancel(job, last)}"
                await self.finish(job, Outcome.ERROR, detail, lingering=True)
                return
            else:
                last_error = None
                if result is None:
                    await self.finish(job, Outcome.ERROR, "Testflinger no longer knows the job")
                    return
                runs_on = policy.runs_on_cancelled(result, last.state if last else None)
                last = result
                verdict = None if runs_on else policy.judge(result)
                if verdict is not None:
                    outcome, detail = verdict
                    await self.finish(
                        job,
                        outcome,
                        detail,
                        provision_status=result.provision_status,
                        provision_log=self._log_of(result) if outcome.is_failure else None,
                    )
                    return
                if not running and result.state != "waiting":
                    running = True
                    self.tally.running += 1
                    self._progress()
            if self._clock() >= deadline:
                limit = policy.format_age(self._limits.job_timeout)
                if last is not None and last.state == "cancelled":
                    cancel = "cancelled at Testflinger while its agent ran it"
                else:
                    cancel = await self._cancel(job, last)
                if last_error is not None:
                    detail = f"no result readable for {limit}: {last_error}; {cancel}"
                    await self.finish(job, Outcome.ERROR, detail, lingering=True)
                else:
                    detail = f"not ended within {limit}; {cancel}"
                    log_read = self._log_of(last) if last is not None else None
                    await self.finish(
                        job, Outcome.TIMED_OUT, detail, provision_log=log_read, lingering=True
                    )
                return

    async def _cancel(self, job: Job, last: JobResult | None = None) -> str:
        """Cancel the job, whose latest result read was `last`; what came of it, as text."""
        try:
            cancelled = await self._tf.cancel(job.job_id)
        except UpstreamError as exc:
            self.upstream_failed(exc)
            log.warning("check.cancel_failed", rack=job.rack, agent=job.agent, error=str(exc))
            return f"cancelling it failed: {exc}"
        if not cancelled:
            return "it had ended by the time it was cancelled"
        return policy.cancelled_text(last.state if last is not None else None)

    def _log_of(self, result: JobResult) -> str | None:
        return excerpt(result.provision_output, redact=self._redact)

    def _definition(self, job: Job) -> dict[str, Any]:
        template = self._job_template
        tags = list(template.get("tags") or ())
        tags += [tag for tag in self._tags if tag not in tags]
        return {**template, "tags": tags, "job_queue": job.queue, "job_id": job.job_id}

    async def _submitted(self, job: Job, at: datetime, *, resumed: bool = False) -> Job:
        await self.write(partial(self._store.mark_submitted, job.check_id, at))
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

    async def finish(
        self,
        job: Job,
        outcome: Outcome,
        detail: str,
        *,
        provision_status: int | None = None,
        provision_log: str | None = None,
        lingering: bool = False,
    ) -> None:
        """End the check; `lingering` when its job may run on (see `_follow_up`)."""
        now = self._clock()
        end = partial(
            self._store.finish_check,
            job.check_id,
            outcome=outcome,
            at=now,
            detail=detail,
            provision_status=provision_status,
            provision_log=provision_log,
            lingering=lingering,
        )
        await self.write(end)
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

    def upstream_failed(self, exc: UpstreamError) -> None:
        """Count a call that failed for good, for rackwatch_upstream_errors_total."""
        self._store.count("upstream_errors", exc.service)

    def _progress(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.tally)


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
