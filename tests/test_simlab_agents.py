"""Simulated Testflinger agents look the part of their behaviours and run jobs as real ones do."""

from __future__ import annotations

import asyncio
import calendar
import re
import time
import uuid

import pytest

from rackwatch.simlab import Behaviour, demo_lab
from tests.simlab_client import (
    ISO,
    agent_record,
    cancel,
    lab_of,
    result,
    result_when,
    running,
    submit,
)

# -- Testflinger: agents -----------------------------------------------------------------------


async def test_agents_show_the_state_each_behaviour_calls_for() -> None:
    """Offline, maintenance, busy, stale, fail-streak and shared-queue agents look the part."""
    async with (
        running(demo_lab()) as (urls, session),
        session.get(f"{urls.testflinger}v1/agents/data") as response,
    ):
        agents = {a["name"]: a for a in await response.json()}
    assert "tor3-c-m08" not in agents  # the machine without an agent
    assert len(agents) == 23
    passing = agents["tor3-a-m01"]
    assert passing["queues"] == ["tor3-a-m01", "tor3-a-any"]
    assert (passing["state"], passing["location"], passing["provision_type"]) == (
        "waiting",
        "TOR3-A",
        "maas2",
    )
    assert "job_id" not in passing and "provision_streak_type" not in passing
    assert agents["tor3-b-m06"]["state"] == "offline"
    assert agents["tor3-b-m07"]["state"] == "maintenance"
    busy = agents["tor3-a-m08"]
    assert busy["state"] == "test" and uuid.UUID(busy["job_id"])
    stale = calendar.timegm(time.strptime(agents["tor3-c-m05"]["updated_at"], ISO))
    fresh = calendar.timegm(time.strptime(agents["tor3-b-m08"]["updated_at"], ISO))
    assert fresh - stale > 2 * 24 * 3600  # NEVER_PICKS_UP looks alive, STALE does not
    streak = agents["tor3-c-m06"]
    assert (streak["provision_streak_type"], streak["provision_streak_count"]) == ("fail", 25)
    (shared_queue,) = agents["tor3-c-m07"]["queues"]
    sharers = [name for name, agent in agents.items() if shared_queue in agent["queues"]]
    assert len(sharers) == 2


async def test_unknown_agent_is_404_with_an_empty_object() -> None:
    """GET /v1/agents/data/<unknown> answers 404 {} (and names are case-sensitive)."""
    async with (
        running(lab_of(Behaviour.PASS)) as (urls, session),
        session.get(f"{urls.testflinger}v1/agents/data/M0") as response,
    ):
        assert (response.status, await response.json()) == (404, {})


# -- Testflinger: jobs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "code", "state_after", "streak"),
    [
        (Behaviour.PASS, 0, "waiting", "pass"),
        (Behaviour.FAIL, 1, "waiting", "fail"),
        (Behaviour.RECOVERY_FAIL, 46, "offline", "fail"),
        (Behaviour.FAIL_STREAK, 0, "waiting", "pass"),
    ],
)
async def test_a_job_runs_to_complete_with_the_behaviours_provision_status(
    behaviour: Behaviour, code: int, state_after: str, streak: str
) -> None:
    """The agent takes the job, provisions with its exit code, and ends the job "complete"."""
    async with running(lab_of(behaviour)) as (urls, session):
        job_id = await submit(session, urls, "m0")
        assert (await result(session, urls, job_id))["job_state"] == "waiting"
        running_job = await result_when(session, urls, job_id, "provision")
        assert running_job["setup_status"] == 0 and "provision_status" not in running_job
        assert (await agent_record(session, urls, "m0"))["job_id"] == job_id
        done = await result_when(session, urls, job_id, "complete")
        agent = await agent_record(session, urls, "m0")
    assert done["provision_status"] == code
    assert done["cleanup_status"] == 0
    assert done["device_info"]["agent_name"] == "m0"
    assert (agent["state"], agent["job_id"]) == (state_after, "")
    assert agent["provision_streak_type"] == streak and agent["provision_streak_count"] == 1
    if behaviour is Behaviour.RECOVERY_FAIL:
        assert agent["comment"] == (
            f"Set to offline by agent. Recovery failed during job '{job_id}' execution."
        )


@pytest.mark.parametrize(
    ("behaviour", "last_error"),
    [
        (
            Behaviour.FAIL,
            'ERROR: MAAS deployment of m0 failed: status "Failed deployment"'
            " (curtin: grub-install failed)",
        ),
        (
            Behaviour.RECOVERY_FAIL,
            "ERROR: Device recovery failed: m0 did not come back after a power cycle"
            " (BMC: Connection timed out)",
        ),
        (Behaviour.PASS, None),
    ],
)
async def test_the_provision_output_is_a_connector_log_that_says_why_it_failed(
    behaviour: Behaviour, last_error: str | None
) -> None:
    """Once provision ends, provision_output is a banner and timestamped lines; a failure's last
    error says why, and a cleanup line follows it."""
    async with running(lab_of(behaviour)) as (urls, session):
        job_id = await submit(session, urls, "m0", provision_data={"distro": "jammy"})
        running_job = await result_when(session, urls, job_id, "provision")
        done = await result_when(session, urls, job_id, "complete")
    assert "provision_output" not in running_job
    lines = done["provision_output"].splitlines()
    assert lines[0] == "*** TESTFLINGER SYSTEM RUN [provision] ***"
    stamped = [line for line in lines[1:] if line]
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|ERROR): ", x) for x in stamped)
    assert any("with distro jammy" in line for line in stamped)
    errors = [line for line in stamped if " ERROR: " in line]
    if last_error is None:
        assert errors == [] and stamped[-1].endswith("INFO: END provision")
    else:
        assert errors[-1].endswith(last_error)
        assert stamped[-1].endswith("INFO: Cleaning up: releasing node m0")


@pytest.mark.parametrize(
    "behaviour",
    [Behaviour.NEVER_PICKS_UP, Behaviour.STALE, Behaviour.BUSY, Behaviour.OFFLINE],
)
async def test_a_job_for_an_agent_that_does_not_serve_stays_waiting(behaviour: Behaviour) -> None:
    """Agents that are stuck, stale, busy or offline never take the job."""
    async with running(lab_of(behaviour, pickup_seconds=0.01)) as (urls, session):
        job_id = await submit(session, urls, "m0")
        await asyncio.sleep(0.05)
        assert (await result(session, urls, job_id))["job_state"] == "waiting"


async def test_a_slow_agent_is_still_provisioning_when_a_normal_one_is_done() -> None:
    """SLOW stretches provisioning by the slow factor."""
    async with running(lab_of(Behaviour.PASS, Behaviour.SLOW)) as (urls, session):
        normal, slow = await submit(session, urls, "m0"), await submit(session, urls, "m1")
        await result_when(session, urls, normal, "complete")
        assert (await result(session, urls, slow))["job_state"] == "provision"


async def test_an_agent_takes_the_next_waiting_job_when_it_becomes_idle() -> None:
    """Two jobs on one agent's queue run one after the other."""
    async with running(lab_of(Behaviour.PASS)) as (urls, session):
        first, second = await submit(session, urls, "m0"), await submit(session, urls, "m0")
        await result_when(session, urls, first, "provision")
        assert (await result(session, urls, second))["job_state"] == "waiting"
        await result_when(session, urls, second, "complete")
        agent = await agent_record(session, urls, "m0")
    assert agent["provision_streak_count"] == 2


async def test_a_behaviour_change_applies_to_the_next_job() -> None:
    """set_behaviour lets a test turn a passing machine into a failing one between cycles."""
    lab = lab_of(Behaviour.PASS)
    async with running(lab) as (urls, session):
        lab.set_behaviour("m0", Behaviour.FAIL)
        job_id = await submit(session, urls, "m0")
        assert (await result_when(session, urls, job_id, "complete"))["provision_status"] == 1
        lab.set_behaviour("m0", Behaviour.OFFLINE)
        assert (await agent_record(session, urls, "m0"))["state"] == "offline"


async def test_duplicate_job_id_stores_a_second_job() -> None:
    """A client-chosen job_id is echoed back, and resubmitting it stores another job."""
    lab = lab_of(Behaviour.NEVER_PICKS_UP)
    chosen = str(uuid.uuid4())
    async with running(lab) as (urls, session):
        assert await submit(session, urls, "m0", job_id=chosen) == chosen
        assert await submit(session, urls, "m0", job_id=chosen) == chosen
    assert len(lab.jobs(chosen)) == 2
    assert len(lab.submissions_for("m0")) == 2


# -- Testflinger: cancelling -------------------------------------------------------------------


async def test_cancelling_a_waiting_job_is_final() -> None:
    """A cancelled waiting job is never picked up; cancelling it again is a plain-text 400."""
    lab = lab_of(Behaviour.NEVER_PICKS_UP, pickup_seconds=0.01)
    async with running(lab) as (urls, session):
        job_id = await submit(session, urls, "m0")
        assert await cancel(session, urls, job_id) == (200, "OK")
        lab.set_behaviour("m0", Behaviour.PASS)  # now it would take any waiting job
        await asyncio.sleep(0.05)
        assert (await result(session, urls, job_id))["job_state"] == "cancelled"
        again = await cancel(session, urls, job_id)
    assert again == (400, "The job is already completed or cancelled")
    assert lab.cancelled == [job_id]


async def test_cancelling_during_setup_skips_provisioning() -> None:
    """The agent notices the cancel, skips provision, cleans up and ends the job "complete"."""
    async with running(lab_of(Behaviour.PASS, pickup_seconds=0.1)) as (urls, session):
        job_id = await submit(session, urls, "m0")
        await result_when(session, urls, job_id, "setup")
        assert await cancel(session, urls, job_id) == (200, "OK")
        assert (await result(session, urls, job_id))["job_state"] == "cancelled"
        done = await result_when(session, urls, job_id, "complete")
    assert "provision_status" not in done
    assert done["cleanup_status"] == 0


async def test_cancelling_during_provision_lets_provision_finish() -> None:
    """The job reads cancelled while the agent provisions on, then "complete" with its status."""
    async with running(lab_of(Behaviour.FAIL, provision_seconds=0.5)) as (urls, session):
        job_id = await submit(session, urls, "m0")
        await result_when(session, urls, job_id, "provision")
        assert await cancel(session, urls, job_id) == (200, "OK")
        seen = []
        for _ in range(3):
            job = await result(session, urls, job_id)
            agent = await agent_record(session, urls, "m0")
            seen.append(
                (job["job_state"], "provision_status" in job, agent["state"], agent["job_id"])
            )
            await asyncio.sleep(0.05)
        done = await result_when(session, urls, job_id, "complete")
        after = await agent_record(session, urls, "m0")
    assert seen == [("cancelled", False, "provision", job_id)] * 3
    assert done["provision_status"] == 1
    assert done["cleanup_status"] == 0
    assert (after["state"], after["job_id"]) == ("waiting", "")
    assert after["provision_streak_type"] == "fail"
