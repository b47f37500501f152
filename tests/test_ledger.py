"""Health over several real cycles on the simulated lab: transitions, recovery, incidents."""

from __future__ import annotations

from typing import Any

from rackwatch.model import Health
from rackwatch.simlab import Behaviour
from rackwatch.store import Store
from tests.harness import Harness, LabFactory, rack

B = Behaviour


def health_states(harness: Harness) -> dict[str, Health]:
    with Store.open(harness.state_file) as store:
        return {agent: health.state for agent, (_, health) in store.health().items()}


def alert_events(harness: Harness) -> list[list[tuple[str, str | None]]]:
    """Each queued alert as (kind, agent) pairs, oldest first."""
    with Store.open(harness.state_file) as store:
        return [[(e["kind"], e["agent"]) for e in a.body["events"]] for a in store.pending_alerts()]


async def test_two_failures_make_an_agent_unhealthy_and_a_pass_recovers_it(
    served: LabFactory,
) -> None:
    """healthy → unhealthy after two failed cycles → healthy again, each announced once."""
    harness = await served([rack("r1", B.PASS, B.PASS, B.PASS, B.PASS)])
    await harness.cycle()
    assert set(health_states(harness).values()) == {Health.HEALTHY}

    harness.lab.set_behaviour("r1-m1", B.FAIL)
    await harness.cycle()
    assert health_states(harness)["r1-m1"] is Health.HEALTHY  # one failure is not enough
    await harness.cycle()
    assert health_states(harness)["r1-m1"] is Health.UNHEALTHY
    await harness.cycle()  # still failing: no second alert

    harness.lab.set_behaviour("r1-m1", B.PASS)
    await harness.cycle()
    assert health_states(harness)["r1-m1"] is Health.HEALTHY
    assert alert_events(harness) == [[("unhealthy", "r1-m1")], [("recovered", "r1-m1")]]

    with Store.open(harness.state_file) as store:
        _, health = store.health()["r1-m1"]
    assert health.reason == "passed"
    assert health.since is not None


async def test_a_rack_incident_raises_one_alert_instead_of_many(served: LabFactory) -> None:
    """Most of a rack failing together opens one incident; the machines stay healthy."""
    harness = await served([rack("r1", B.PASS, B.PASS, B.PASS, B.PASS)])
    await harness.cycle()
    for name in ("r1-m1", "r1-m2", "r1-m3"):
        harness.lab.set_behaviour(name, B.FAIL)
    await harness.cycle()
    await harness.cycle()
    assert set(health_states(harness).values()) == {Health.HEALTHY}
    with Store.open(harness.state_file) as store:
        incident = store.open_incident("r1")
    assert incident is not None and "3 of 4 checked agents failed" in incident.reason

    for name in ("r1-m1", "r1-m2", "r1-m3"):
        harness.lab.set_behaviour(name, B.PASS)
    await harness.cycle()
    with Store.open(harness.state_file) as store:
        assert store.open_incident("r1") is None
    assert alert_events(harness) == [[("incident_opened", None)], [("incident_closed", None)]]


async def test_an_unreachable_rack_twice_is_an_incident(served: LabFactory) -> None:
    """MAAS failing for the rack in two consecutive cycles opens an incident."""
    harness = await served([rack("r1", B.PASS)])
    await harness.cycle()
    broken: dict[str, Any] = {
        "maas": {"url": "http://127.0.0.1:9/MAAS/", "api_key": harness.lab.maas_api_key}
    }
    await harness.cycle(**broken)
    with Store.open(harness.state_file) as store:
        assert store.open_incident("r1") is None
    await harness.cycle(**broken)
    with Store.open(harness.state_file) as store:
        incident = store.open_incident("r1")
    assert incident is not None and "two cycles in a row" in incident.reason
    await harness.cycle()
    with Store.open(harness.state_file) as store:
        assert store.open_incident("r1") is None


async def test_errors_and_skips_do_not_change_health(served: LabFactory) -> None:
    """An offline agent is excluded with its reason; busy or error checks change nothing."""
    harness = await served([rack("r1", B.PASS, B.OFFLINE, B.BUSY)])
    await harness.cycle()
    states = health_states(harness)
    assert states["r1-m1"] is Health.HEALTHY
    assert states["r1-m2"] is Health.EXCLUDED
    assert "r1-m3" not in states  # busy: still unknown, never recorded
    assert alert_events(harness) == []


async def test_drift_is_announced_when_it_appears_and_not_again(served: LabFactory) -> None:
    """A machine without an agent is reported once; MAAS marking a machine Broken later, once."""
    harness = await served([rack("r1", B.PASS, B.PASS, None)])
    await harness.cycle()
    await harness.cycle()
    harness.lab.set_maas_status("r1-m1", "Broken")
    await harness.cycle()
    await harness.cycle()
    assert alert_events(harness) == [[("drift", "r1-m3")], [("drift", "r1-m1")]]
    with Store.open(harness.state_file) as store:
        [_, broken] = store.pending_alerts()
    [drift] = broken.body["events"]
    assert drift["reason"] == "MAAS marks the machine Broken"
    assert list(drift) == ["kind", "rack", "agent", "from", "to", "reason", "job_id"]


async def test_a_partial_cycle_neither_opens_nor_closes_an_incident(served: LabFactory) -> None:
    """Checking one agent again during a rack incident leaves the incident open, and its
    failure counts as part of it."""
    harness = await served([rack("r1", B.PASS, B.PASS, B.PASS, B.PASS)])
    for name in ("r1-m1", "r1-m2", "r1-m3"):
        harness.lab.set_behaviour(name, B.FAIL)
    await harness.cycle()
    with Store.open(harness.state_file) as store:
        assert store.open_incident("r1") is not None

    await harness.cycle(agents=["r1-m4"])  # passes: would close it as a full cycle
    await harness.cycle(agents=["r1-m1"])  # fails: would count against the agent
    await harness.cycle(agents=["r1-m1"])
    with Store.open(harness.state_file) as store:
        assert store.open_incident("r1") is not None
    assert health_states(harness).get("r1-m1") is not Health.UNHEALTHY
    assert alert_events(harness) == [[("incident_opened", None)]]


async def test_an_unhealthy_event_carries_the_error_line_of_the_check_that_made_it(
    served: LabFactory,
) -> None:
    """The queued unhealthy event names its job's error line; the recovery has none."""
    harness = await served([rack("r1", B.RECOVERY_FAIL, B.PASS, B.PASS, B.PASS)])
    await harness.cycle(health={"failures_to_unhealthy": 1})
    harness.lab.set_behaviour("r1-m1", B.PASS)
    harness.lab.set_agent_state("r1-m1", "waiting")  # the admin brings it back after the repair
    await harness.cycle(health={"failures_to_unhealthy": 1})
    with Store.open(harness.state_file) as store:
        fell, recovered = [a.body["events"] for a in store.pending_alerts()]
        made_it = store.history("r1-m1")[-1]
    [unhealthy] = fell
    assert unhealthy["job_id"] == made_it.job_id
    assert "ERROR: Device recovery failed: r1-m1" in unhealthy["error_line"]
    assert [(e["kind"], "error_line" in e) for e in recovered] == [("recovered", False)]
