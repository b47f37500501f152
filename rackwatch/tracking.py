"""What a process's check cycles read of one Testflinger together, in as few requests as can be.

`Coalesced` lets many callers share one request: while a call is in flight, every caller that
asks gets its answer, and the next caller after it starts a new one. The daemon's racks that
fire at the same moment so share one agents listing and one job search. `Once` is made once
for all who ever ask: the racks of one run share one survey so.

`Tracker` follows every rackwatch job in flight of the process with one search per poll
interval (GET /v1/job/search?tags=rackwatch&state=active), however many racks and jobs: a job
that the search lists is still active, in the state it gives; only a job that left the active
set has its result read (GET /v1/result/<id>), so each job's result is read once when it ends,
and a job's tracking wakes only when its state changes, however many rounds pass meanwhile.
A job that a search cannot see (one cancelled while its agent still provisions, which ends
"complete" later) has its result read each round instead. When the search fails (an error, or
an answer that is not a list of jobs), that round reads every job's result, as the jobs were
tracked before there was a search; it says so once, and once again when the search is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Generic, Protocol, TypeVar

import structlog

from rackwatch.errors import UpstreamError
from rackwatch.model import ActiveJob, Agent, JobResult

log = structlog.get_logger("rackwatch.check")

# Every rackwatch job carries this tag, and "rackwatch-<the state file's identity>".
JOB_TAG = "rackwatch"

T = TypeVar("T")


class Reads(Protocol):
    """The reads of Testflinger that cycles share."""

    async def agents(self) -> list[Agent]: ...
    async def active_jobs(self, tag: str) -> list[ActiveJob]: ...
    async def result(self, job_id: str) -> JobResult | None: ...


class Coalesced(Generic[T]):
    """A call with at most one in flight: whoever calls while it runs gets its answer (or error).

    A caller that is cancelled leaves the call running for the others.
    """

    def __init__(self, call: Callable[[], Awaitable[T]]) -> None:
        self._call = call
        self._pending: asyncio.Future[T] | None = None
        self.requests = 0  # calls made, however many callers shared each

    async def __call__(self) -> T:
        if self._pending is None:
            self.requests += 1
            pending = asyncio.ensure_future(self._call())
            self._pending = pending
            pending.add_done_callback(self._done)
        return await asyncio.shield(self._pending)

    def _done(self, pending: asyncio.Future[T]) -> None:
        self._pending = None
        if not pending.cancelled():
            pending.exception()  # retrieved, so that no caller left is no warning


class Once(Generic[T]):
    """A call made once, when first awaited: every caller, then or later, gets its answer (or
    error). A caller that is cancelled leaves the call running for the others."""

    def __init__(self, call: Callable[[], Awaitable[T]]) -> None:
        self._call = call
        self._task: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        if self._task is None:
            self._task = asyncio.ensure_future(self._call())
        return await asyncio.shield(self._task)

    async def cancel(self) -> None:
        """Cancel the call if it still runs (its callers are gone), and wait for it to end."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Tracker:
    """Tells each job in flight what became of it, round by round: one search per round."""

    def __init__(
        self,
        result: Callable[[str], Awaitable[JobResult | None]],
        active_jobs: Callable[[], Awaitable[list[ActiveJob]]],
        *,
        poll_interval: timedelta,
        on_error: Callable[[UpstreamError], None] = lambda exc: None,
    ) -> None:
        """`on_error` hears of each search that failed for good (the round then reads results)."""
        self._result = result
        self._active_jobs = active_jobs
        self.poll_interval = poll_interval
        self._on_error = on_error
        self._tracked: dict[str, int] = {}  # job id -> how many of its watchers are tracking it
        self._waiting: dict[str, list[_Waiter]] = {}
        self._rounds: asyncio.Task[None] | None = None
        self._search_error: str | None = None  # why the search last failed, while it fails
        self.rounds = 0

    async def sighting(
        self, job_id: str, *, known: str | None = None, within: timedelta
    ) -> JobResult | None:
        """What a round says of the job once it says something new: a state other than `known`
        while the job is active, else its result (read only then).

        When no round does `within` that time, the job's result is read there and then. None
        when Testflinger does not know the job. Raises the UpstreamError of a failed read.
        """
        waiter = _Waiter(asyncio.get_running_loop().create_future(), known)
        self._waiting.setdefault(job_id, []).append(waiter)
        self._tracked[job_id] = self._tracked.get(job_id, 0) + 1
        if self._rounds is None:
            self._rounds = asyncio.create_task(self._run(), name="tracker rounds")
        try:
            async with asyncio.timeout(max(0.0, within.total_seconds())):
                return await waiter.future
        except TimeoutError:
            return await self._result(job_id)
        finally:
            self._forget(job_id, waiter)

    def _forget(self, job_id: str, waiter: _Waiter) -> None:
        waiter.future.cancel()  # a round that still holds it passes it by
        waiters = self._waiting.get(job_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiting[job_id]
        self._tracked[job_id] -= 1
        if not self._tracked[job_id]:
            del self._tracked[job_id]
        if not self._tracked and self._rounds is not None:
            self._rounds.cancel()  # nothing in flight: no more rounds until a job comes
            self._rounds = None

    async def _run(self) -> None:
        """A round every poll interval, counted from the start of the one before."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.poll_interval.total_seconds()
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = loop.time() + self.poll_interval.total_seconds()
            waiting, self._waiting = self._waiting, {}
            if waiting:
                await self._round(waiting)

    async def _round(self, waiting: dict[str, list[_Waiter]]) -> None:
        """Tell the waiting jobs what the search (or, failing it, their results) says anew;
        the others wait on for the next round."""
        self.rounds += 1
        try:
            active = await self._search()
            unseen = [job_id for job_id in waiting if active is None or job_id not in active]
            reads = await asyncio.gather(
                *(self._result(job_id) for job_id in unseen), return_exceptions=True
            )
        except Exception as exc:
            for waiter in (w for waiters in waiting.values() for w in waiters):
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
            return
        answers: dict[str, JobResult | BaseException | None] = dict(zip(unseen, reads, strict=True))
        for job_id, waiters in waiting.items():
            if job_id in answers:
                answer = answers[job_id]
                state = answer.state if isinstance(answer, JobResult) else None
            else:  # active, in the state the search gives: its result is made only if it is news
                assert active is not None
                answer, state = None, active[job_id]
            for waiter in waiters:
                if waiter.future.done():
                    continue
                if state is not None and state == waiter.known:
                    self._waiting.setdefault(job_id, []).append(waiter)  # nothing new
                elif isinstance(answer, BaseException):
                    waiter.future.set_exception(answer)
                else:
                    if answer is None and state is not None:
                        answer = JobResult(job_id=job_id, state=state)
                    waiter.future.set_result(answer)

    async def _search(self) -> dict[str, str] | None:
        """The active rackwatch jobs' states by id; None when the search failed, said once per
        change."""
        try:
            jobs = await self._active_jobs()
        except UpstreamError as exc:
            self._on_error(exc)
            if self._search_error is None:
                log.warning("tracking.search_failed", error=str(exc), fallback="job results")
            self._search_error = str(exc)
            return None
        if self._search_error is not None:
            log.info("tracking.search_restored")
            self._search_error = None
        return {job.job_id: job.state for job in jobs}


@dataclass(eq=False, slots=True)
class _Waiter:
    """A job's tracking waiting for news: `known` is the state it was last told."""

    future: asyncio.Future[JobResult | None]
    known: str | None


class Watch:
    """One Testflinger as a process's cycles read it together: the agents listing and the job
    search, each one request in flight for all who ask, and the tracker of every job in flight.
    """

    def __init__(
        self,
        testflinger: Reads,
        *,
        poll_interval: timedelta = timedelta(seconds=60),
        on_error: Callable[[UpstreamError], None] = lambda exc: None,
    ) -> None:
        self.agents = Coalesced(testflinger.agents)
        self.active_jobs = Coalesced(partial(testflinger.active_jobs, JOB_TAG))
        self.tracker = Tracker(
            testflinger.result, self.active_jobs, poll_interval=poll_interval, on_error=on_error
        )
