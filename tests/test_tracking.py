"""Jobs followed with one search per poll interval, on the simulated lab over 127.0.0.1: the
fallback to reading results when the search fails, jobs cancelled by someone else, and the
listings and searches that cycles started together share."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any

from structlog.testing import capture_logs

from rackwatch.check import RackReport, run_cycle
from rackwatch.clients import connect
from rackwatch.model import ActiveJob, JobResult, Outcome
from rackwatch.simlab import Behaviour, Fault, FaultKind
from rackwatch.store import Store
from rackwatch.tracking import Coalesced, Once, Tracker, Watch
from tests.harness import FAST_RETRY, Harness, LabFactory, rack, until

SEARCH = "GET /v1/job/search"
RESULT = "GET /v1/result/{job_id}"


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def after_the_survey(harness: Harness, fault: Fault) -> asyncio.Task[list[RackReport]]:
    """A cycle started with `fault` injected once its first search (the survey's) was made."""
    # The survey's agents listing takes 0.3 s: time to inject it after the search beside it.
    harness.lab.inject(Fault(FaultKind.SLOW, "testflinger", path="/v1/agents/data", delay=0.3))
    cycle = asyncio.create_task(harness.cycle())
    await until(lambda: harness.lab.requests[SEARCH] == 1)
    harness.lab.inject(fault)
    return cycle


async def test_a_search_answering_500_falls_back_to_results_and_comes_back(
    served: LabFactory,
) -> None:
    """One search round fails for good: that round reads each job's result; said once, and
    once again when the search is back; every job passes."""
    harness = await served([rack("r1", *[Behaviour.PASS] * 4)], provision_seconds=1.0)
    with capture_logs() as logs:
        # Three 500s: one search round's three attempts (FAST_RETRY) fail.
        cycle = await after_the_survey(
            harness, Fault(FaultKind.SERVER_ERROR, "testflinger", path="/v1/job/search", times=3)
        )
        [report] = await cycle
    assert {c.outcome for c in report.checks} == {Outcome.PASSED}
    [failed] = events(logs, "tracking.search_failed")
    assert "answered 500" in str(failed["error"])
    assert len(events(logs, "tracking.search_restored")) == 1
    # The failed round read all 4 results, and each job's result was read once as it ended.
    assert harness.lab.requests[RESULT] == 4 + 4
    with Store.open(harness.state_file) as store:
        assert store.counters("upstream_errors")["testflinger"] == 1


async def test_a_search_answering_garbage_keeps_the_jobs_tracked_by_their_results(
    served: LabFactory,
) -> None:
    """A search whose answers are never JSON: every round reads the results; said once."""
    harness = await served([rack("r1", *[Behaviour.PASS] * 3)], provision_seconds=0.6)
    with capture_logs() as logs:
        cycle = await after_the_survey(
            harness,
            Fault(FaultKind.MALFORMED, "testflinger", path="/v1/job/search", times=None),
        )
        [report] = await cycle
    assert {c.outcome for c in report.checks} == {Outcome.PASSED}
    assert len(events(logs, "tracking.search_failed")) == 1
    assert events(logs, "tracking.search_restored") == []
    rounds = harness.lab.requests[SEARCH] - 1
    assert rounds >= 3
    assert harness.lab.requests[RESULT] == 3 * rounds


async def test_a_job_cancelled_while_provisioning_is_judged_when_it_completes(
    served: LabFactory,
) -> None:
    """Someone cancels a job mid-provision: it reads "cancelled", then "complete" with the
    provision status, which is what the check is judged by."""
    harness = await served([rack("r1", Behaviour.FAIL)], provision_seconds=1.0)
    cycle = asyncio.create_task(harness.cycle(check={"job_timeout": 10}))
    await until(lambda: len(harness.lab.submissions) == 1)
    job_id = str(harness.lab.submissions[0]["job_id"])
    await until(lambda: harness.lab.job_state(job_id) == "provision")
    assert harness.lab.cancel_job(job_id)
    [report] = await cycle
    [check] = report.checks
    assert (check.outcome, check.provision_status) == (Outcome.FAILED, 1)
    assert check.detail == "provisioning exited 1 (device connector error)"
    # Read while it read "cancelled" (one per round), until it read "complete".
    assert harness.lab.requests[RESULT] >= 2


async def test_a_job_cancelled_before_pickup_fails_at_once(served: LabFactory) -> None:
    """A job no agent took, cancelled by someone: never ran; no waiting for its timeout."""
    harness = await served([rack("r1", Behaviour.NEVER_PICKS_UP)])
    cycle = asyncio.create_task(harness.cycle(check={"job_timeout": 10}))
    await until(lambda: len(harness.lab.submissions) == 1)
    assert harness.lab.cancel_job(str(harness.lab.submissions[0]["job_id"]))
    [report] = await asyncio.wait_for(cycle, timeout=5)
    [check] = report.checks
    assert check.outcome is Outcome.FAILED
    assert check.detail == "provisioning never ran: the job was cancelled before it started"
    assert harness.lab.requests[RESULT] == 1


async def test_cycles_started_together_share_listings_searches_and_rounds(
    served: LabFactory,
) -> None:
    """Two racks' cycles at once over one watch, as the daemon runs them: one agents listing
    and one search for both, then one search per round for the jobs of both."""
    harness = await served(
        [rack("r1", *[Behaviour.PASS] * 5), rack("r2", *[Behaviour.PASS] * 5)],
        provision_seconds=1.0,
    )
    lab = harness.lab
    # The first listing and search take 0.2 s, so that the other cycle's come while in flight.
    lab.inject(Fault(FaultKind.SLOW, "testflinger", path="/v1/agents/data", delay=0.2))
    lab.inject(Fault(FaultKind.SLOW, "testflinger", path="/v1/job/search", delay=0.2))
    settings = harness.settings(check={"poll_interval": 0.2, "job_timeout": 10})
    loop = asyncio.get_running_loop()
    with Store.open(harness.state_file) as store:
        async with connect(settings, FAST_RETRY) as clients:
            watch = Watch(clients.testflinger)
            started = loop.time()
            reports = await asyncio.gather(
                *(
                    run_cycle(
                        settings,
                        [name],
                        store=store,
                        maas=clients.maas,
                        testflinger=clients.testflinger,
                        watch=watch,
                    )
                    for name in ("r1", "r2")
                )
            )
            took = loop.time() - started
    assert {c.outcome for [r] in reports for c in r.checks} == {Outcome.PASSED}
    assert lab.requests["GET /v1/agents/data"] == 1
    assert lab.requests[RESULT] == 10
    assert lab.requests[SEARCH] == 1 + watch.tracker.rounds
    assert watch.tracker.rounds <= took / 0.2 + 1


async def test_a_coalesced_call_is_shared_while_in_flight_and_made_anew_after() -> None:
    """Callers during a call get its answer, or its error; the next caller makes a new call."""
    calls = 0
    release = asyncio.Event()

    async def call() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        if calls == 2:
            raise ValueError("second call fails")
        return calls

    shared = Coalesced(call)
    first = [asyncio.create_task(shared()) for _ in range(3)]
    await asyncio.sleep(0)
    first[0].cancel()  # one caller gives up; the others still get the answer
    release.set()
    assert await asyncio.gather(*first[1:]) == [1, 1]
    second = [asyncio.create_task(shared()) for _ in range(2)]
    results = await asyncio.gather(*second, return_exceptions=True)
    assert [str(r) for r in results] == ["second call fails"] * 2
    assert (calls, shared.requests) == (2, 2)


async def test_a_call_made_once_answers_every_caller_then_or_later() -> None:
    """`Once` calls once: a caller that gives up leaves it running, and later callers get the
    same answer; cancelled with no caller left, it ends."""
    calls = 0
    release = asyncio.Event()

    async def call() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return calls

    once = Once(call)
    first = [asyncio.create_task(once()) for _ in range(2)]
    await asyncio.sleep(0)
    first[0].cancel()
    release.set()
    assert await first[1] == 1
    assert await once() == 1
    assert calls == 1

    never = Once(asyncio.Event().wait)
    waiting = asyncio.create_task(never())
    await asyncio.sleep(0)
    waiting.cancel()
    await never.cancel()
    assert never._task is not None and never._task.cancelled()


async def test_a_round_wakes_a_job_for_news_and_reads_what_the_search_misses() -> None:
    """A job the search lists in the state its tracking knows sleeps on; one in another state
    wakes with that state; one the search misses has its result read, whatever it says."""
    active = {"same": "provision", "moved": "provision"}
    results = {"ended": JobResult(job_id="ended", state="complete", provision_status=0)}
    reads: list[str] = []

    async def search() -> list[ActiveJob]:
        return [ActiveJob(job_id, state) for job_id, state in active.items()]

    async def result(job_id: str) -> JobResult | None:
        reads.append(job_id)
        return results.get(job_id)

    tracker = Tracker(result, search, poll_interval=timedelta(milliseconds=10))
    within = timedelta(seconds=5)
    same = asyncio.create_task(tracker.sighting("same", known="provision", within=within))
    moved = asyncio.create_task(tracker.sighting("moved", known="setup", within=within))
    ended = asyncio.create_task(tracker.sighting("ended", known="provision", within=within))
    unknown = asyncio.create_task(tracker.sighting("unknown", known="provision", within=within))

    assert await moved == JobResult(job_id="moved", state="provision")
    assert await ended == results["ended"]
    assert await unknown is None
    rounds = tracker.rounds
    await until(lambda: tracker.rounds >= rounds + 2)
    assert not same.done()  # nothing new for it, round after round
    assert sorted(reads) == ["ended", "unknown"]  # each read once, in the round that missed it

    active["same"] = "cleanup"
    assert await same == JobResult(job_id="same", state="cleanup")
    assert sorted(reads) == ["ended", "unknown"]
