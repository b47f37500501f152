"""Whole check cycles against the simulated lab: real HTTP on 127.0.0.1, a real SQLite file."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import pytest

from rackwatch.check import Checker, RackReport
from rackwatch.check_plan import CheckPlan
from rackwatch.clients import connect
from rackwatch.errors import StoreError
from rackwatch.model import Outcome
from rackwatch.provision_log import error_line
from rackwatch.simlab import DEFAULT_MAAS_API_KEY, Behaviour, Fault, FaultKind, SimMachine, SimRack
from rackwatch.store import Store
from tests.harness import FAST_RETRY, Harness, LabFactory, rack, until
from tests.stored import marks_as_computed

LOGIN = ("rackwatch-ci", "a-long-client-secret-0001")


def outcomes(report: RackReport) -> dict[str, Outcome | None]:
    return {check.agent: check.outcome for check in report.checks}


async def test_every_outcome_in_one_cycle(served: LabFactory) -> None:
    """Each agent behaviour of the lab ends with its own outcome, and nothing is left unfinished."""
    b = Behaviour
    harness = await served(
        [
            rack("r1", b.PASS, b.FAIL, b.RECOVERY_FAIL, b.NEVER_PICKS_UP, b.SLOW, b.OFFLINE),
            rack("r2", b.MAINTENANCE, b.BUSY, b.STALE, b.FAIL_STREAK, b.SHARED_QUEUE, None),
        ]
    )
    r1, r2 = await harness.cycle()

    assert outcomes(r1) == {
        "r1-m1": Outcome.PASSED,
        "r1-m2": Outcome.FAILED,
        "r1-m3": Outcome.FAILED,
        "r1-m4": Outcome.TIMED_OUT,
        "r1-m5": Outcome.TIMED_OUT,
        "r1-m6": Outcome.OFFLINE,
    }
    assert outcomes(r2) == {
        "r2-m1": Outcome.OFFLINE,
        "r2-m2": Outcome.BUSY,
        "r2-m3": Outcome.STALE,
        "r2-m4": Outcome.QUARANTINED,
        "r2-m5": Outcome.NO_QUEUE,
        "r2-m6": Outcome.NO_AGENT,
    }
    checks = {c.agent: c for c in r1.checks}
    assert checks["r1-m1"].provision_status == 0
    assert checks["r1-m2"].provision_status == 1
    assert "exited 1 (device connector error)" in checks["r1-m2"].detail
    assert checks["r1-m3"].provision_status == 46
    assert "recovery failed" in checks["r1-m3"].detail
    assert "cancelled" in checks["r1-m5"].detail
    # Both timed-out jobs were cancelled at Testflinger.
    timed_out = {checks["r1-m4"].job_id, checks["r1-m5"].job_id}
    assert timed_out <= set(harness.lab.cancelled)
    assert (r1.cycle.status, r2.cycle.status) == ("failures", "ok")
    with Store.open(harness.state_file) as store:
        assert store.unfinished() == []


async def test_failed_checks_keep_the_end_of_the_provision_output(served: LabFactory) -> None:
    """A failed job's check keeps its connector log's last lines, secrets scrubbed; a pass none."""
    b = Behaviour
    harness = await served([rack("r1", b.PASS, b.FAIL, b.RECOVERY_FAIL)])
    secret = DEFAULT_MAAS_API_KEY.rsplit(":", 1)[1]  # a configured secret, echoed by the job
    [report] = await harness.cycle(job={"provision_data": {"distro": secret}})
    checks = {c.agent: c for c in report.checks}
    assert checks["r1-m1"].provision_log is None
    failed, recovery = checks["r1-m2"].provision_log, checks["r1-m3"].provision_log
    assert failed is not None and recovery is not None
    assert (error_line(failed) or "").endswith(
        'ERROR: MAAS deployment of r1-m2 failed: status "Failed deployment"'
        " (curtin: grub-install failed)"
    )
    assert "ERROR: Device recovery failed: r1-m3" in (error_line(recovery) or "")
    assert failed.splitlines()[-1].endswith("INFO: Cleaning up: releasing node r1-m2")
    assert "TESTFLINGER SYSTEM RUN" not in failed  # the banner is dropped
    assert secret not in failed and "with distro ***" in failed


async def test_a_timed_out_job_says_how_far_it_got_before_its_cancel(served: LabFactory) -> None:
    """A job no agent took was cancelled before pickup; one still in setup before provisioning."""
    b = Behaviour
    # Pickup and setup take 0.7 s each: at the 1 s timeout, r1-m2's job is in setup.
    harness = await served([rack("r1", b.NEVER_PICKS_UP, b.PASS)], pickup_seconds=0.7)
    [report] = await harness.cycle(check={"job_timeout": 1})
    checks = {c.agent: c for c in report.checks}
    assert outcomes(report) == {"r1-m1": Outcome.TIMED_OUT, "r1-m2": Outcome.TIMED_OUT}
    assert checks["r1-m1"].detail == "not ended within 1s; cancelled before an agent picked it up"
    assert (
        checks["r1-m2"].detail == "not ended within 1s; cancelled before its provisioning started"
    )
    assert (checks["r1-m1"].provision_log, checks["r1-m2"].provision_log) == (None, None)


async def test_jobs_go_to_the_agents_own_queue_with_the_template(served: LabFactory) -> None:
    """The submitted job is the [job] template plus job_queue and the job_id rackwatch chose."""
    harness = await served([rack("r1", Behaviour.PASS)])
    [report] = await harness.cycle(job={"provision_data": {"distro": "jammy"}, "tags": ["rw"]})
    [job] = harness.lab.submissions
    check = report.checks[0]
    with Store.open(harness.state_file) as store:
        identity = store.identity()
    assert job == {
        "provision_data": {"distro": "jammy"},
        "tags": ["rw", "rackwatch", f"rackwatch-{identity}"],
        "job_queue": "r1-m1",
        "job_id": check.job_id,
    }
    assert check.outcome is Outcome.PASSED


async def test_all_racks_share_one_agents_listing(served: LabFactory) -> None:
    """One agents listing per cycle, however many racks and agents, and no agent read alone;
    one result read per job."""
    harness = await served([rack("r1", *[Behaviour.PASS] * 3), rack("r2", *[Behaviour.PASS] * 3)])
    await harness.cycle()
    requests = harness.lab.requests
    assert requests["GET /v1/agents/data"] == 1
    assert requests["GET /v1/agents/data/{agent_name}"] == 0
    assert requests["POST /v1/job"] == 6
    assert requests["GET /v1/result/{job_id}"] == 6


async def test_a_rack_listed_goes_on_while_maas_lists_the_others(served: LabFactory) -> None:
    """A rack's jobs go out once MAAS has listed it, while MAAS is still listing another rack."""
    harness = await served([rack("r1", Behaviour.PASS), rack("r2", Behaviour.PASS)])
    lab = harness.lab
    lab.inject(Fault(FaultKind.SLOW, "maas", path="/MAAS/api/2.0/machines/", times=1, delay=60))
    cycle = asyncio.create_task(harness.cycle())
    await until(lambda: lab.requests["POST /v1/job"] == 1)  # long before the slow listing ends
    assert not cycle.done()
    assert lab.requests["GET /v1/agents/data"] == 1
    cycle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cycle


async def test_the_marks_kept_with_each_check_are_those_its_checks_give(
    served: LabFactory,
) -> None:
    """Each agent's marks, kept current check by check, equal the marks computed anew from its
    checks: after cycles of passes, failures and skips, and while a cycle's jobs are in flight."""
    harness = await served(
        [rack("r1", Behaviour.PASS, Behaviour.FAIL, Behaviour.OFFLINE, Behaviour.STALE)]
    )
    for _ in range(2):
        await harness.cycle()
        assert len(marks_as_computed(harness.state_file)) == 4
    # The next cycle's jobs stay in flight: no result is answered.
    harness.lab.inject(Fault(FaultKind.SLOW, "testflinger", path="/v1/result/", delay=60))
    cycle = asyncio.create_task(harness.cycle())
    await until(lambda: harness.lab.requests["POST /v1/job"] == 6)
    assert len(marks_as_computed(harness.state_file)) == 4
    cycle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cycle


async def test_one_search_per_poll_interval_however_many_jobs(served: LabFactory) -> None:
    """Forty jobs of 1 s polled every 0.2 s: one search per interval for them all, and each
    job's result read once, when it left the active set."""
    harness = await served(
        [rack("r1", *[Behaviour.PASS] * 20), rack("r2", *[Behaviour.PASS] * 20)],
        provision_seconds=1.0,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    reports = await harness.cycle(check={"poll_interval": 0.2, "job_timeout": 10})
    took = loop.time() - started
    assert {c.outcome for r in reports for c in r.checks} == {Outcome.PASSED}
    requests = harness.lab.requests
    # The survey's search, then at most one per 0.2 s while jobs were in flight.
    assert 1 + 4 <= requests["GET /v1/job/search"] <= 1 + took / 0.2 + 1
    assert requests["GET /v1/result/{job_id}"] == 40
    assert requests["POST /v1/job"] == 40


async def test_a_cycle_takes_about_one_jobs_time_not_the_sum(served: LabFactory) -> None:
    """Agents are exercised together: ten jobs of 0.3 s all run at the same time."""
    harness = await served([rack("r1", *[Behaviour.PASS] * 10)])
    [report] = await harness.cycle()
    assert all(c.outcome is Outcome.PASSED for c in report.checks)
    submitted = [c.submitted_at for c in report.checks if c.submitted_at]
    finished = [c.finished_at for c in report.checks if c.finished_at]
    assert len(submitted) == 10
    # Every job was submitted before any of them finished.
    assert max(submitted) < min(finished)


async def test_login_on(served: LabFactory) -> None:
    """With a client id, rackwatch logs in once and checks as usual."""
    harness = await served([rack("r1", Behaviour.PASS, Behaviour.FAIL)], testflinger_login=LOGIN)
    [report] = await harness.cycle(testflinger={"client_id": LOGIN[0], "secret": LOGIN[1]})
    assert outcomes(report) == {"r1-m1": Outcome.PASSED, "r1-m2": Outcome.FAILED}
    assert harness.lab.logins == 1


async def test_an_expired_token_is_renewed_mid_cycle(served: LabFactory) -> None:
    """Tokens that expire while jobs run are replaced, and the cycle carries on."""
    harness = await served(
        [rack("r1", Behaviour.PASS)], testflinger_login=LOGIN, token_lifetime=0.2
    )
    [report] = await harness.cycle(testflinger={"client_id": LOGIN[0], "secret": LOGIN[1]})
    assert outcomes(report) == {"r1-m1": Outcome.PASSED}
    assert harness.lab.logins >= 2


async def test_without_login_a_locked_down_server_is_a_rack_error(served: LabFactory) -> None:
    """A server that requires login refuses the agents listing: the rack is an error."""
    harness = await served([rack("r1", Behaviour.PASS)], testflinger_login=LOGIN)
    [report] = await harness.cycle()
    assert report.cycle.status == "error"
    assert report.cycle.error is not None and "refused the credentials (401)" in report.cycle.error
    assert harness.lab.submissions == []


async def test_an_unknown_rack_next_to_a_good_one(served: LabFactory) -> None:
    """A rack whose tag MAAS does not know is a rack error; the other rack is checked."""
    harness = await served([rack("good", Behaviour.PASS)])
    good, unknown = await harness.cycle(["good", "no-such-rack"])
    assert good.cycle.status == "ok"
    assert outcomes(good) == {"good-m1": Outcome.PASSED}
    assert unknown.cycle.status == "error"
    assert unknown.cycle.error is not None and "unknown rack 'no-such-rack'" in unknown.cycle.error
    assert unknown.checks == []


async def test_faults_on_every_route_still_end_every_agent(served: LabFactory) -> None:
    """Transient faults are retried; whatever happens, every agent ends with a final outcome."""
    harness = await served([rack("r1", *[Behaviour.PASS] * 6)])
    lab = harness.lab
    lab.inject(Fault(FaultKind.UNAVAILABLE, "maas", retry_after=0.01))
    lab.inject(Fault(FaultKind.SERVER_ERROR, "testflinger", path="/v1/agents/data", method="GET"))
    lab.inject(Fault(FaultKind.UNAVAILABLE, "testflinger", path="/v1/job", method="POST", times=2))
    lab.inject(Fault(FaultKind.MALFORMED, "testflinger", path="/v1/result/", times=3))
    lab.inject(Fault(FaultKind.SLOW, "testflinger", path="/v1/result/", times=2, delay=0.5))
    lab.inject(Fault(FaultKind.SLOW, "testflinger", path="/v1/job/search", times=2, delay=0.5))
    [report] = await harness.cycle(testflinger={"timeout": 0.2})

    final = outcomes(report)
    assert None not in final.values()
    # Malformed answers are not retried, so up to three agents may end in error; none hangs.
    assert set(final.values()) <= {Outcome.PASSED, Outcome.ERROR}
    assert list(final.values()).count(Outcome.PASSED) >= 2
    with Store.open(harness.state_file) as store:
        assert store.unfinished() == []
        # Each call that failed for good is counted, for rackwatch_upstream_errors_total.
        assert store.counters("upstream_errors").get("testflinger", 0) >= 1


async def test_results_unreadable_until_the_deadline_is_an_error(served: LabFactory) -> None:
    """A job whose result cannot be read for its whole time is an error, not a machine failure."""
    harness = await served([rack("r1", Behaviour.PASS)])
    harness.lab.inject(Fault(FaultKind.UNAVAILABLE, "testflinger", path="/v1/result/", times=None))
    [report] = await harness.cycle(check={"job_timeout": 0.5})
    [check] = report.checks
    assert check.outcome is Outcome.ERROR
    assert "no result readable for" in check.detail and "answered 503" in check.detail


async def test_dry_run_submits_nothing(served: LabFactory) -> None:
    """--dry-run reports 'ready' where a job would go, and submits nothing."""
    harness = await served([rack("r1", Behaviour.PASS, Behaviour.OFFLINE)])
    [report] = await harness.cycle(dry_run=True)
    assert outcomes(report) == {"r1-m1": Outcome.READY, "r1-m2": Outcome.OFFLINE}
    assert "queue r1-m1" in report.checks[0].detail or "queue r1-m1" in report.checks[1].detail
    assert harness.lab.submissions == []


async def test_location_limits_the_agents(served: LabFactory) -> None:
    """With testflinger.location, an agent elsewhere does not count as the machine's agent."""
    racks = [
        SimRack("r1", [SimMachine("r1-m1")], location="TOR3 row 1"),
        SimRack("r2", [SimMachine("r2-m1")], location="TOR4 row 2"),
    ]
    harness = await served(racks)
    here, there = await harness.cycle(testflinger={"location": "tor3"})
    assert outcomes(here) == {"r1-m1": Outcome.PASSED}
    assert outcomes(there) == {"r2-m1": Outcome.NO_AGENT}


async def test_a_recorded_but_unsent_job_is_submitted_once_under_its_id(
    served: LabFactory,
) -> None:
    """A run that died after recording the job id but before the POST: the id is posted now."""
    harness = await served([rack("r1", Behaviour.PASS, Behaviour.PASS)])
    cycle = record_unsent(harness, "0b7f5a52-43a5-4c7e-9b5d-1b8c1d3c0a11")
    [report] = await harness.cycle()
    assert outcomes(report) == {"r1-m1": Outcome.PASSED, "r1-m2": Outcome.PASSED}
    assert [j["job_id"] for j in harness.lab.submissions_for("r1-m1")] == [
        "0b7f5a52-43a5-4c7e-9b5d-1b8c1d3c0a11"
    ]
    with Store.open(harness.state_file) as store:
        assert store.cycle(cycle).status == "interrupted"


async def test_a_job_testflinger_knows_is_tracked_not_resubmitted(served: LabFactory) -> None:
    """A run that died after the POST: the job is tracked on and never posted again."""
    harness = await served([rack("r1", Behaviour.FAIL)])
    job_id = "9f1d2c3b-4a5e-4f60-8a7b-6c5d4e3f2a10"
    harness.lab.submit_job({"job_queue": "r1-m1", "provision_data": {"distro": "noble"}}, job_id)
    record_unsent(harness, job_id)
    [report] = await harness.cycle()
    [check] = report.checks
    assert (check.job_id, check.outcome, check.provision_status) == (job_id, Outcome.FAILED, 1)
    assert len(harness.lab.submissions) == 1


def _now() -> datetime:
    return datetime.now(UTC)


def record_unsent(harness: Harness, job_id: str) -> int:
    """Record r1-m1's job as a run that died before its POST was answered leaves it; its cycle."""
    with Store.open(harness.state_file) as store:
        cycle = store.start_cycle("r1", _now())
        store.begin_job(
            cycle,
            rack="r1",
            agent="r1-m1",
            machine="r1-m1",
            queue="r1-m1",
            job_id=job_id,
            at=_now(),
        )
    return cycle


def untracked(harness: Harness) -> list[str]:
    """Job ids the lab stored that the state file does not know, or knows without an outcome."""
    with Store.open(harness.state_file) as store:
        ids = {str(body["job_id"]) for body in harness.lab.submissions}
        known = store.checks_of_jobs(ids)
    return sorted(i for i in ids if i not in known or known[i].outcome is None)


async def test_a_post_stored_after_the_client_gave_up_is_tracked_not_resent(
    served: LabFactory,
) -> None:
    """POSTs answered after 4 s with a 1.5 s timeout: each job is looked up, found and passes."""
    harness = await served([rack("r1", *[Behaviour.PASS] * 8)])
    harness.lab.inject(
        Fault(FaultKind.LATE, "testflinger", path="/v1/job", method="POST", times=None, delay=4.0)
    )
    [report] = await harness.cycle(
        testflinger={"timeout": 1.5}, check={"job_timeout": 10, "submit_grace": 8}
    )
    assert set(outcomes(report).values()) == {Outcome.PASSED}
    for agent in harness.lab.agents:
        [body] = harness.lab.submissions_for(agent)
        assert len(harness.lab.jobs(str(body["job_id"]))) == 1
    assert harness.lab.requests["POST /v1/job"] == 8
    assert untracked(harness) == []


async def test_a_post_that_never_arrives_is_sent_again_after_the_grace(
    served: LabFactory,
) -> None:
    """A POST lost without an answer is looked for, then sent once more under the same id."""
    harness = await served([rack("r1", Behaviour.PASS)])
    # A 500 may come after the job was stored: it is not retried; here it was not stored.
    harness.lab.inject(Fault(FaultKind.SERVER_ERROR, "testflinger", path="/v1/job", method="POST"))
    [report] = await harness.cycle()
    [check] = report.checks
    assert check.outcome is Outcome.PASSED
    assert [body["job_id"] for body in harness.lab.submissions] == [check.job_id]
    assert harness.lab.requests["POST /v1/job"] == 2


async def test_an_unsent_job_whose_post_is_still_on_its_way_is_not_posted_again(
    served: LabFactory,
) -> None:
    """After a crash mid-POST, the job that arrives within the grace is tracked, never resent."""
    harness = await served([rack("r1", Behaviour.PASS)])
    job_id = "4c0ffee0-43a5-4c7e-9b5d-1b8c1d3c0a11"
    record_unsent(harness, job_id)
    body = {"job_queue": "r1-m1", "job_id": job_id, "provision_data": {"distro": "noble"}}
    arrival = asyncio.get_running_loop().call_later(1.0, harness.lab.submit_job, body, job_id)
    try:
        [report] = await harness.cycle(check={"submit_grace": 3, "job_timeout": 4})
    finally:
        arrival.cancel()
    [check] = report.checks
    assert (check.job_id, check.outcome) == (job_id, Outcome.PASSED)
    assert harness.lab.requests["POST /v1/job"] == 0
    assert len(harness.lab.jobs(job_id)) == 1


async def test_a_failing_cancel_puts_no_second_job_on_a_queue(served: LabFactory) -> None:
    """Cancels fail: the next cycle adds no job to either queue and reports both timed out."""
    harness = await served([rack("r1", Behaviour.NEVER_PICKS_UP, Behaviour.SLOW)], slow_factor=20.0)
    harness.lab.inject(Fault(FaultKind.SERVER_ERROR, "testflinger", path="/action", times=None))
    [first] = await harness.cycle(check={"job_timeout": 1.0})
    assert outcomes(first) == {"r1-m1": Outcome.TIMED_OUT, "r1-m2": Outcome.TIMED_OUT}
    assert all("cancelling it failed" in c.detail for c in first.checks)
    earlier = {c.agent: c.job_id for c in first.checks}

    [second] = await harness.cycle(check={"job_timeout": 1.0})
    assert outcomes(second) == {"r1-m1": Outcome.TIMED_OUT, "r1-m2": Outcome.TIMED_OUT}
    details = {c.agent: c.detail for c in second.checks}
    assert f"rackwatch's job {earlier['r1-m1']} is still waiting on queue r1-m1" in details["r1-m1"]
    assert f"still running rackwatch's job {earlier['r1-m2']} (provision)" in details["r1-m2"]
    assert all(c.job_id is None for c in second.checks)
    for queue in ("r1-m1", "r1-m2"):
        assert len(harness.lab.submissions_for(queue)) == 1
    # The cancel of the job still waiting was retried.
    assert harness.lab.requests["POST /v1/job/{job_id}/action"] >= 3


async def test_a_timed_out_job_that_ends_later_gets_its_late_result(served: LabFactory) -> None:
    """A provisioning that ran past its timeout is followed up: its end is written on its check."""
    harness = await served([rack("r1", Behaviour.SLOW)], slow_factor=4.0)  # 1.2 s provisioning
    [first] = await harness.cycle(check={"job_timeout": 0.5})
    [timed_out] = first.checks
    assert timed_out.outcome is Outcome.TIMED_OUT
    assert timed_out.job_id is not None
    harness.lab.set_behaviour("r1-m1", Behaviour.PASS)
    await until(lambda: harness.lab.job_state(str(timed_out.job_id)) == "complete")

    [second] = await harness.cycle(check={"job_timeout": 0.5})
    assert outcomes(second) == {"r1-m1": Outcome.PASSED}
    with Store.open(harness.state_file) as store:
        [_, earlier] = store.history("r1-m1")
    assert earlier.id == timed_out.id and earlier.outcome is Outcome.TIMED_OUT
    assert earlier.late_result is not None
    assert earlier.late_result.startswith("seen ended ")
    assert earlier.late_result.endswith("after its timeout, provision_status 0")


async def test_a_job_of_another_state_file_is_reported_not_doubled(served: LabFactory) -> None:
    """A rackwatch job the state file does not know (a lost file's) keeps its queue: busy."""
    harness = await served([rack("r1", Behaviour.NEVER_PICKS_UP, Behaviour.PASS)])
    foreign = harness.lab.submit_job(
        {"job_queue": "r1-m1", "tags": ["rackwatch", "rackwatch-0a1b2c3d4e5f"]}
    )
    [report] = await harness.cycle()
    assert outcomes(report) == {"r1-m1": Outcome.BUSY, "r1-m2": Outcome.PASSED}
    [busy] = [c for c in report.checks if c.agent == "r1-m1"]
    assert busy.detail == (
        f"queue r1-m1 holds rackwatch job {foreign} of state file rackwatch-0a1b2c3d4e5f (waiting)"
    )
    assert harness.lab.submissions_for("r1-m1") == [
        {"job_queue": "r1-m1", "tags": ["rackwatch", "rackwatch-0a1b2c3d4e5f"]}
    ]


async def test_short_lived_tokens_and_failing_reads_still_pass(served: LabFactory) -> None:
    """Tokens living 2 s and 40 % of result reads answered 500: every agent passes."""
    harness = await served(
        [rack("r1", *[Behaviour.PASS] * 6)],
        testflinger_login=LOGIN,
        token_lifetime=2.0,
        provision_seconds=3.0,
    )
    harness.lab.inject(
        Fault(FaultKind.SERVER_ERROR, "testflinger", path="/v1/result/", times=None, ratio=0.4)
    )
    [report] = await harness.cycle(
        testflinger={"client_id": LOGIN[0], "secret": LOGIN[1]}, check={"job_timeout": 10}
    )
    assert set(outcomes(report).values()) == {Outcome.PASSED}
    assert harness.lab.logins >= 2


async def test_a_crashed_cycle_leaves_no_check_running(served: LabFactory) -> None:
    """A state file failing mid-cycle ends the cycle with its error, and every check task with it."""
    harness = await served([rack("r1", *[Behaviour.PASS] * 3)], provision_seconds=1.0)
    settings = harness.settings()
    with Store.open(harness.state_file) as store:
        async with connect(settings, FAST_RETRY) as clients:
            checker = Checker(
                maas=clients.maas,
                testflinger=clients.testflinger,
                store=store,
                plan=CheckPlan.from_settings(settings),
            )
            cycle = asyncio.create_task(checker.run(["r1"]))
            await until(lambda: len(harness.lab.submissions) == 3)
            store.close()  # every later read and write fails
            with pytest.raises(StoreError):
                await cycle
            left = [
                task
                for task in asyncio.all_tasks()
                if "Checker" in task.get_coro().__qualname__  # type: ignore[union-attr]
            ]
            assert left == []


ODD_NAME = "a?b#c%2Fd\te\nf"


async def test_an_agent_whose_name_needs_escaping_is_checked_and_passes(
    served: LabFactory,
) -> None:
    """A name with "?", "#", "%2F", a tab and a newline is re-read, gets its job, and passes."""
    harness = await served([SimRack("r1", [SimMachine(ODD_NAME), SimMachine("r1-m2")])])
    [report] = await harness.cycle()
    assert outcomes(report) == {ODD_NAME: Outcome.PASSED, "r1-m2": Outcome.PASSED}
    assert [body["job_queue"] for body in harness.lab.submissions_for(ODD_NAME)] == [ODD_NAME]


async def test_an_agent_name_testflinger_cannot_serve_is_said_so_not_gone(
    served: LabFactory,
) -> None:
    """A listed agent named with a "/" is an error saying so, not "the agent disappeared"."""
    name = "a/b?c#d%2F"
    harness = await served([SimRack("r1", [SimMachine(name), SimMachine("r1-m2")])])
    [report] = await harness.cycle()
    checks = {check.agent: check for check in report.checks}
    assert outcomes(report) == {name: Outcome.ERROR, "r1-m2": Outcome.PASSED}
    assert checks[name].detail == (
        "'a/b?c#d%2F' is an agent name Testflinger cannot serve"
        " (the name holds a '/', which ends a URL segment)"
    )
    assert harness.lab.submissions_for(name) == []
    with Store.open(harness.state_file) as store:
        assert name not in store.health()  # an error changes no health
        assert store.pending_alerts() == []  # and is no drift to announce


def two_rack_lab() -> list[SimRack]:
    """Racks r1 and r2, and machine "both" tagged with each."""
    return [
        SimRack("r1", [SimMachine("r1-m1"), SimMachine("both", tags=("r2",))]),
        SimRack("r2", [SimMachine("r2-m1")]),
    ]


async def test_a_machine_in_two_racks_checked_together_gets_one_job(served: LabFactory) -> None:
    """One rack checks the machine; the other reports it busy, naming that rack."""
    harness = await served(two_rack_lab())
    reports = await harness.cycle()
    both = {report.rack: next(c for c in report.checks if c.agent == "both") for report in reports}
    [checked] = [rack for rack, check in both.items() if check.outcome is Outcome.PASSED]
    [other] = [rack for rack in both if rack != checked]
    assert both[other].outcome is Outcome.BUSY
    assert both[other].detail == f"in rack {checked} too, whose cycle checks it in this run"
    assert both[other].job_id is None
    assert len(harness.lab.submissions_for("both")) == 1
    assert {report.cycle.status for report in reports} == {"ok"}


async def test_a_machine_in_two_racks_checked_in_turn_passes_in_each(served: LabFactory) -> None:
    """Rack by rack, each cycle finds no job of the other in flight and checks the machine."""
    harness = await served(two_rack_lab())
    [r1] = await harness.cycle(["r1"])
    [r2] = await harness.cycle(["r2"])
    assert outcomes(r1) == {"r1-m1": Outcome.PASSED, "both": Outcome.PASSED}
    assert outcomes(r2) == {"both": Outcome.PASSED, "r2-m1": Outcome.PASSED}
    assert len(harness.lab.submissions_for("both")) == 2


def begin_other_racks_job(harness: Harness, rack: str, agent: str) -> str:
    """Record an unfinished job of `agent` in a cycle of `rack`, as another rackwatch would."""
    job_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with Store.open(harness.state_file) as store:
        cycle_id = store.start_cycle(rack, now)
        store.begin_job(
            cycle_id, rack=rack, agent=agent, machine=agent, queue=agent, job_id=job_id, at=now
        )
    return job_id


async def test_a_machine_whose_other_rack_has_a_job_in_flight_is_busy(served: LabFactory) -> None:
    """Another process's unfinished job of r1 on the machine makes r2's check busy, naming it."""
    harness = await served(two_rack_lab())
    job_id = begin_other_racks_job(harness, "r1", "both")
    [r2] = await harness.cycle(["r2"])
    [check] = [c for c in r2.checks if c.agent == "both"]
    assert (check.outcome, check.detail) == (
        Outcome.BUSY,
        f"in rack r1 too, whose cycle has rackwatch job {job_id} in flight",
    )
    assert harness.lab.submissions_for("both") == []


async def test_a_job_another_rack_begins_meanwhile_makes_the_check_busy(
    served: LabFactory,
) -> None:
    """The state file's one unfinished job per agent, taken while r2 re-reads it: busy, no error."""
    harness = await served(two_rack_lab())
    lab = harness.lab
    # The agents listing takes 0.5 s: the other rack's job begins meanwhile.
    lab.inject(Fault(FaultKind.SLOW, "testflinger", path="/v1/agents/data", delay=0.5))
    cycle = asyncio.create_task(harness.cycle(["r2"]))
    await until(lambda: lab.requests["GET /v1/agents/data"] == 1)
    job_id = begin_other_racks_job(harness, "r1", "both")
    [r2] = await cycle
    [check] = [c for c in r2.checks if c.agent == "both"]
    assert (check.outcome, check.detail) == (
        Outcome.BUSY,
        f"in rack r1 too, whose cycle has rackwatch job {job_id} in flight",
    )
    assert outcomes(r2)["r2-m1"] is Outcome.PASSED
    assert harness.lab.submissions_for("both") == []


def assert_checked_in_one_busy_in_the_other(reports: Iterable[list[RackReport]]) -> None:
    """The machine "both" passed in one rack's cycle and is busy in the other's, naming it."""
    both = {r.rack: next(c for c in r.checks if c.agent == "both") for [r] in reports}
    [checked] = [rack for rack, check in both.items() if check.outcome is Outcome.PASSED]
    [other] = [rack for rack in both if rack != checked]
    assert (both[other].outcome, both[other].detail) == (
        Outcome.BUSY,
        f"in rack {checked} too, whose cycle has rackwatch job {both[checked].job_id} in flight",
    )


async def test_a_machine_in_two_racks_of_concurrent_cycles_gets_one_job(
    served: LabFactory,
) -> None:
    """Two cycles at once, one per rack (as the daemon runs them): one job, busy in the other."""
    harness = await served(two_rack_lab())
    reports = await asyncio.gather(harness.cycle(["r1"]), harness.cycle(["r2"]))
    assert_checked_in_one_busy_in_the_other(reports)
    assert len(harness.lab.submissions_for("both")) == 1


async def test_a_machine_whose_other_racks_job_started_meanwhile_is_busy_naming_it(
    served: LabFactory,
) -> None:
    """A re-read that finds the agent running the other rack's new job names that rack."""
    harness = await served(two_rack_lab())
    # The first cycle to list the agents hears back only once the other's job has started.
    harness.lab.inject(Fault(FaultKind.SLOW, "testflinger", path="/v1/agents/data", delay=0.3))
    reports = await asyncio.gather(harness.cycle(["r1"]), harness.cycle(["r2"]))
    assert_checked_in_one_busy_in_the_other(reports)
