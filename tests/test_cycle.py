"""Whole check cycles against the simulated lab: real HTTP on 127.0.0.1, a real SQLite file."""

from __future__ import annotations

from datetime import UTC, datetime

from rackwatch.check import RackReport
from rackwatch.model import Outcome
from rackwatch.simlab import Behaviour, Fault, FaultKind, SimMachine, SimRack
from rackwatch.store import Store
from tests.harness import LabFactory, rack

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


async def test_jobs_go_to_the_agents_own_queue_with_the_template(served: LabFactory) -> None:
    """The submitted job is the [job] template plus job_queue and the job_id rackwatch chose."""
    harness = await served([rack("r1", Behaviour.PASS)])
    [report] = await harness.cycle(job={"provision_data": {"distro": "jammy"}, "tags": ["rw"]})
    [job] = harness.lab.submissions
    check = report.checks[0]
    assert job == {
        "provision_data": {"distro": "jammy"},
        "tags": ["rw"],
        "job_queue": "r1-m1",
        "job_id": check.job_id,
    }
    assert check.outcome is Outcome.PASSED


async def test_all_racks_share_one_agents_listing(served: LabFactory) -> None:
    """One agents request per cycle, however many racks and agents; one read per idle agent."""
    harness = await served([rack("r1", *[Behaviour.PASS] * 3), rack("r2", *[Behaviour.PASS] * 3)])
    await harness.cycle()
    requests = harness.lab.requests
    assert requests["GET /v1/agents/data"] == 1
    assert requests["GET /v1/agents/data/{agent_name}"] == 6
    assert requests["POST /v1/job"] == 6


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
    # One agent's reads always fail: it alone ends in error.
    lab.inject(
        Fault(FaultKind.SERVER_ERROR, "testflinger", path="/v1/agents/data/r1-m6", times=None)
    )
    [report] = await harness.cycle(testflinger={"timeout": 0.2})

    final = outcomes(report)
    assert None not in final.values()
    assert final["r1-m6"] is Outcome.ERROR
    error = {c.agent: c.detail for c in report.checks}["r1-m6"]
    assert "answered 500" in error and "an HTML page" in error
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
    with Store.open(harness.state_file) as store:
        cycle = store.start_cycle("r1", _now())
        store.begin_job(
            cycle,
            rack="r1",
            agent="r1-m1",
            machine="r1-m1",
            queue="r1-m1",
            job_id="0b7f5a52-43a5-4c7e-9b5d-1b8c1d3c0a11",
            at=_now(),
        )
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
    [report] = await harness.cycle()
    [check] = report.checks
    assert (check.job_id, check.outcome, check.provision_status) == (job_id, Outcome.FAILED, 1)
    assert len(harness.lab.submissions) == 1


def _now() -> datetime:
    return datetime.now(UTC)
