"""The decisions, as tables of plain data: no network, no clock, no store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from rackwatch import policy
from rackwatch.model import Agent, JobResult, Machine, Outcome

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LIMITS = policy.Limits(
    max_fail_streak=20, stale_after=timedelta(hours=26), job_timeout=timedelta(hours=4)
)


def machine(name: str = "m1") -> Machine:
    return Machine(hostname=name, system_id="abc123", status="Deployed", power_state="on")


def agent(name: str = "m1", **fields: object) -> Agent:
    values: dict[str, object] = {
        "state": "waiting",
        "queues": (name,),
        "updated_at": NOW - timedelta(hours=1),
    }
    values.update(fields)
    return Agent(name=name, **values)  # type: ignore[arg-type]


def decide(a: Agent | None, *others: Agent) -> policy.Decision:
    servers = policy.count_queue_servers([a, *others] if a else others)
    return policy.decide(machine(), a, servers=servers, now=NOW, limits=LIMITS)


@pytest.mark.parametrize(
    ("the_agent", "outcome", "detail"),
    [
        (None, Outcome.NO_AGENT, "no Testflinger agent"),
        (agent(state="offline", comment="Recovery failed"), Outcome.OFFLINE, "Recovery failed"),
        (agent(state="maintenance"), Outcome.OFFLINE, "maintenance"),
        (agent(state="provision", job_id="j-1"), Outcome.BUSY, "state provision, job j-1"),
        (agent(state="unknown"), Outcome.BUSY, "state unknown"),
        (
            agent(provision_streak_type="fail", provision_streak_count=21),
            Outcome.QUARANTINED,
            "21 failed provisionings in a row",
        ),
        (agent(updated_at=NOW - timedelta(days=3)), Outcome.STALE, "3d 0h"),
        (agent(queues=()), Outcome.NO_QUEUE, "queues: none"),
    ],
)
def test_agents_that_are_not_checked_say_why(
    the_agent: Agent | None, outcome: Outcome, detail: str
) -> None:
    """Each reason not to submit gives its own outcome and a detail naming the cause."""
    decision = decide(the_agent)
    assert decision.outcome is outcome
    assert detail in decision.detail
    assert decision.queue is None


def test_a_streak_at_the_limit_is_still_checked() -> None:
    """Quarantine starts only above max_fail_streak, as the original tool counted."""
    decision = decide(agent(provision_streak_type="fail", provision_streak_count=20))
    assert decision.outcome is None


def test_a_pass_streak_is_never_quarantined() -> None:
    """Only a streak of failures counts."""
    assert decide(agent(provision_streak_type="pass", provision_streak_count=99)).outcome is None


def test_offline_wins_over_every_other_reason() -> None:
    """The order of the rules: offline before busy, quarantine, staleness and queues."""
    stale_offline = agent(state="offline", updated_at=NOW - timedelta(days=5), queues=())
    assert decide(stale_offline).outcome is Outcome.OFFLINE


def test_quarantine_is_judged_before_staleness() -> None:
    """A long fail streak is reported as such even when the agent is also silent."""
    both = agent(
        provision_streak_type="fail",
        provision_streak_count=50,
        updated_at=NOW - timedelta(days=5),
    )
    assert decide(both).outcome is Outcome.QUARANTINED


def test_a_shared_queue_is_not_the_agents_own() -> None:
    """A queue another agent also serves could hand the job to that other agent."""
    lonely = agent("m1", queues=("rack-any",))
    other = agent("m2", queues=("m2", "rack-any"))
    assert decide(lonely, other).outcome is Outcome.NO_QUEUE


def test_the_queue_named_after_the_agent_is_preferred() -> None:
    """Of several queues the agent alone serves, the one with its name is chosen."""
    decision = decide(
        agent("m1", queues=("zz-special", "m1", "rack-any")), agent("m2", queues=("rack-any",))
    )
    assert decision.outcome is None
    assert decision.queue == "m1"


def test_another_queue_of_its_own_is_used_when_none_has_its_name() -> None:
    """The agent's name is not required to be a queue."""
    decision = decide(agent("m1", queues=("rack-any", "lab-m1")), agent("m2", queues=("rack-any",)))
    assert decision.queue == "lab-m1"


def test_an_agent_without_updated_at_is_not_stale() -> None:
    """Staleness needs a timestamp to judge by."""
    assert decide(agent(updated_at=None)).outcome is None


def test_machines_match_agents_case_insensitively() -> None:
    """MAAS hostnames and agent names are compared without regard to case."""
    pairs = policy.match_agents([machine("Dut-01")], [agent("dut-01")])
    assert pairs[0][1] is not None and pairs[0][1].name == "dut-01"


def test_the_exactly_spelled_agent_wins_over_a_case_variant() -> None:
    """Two agents that differ only in case: the one spelled like the hostname is used."""
    pairs = policy.match_agents([machine("dut-01")], [agent("DUT-01"), agent("dut-01")])
    assert pairs[0][1] is not None and pairs[0][1].name == "dut-01"


def test_location_filters_agents() -> None:
    """With a location, an agent elsewhere does not belong to the rack's machine."""
    here = agent("m1", location="TOR3 rack A")
    there = agent("m2", location="TOR4")
    pairs = policy.match_agents([machine("m1"), machine("m2")], [here, there], location="tor3")
    assert [a.name if a else None for _, a in pairs] == ["m1", None]


def test_plan_rack_covers_every_machine() -> None:
    """Every machine of the rack gets a decision, with or without an agent."""
    index = policy.index_agents([agent("m1")])
    decisions = policy.plan_rack([machine("m1"), machine("m2")], index, now=NOW, limits=LIMITS)
    assert [(d.name, d.outcome) for d in decisions] == [("m1", None), ("m2", Outcome.NO_AGENT)]


def test_one_index_serves_every_rack_and_counts_queues_across_locations() -> None:
    """The agents are indexed once: by name within the location, queues over the whole server."""
    here = replace(agent("m1"), location="TOR3 row 1", queues=("m1", "shared"))
    there = replace(agent("m2"), location="TOR4", queues=("m2", "shared"))
    index = policy.index_agents([here, there], location="tor3")
    assert dict(index.by_name) == {"m1": [here]}
    assert index.servers == {"m1": 1, "m2": 1, "shared": 2}
    r1 = policy.plan_rack([machine("m1")], index, now=NOW, limits=LIMITS)
    r2 = policy.plan_rack([machine("m2")], index, now=NOW, limits=LIMITS)
    assert [(d.name, d.queue) for d in r1] == [("m1", "m1")]
    assert [(d.name, d.outcome) for d in r2] == [("m2", Outcome.NO_AGENT)]


@pytest.mark.parametrize(
    ("result", "last_state", "runs_on"),
    [
        (JobResult("j", "cancelled"), None, False),  # never seen taken: stays cancelled
        (JobResult("j", "cancelled"), "waiting", False),
        (JobResult("j", "cancelled"), "provision", True),  # its agent provisions on
        (JobResult("j", "cancelled"), "cancelled", True),  # still read cancelled
        (JobResult("j", "cancelled", setup_status=0), "waiting", True),  # taken since
        (JobResult("j", "cancelled", provision_status=0), "provision", False),  # it says already
        (JobResult("j", "complete", provision_status=1), "cancelled", False),
    ],
)
def test_a_cancelled_job_its_agent_took_runs_on(
    result: JobResult, last_state: str | None, runs_on: bool
) -> None:
    assert policy.runs_on_cancelled(result, last_state) is runs_on


def held(*jobs: policy.HeldJob) -> policy.HeldJobs:
    return policy.HeldJobs.of(jobs)


OURS_LONG_AGO = policy.HeldJob(
    "j-old", "m1", "provision", ours=True, submitted_at=NOW - timedelta(hours=5)
)


def test_an_agent_running_our_job_past_its_time_times_out_again() -> None:
    """Still provisioning rackwatch's own timed-out job is a timeout, not someone else's work."""
    busy = decide(agent(state="provision", job_id="j-old"))
    decision = policy.hold(busy, held(OURS_LONG_AGO), NOW, LIMITS)
    assert decision.outcome is Outcome.TIMED_OUT
    assert decision.queue is None
    assert "still running rackwatch's job j-old (provision), submitted 5h 0m ago" in decision.detail
    assert "past its 4h 0m; no job submitted" in decision.detail


def test_our_job_still_waiting_on_the_queue_blocks_a_second_one() -> None:
    """A queue holding rackwatch's own overdue job gets no other: the check times out again."""
    waiting = policy.HeldJob(
        "j-old", "m1", "waiting", ours=True, submitted_at=NOW - timedelta(hours=4)
    )
    decision = policy.hold(decide(agent()), held(waiting), NOW, LIMITS)
    assert decision.outcome is Outcome.TIMED_OUT
    assert "rackwatch's job j-old is still waiting on queue m1, submitted 4h 0m ago" in (
        decision.detail
    )


def test_a_job_of_another_state_file_is_reported_busy_not_doubled() -> None:
    """Another rackwatch's job (or a lost state file's) on the queue means busy, with no job."""
    theirs = policy.HeldJob("j-x", "m1", "waiting", ours=False, origin="rackwatch-0a1b2c")
    decision = policy.hold(decide(agent()), held(theirs), NOW, LIMITS)
    assert (decision.outcome, decision.queue) == (Outcome.BUSY, None)
    assert decision.detail == (
        "queue m1 holds rackwatch job j-x of state file rackwatch-0a1b2c (waiting)"
    )


def test_a_job_of_ours_within_its_time_is_busy() -> None:
    """An agent still on a job of ours that has time left is busy with it, and gets no second."""
    recent = policy.HeldJob(
        "j-new", "m1", "test", ours=True, submitted_at=NOW - timedelta(minutes=5)
    )
    busy = decide(agent(state="test", job_id="j-new"))
    decision = policy.hold(busy, held(recent), NOW, LIMITS)
    assert decision.outcome is Outcome.BUSY
    assert "still busy with rackwatch's job j-new (test), submitted 5m 0s ago" in decision.detail


def test_other_work_and_free_queues_are_left_alone() -> None:
    """Someone else's job, and a queue no rackwatch job holds, change nothing."""
    foreign_busy = decide(agent(state="test", job_id="someone-else"))
    assert policy.hold(foreign_busy, held(OURS_LONG_AGO), NOW, LIMITS) is foreign_busy
    free = decide(agent("m2"))
    assert policy.hold(free, held(OURS_LONG_AGO), NOW, LIMITS) is free


def test_plan_applies_held_jobs_to_queues_and_to_the_agents_running_them() -> None:
    """plan_rack keeps a job off a queue that holds one, and off an agent that runs one."""
    jobs = held(OURS_LONG_AGO)
    for the_agent in (agent(), agent(state="provision", job_id="j-old")):
        [planned] = policy.plan_rack(
            [machine()], policy.index_agents([the_agent]), now=NOW, limits=LIMITS, held=jobs
        )
        assert planned.outcome is Outcome.TIMED_OUT


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (
            JobResult("j", "complete", provision_status=0),
            "seen ended 3h 12m after its timeout, provision_status 0",
        ),
        (
            JobResult("j", "complete", provision_status=46),
            "seen ended 3h 12m after its timeout, provision_status 46 (device recovery failed;"
            " the agent set itself offline)",
        ),
        (JobResult("j", "cancelled"), "cancelled before its provisioning started"),
        (
            JobResult("j", "complete"),
            "seen ended 3h 12m after its timeout, without a provision status"
            " (provisioning never ran)",
        ),
    ],
)
def test_a_late_result_says_what_became_of_the_job(result: JobResult, text: str) -> None:
    """A job that ends after its check timed out gets its late result in words."""
    assert policy.late_result(result, timedelta(hours=3, minutes=12)) == text


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (JobResult("j", "complete", provision_status=0), (Outcome.PASSED, "")),
        (
            JobResult("j", "complete", provision_status=1),
            (Outcome.FAILED, "provisioning exited 1 (device connector error)"),
        ),
        (
            JobResult("j", "complete", provision_status=46),
            (
                Outcome.FAILED,
                "provisioning exited 46 (device recovery failed; the agent set itself offline)",
            ),
        ),
        (
            JobResult("j", "complete", provision_status=247),
            (Outcome.FAILED, "provisioning exited 247 (killed, by the global timeout or similar)"),
        ),
        (
            JobResult("j", "complete", provision_status=100),
            (Outcome.FAILED, "provisioning exited 100 (agent exception)"),
        ),
        (JobResult("j", "complete", provision_status=3), (Outcome.FAILED, "provisioning exited 3")),
        (
            JobResult("j", "complete", setup_status=1),
            (Outcome.FAILED, "provisioning never ran: setup exited 1"),
        ),
        (
            JobResult("j", "cancelled"),
            (Outcome.FAILED, "provisioning never ran: the job was cancelled before it started"),
        ),
        (
            JobResult("j", "completed"),
            (Outcome.FAILED, "provisioning never ran (job completed without a provision status)"),
        ),
    ],
)
def test_an_ended_job_is_judged_by_provision_status(
    result: JobResult, expected: tuple[Outcome, str]
) -> None:
    """'complete' says nothing of success: only provision_status does."""
    assert policy.judge(result) == expected


@pytest.mark.parametrize("state", ["waiting", "running", "setup", "provision", "cleanup"])
def test_a_running_job_has_no_verdict_yet(state: str) -> None:
    """Even a provision_status posted mid-job is not final until the job ends."""
    assert policy.judge(JobResult("j", state, provision_status=0)) is None


def test_overdue_exactly_at_the_timeout() -> None:
    """A job gets job_timeout from its submission, and not a moment more."""
    submitted = NOW - LIMITS.job_timeout
    assert policy.is_overdue(submitted, NOW, LIMITS)
    assert not policy.is_overdue(submitted + timedelta(seconds=1), NOW, LIMITS)


@pytest.mark.parametrize(
    ("outcomes", "error", "status"),
    [
        ([Outcome.PASSED, Outcome.OFFLINE], None, "ok"),
        ([Outcome.PASSED, Outcome.TIMED_OUT], None, "failures"),
        ([Outcome.ERROR], None, "failures"),
        ([], None, "ok"),
        ([Outcome.PASSED], "maas GET … answered 503", "error"),
    ],
)
def test_rack_status(outcomes: list[Outcome], error: str | None, status: str) -> None:
    """A listing error outranks failures, and skips are not failures."""
    assert policy.rack_status(outcomes, error) == status
