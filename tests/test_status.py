"""`rackwatch status` and `history`: real processes reading a state file that real cycles against
the simulated lab filled."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rackwatch.model import Health, Outcome
from rackwatch.simlab import Behaviour, Lab, SimMachine, SimRack
from rackwatch.status import build_status, needing_a_person
from rackwatch.store import AgentTrend, Store
from tests.harness import Done, Harness, rack, rackwatch, write_config
from tests.stored import record

JOB_ID = "5d0c7a4e-8f1b-4c2d-9e3f-a1b2c3d4e5f6"


@dataclass
class Setup(Harness):
    """A served lab of two racks, its configuration file, and cycles run in this process."""

    config: Path

    async def status(self, *args: str) -> Done:
        return await rackwatch("status", *args, "--config", str(self.config))

    async def status_json(self, *args: str) -> dict[str, Any]:
        done = await self.status(*args, "--json")
        assert done.code == 0, done.err
        data: dict[str, Any] = json.loads(done.out)
        return data


@asynccontextmanager
async def served(tmp_path: Path, *racks: SimRack) -> AsyncIterator[Setup]:
    """The racks as a served lab, with a configuration naming them all."""
    lab = Lab(racks, provision_seconds=0.2, pickup_seconds=0.02)
    async with lab.serve() as urls:
        state_file = tmp_path / "state.db"
        yield Setup(
            lab, urls, state_file, write_config(tmp_path / "rw.toml", lab, urls, state_file)
        )


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    b = Behaviour
    r1 = SimRack(
        "r1",
        [SimMachine("r1-m1", b.PASS), SimMachine("r1-m2", b.FAIL), SimMachine("r1-m3", b.OFFLINE)],
    )
    async with served(tmp_path, r1, SimRack("r2", [SimMachine("r2-m1", b.PASS)])) as setup:
        yield setup


def agents_of(data: dict[str, Any], rack: str) -> dict[str, dict[str, Any]]:
    [block] = [r for r in data["racks"] if r["rack"] == rack]
    return {agent["agent"]: agent for agent in block["agents"]}


def row(out: str, agent: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith(f"  {agent} ")]
    return line


# status


async def test_status_shows_a_header_per_rack_and_a_row_per_agent(setup: Setup) -> None:
    """After a cycle, each rack has its last and next cycle, and each agent its latest outcome."""
    await setup.cycle()
    done = await setup.status()
    assert done.code == 0, done.err
    header = r"^r1: last cycle started (just now|.+ ago), ended after [\d.]+s: failures; "
    assert re.search(header + r"next check in 5h 5\dm$", done.out, re.MULTILINE), done.out
    assert re.search(r"^r2: .*: ok; next check in", done.out, re.MULTILINE), done.out
    assert re.search(
        r"^  AGENT +HEALTH +LAST OUTCOME +WHEN +FAILURES +PASS RATE +PROVISION +LAST PASSED"
        r" +JOB IN FLIGHT +DETAIL$",
        done.out,
        re.MULTILINE,
    ), done.out
    passed = row(done.out, "r1-m1")
    assert re.match(
        r"  r1-m1 +healthy \d+s +passed +(just now|\d+s ago) +0 +1/1 +0\.\ds"
        r" +(just now|\d+s ago) *$",
        passed,
    ), passed
    failed = row(done.out, "r1-m2")
    assert re.match(
        r"  r1-m2 +unknown +failed +.+ +1 +0/1 +- +never +provisioning exited 1", failed
    ), failed
    assert failed.endswith(
        'ERROR: MAAS deployment of r1-m2 failed: status "Failed deployment"'
        " (curtin: grub-install failed)"
    ), failed
    offline = row(done.out, "r1-m3")
    assert re.match(r"  r1-m3 +excluded \d+s +offline +.+ +0 +- +- +never +offline: ", offline)
    assert done.out.strip().splitlines()[-2:] == [
        "2 racks, 4 agents by their last outcome: 2 passed, 1 failed or timed out, 0 errors,"
        " 1 set offline by an admin; 0 jobs in flight",
        "by health: 2 healthy, 0 unhealthy, 1 excluded, 1 unknown; 0 rack incidents open",
    ]


async def test_consecutive_failures_grow_pass_over_skips_and_reset_after_a_pass(
    setup: Setup,
) -> None:
    """Two failing cycles make 2 even with a skip between them; a pass brings it back to 0."""
    await setup.cycle(["r1"])
    setup.lab.set_behaviour("r1-m2", Behaviour.OFFLINE)
    await setup.cycle(["r1"])
    setup.lab.set_behaviour("r1-m2", Behaviour.FAIL)
    await setup.cycle(["r1"])
    with Store.open_readonly(setup.state_file) as store:
        recorded = [check.outcome for check in store.history("r1-m2")]
    assert recorded == [Outcome.FAILED, Outcome.OFFLINE, Outcome.FAILED]
    failing = agents_of(await setup.status_json(), "r1")["r1-m2"]
    assert (failing["last_outcome"], failing["consecutive_failures"]) == ("failed", 2)
    assert failing["last_passed_at"] is None

    setup.lab.set_behaviour("r1-m2", Behaviour.PASS)
    await setup.cycle(["r1"])
    passed = agents_of(await setup.status_json(), "r1")["r1-m2"]
    assert (passed["last_outcome"], passed["consecutive_failures"]) == ("passed", 0)
    assert passed["last_passed_at"] == passed["last_checked_at"] is not None


async def test_status_shows_the_job_in_flight(setup: Setup) -> None:
    """An unfinished check shows its job id; the last outcome stays that of the latest ended check."""
    await setup.cycle(["r1"])
    with Store.open(setup.state_file) as store:
        cycle_id = store.start_cycle("r1", datetime.now(UTC))
        for agent, job_id in (("r1-m1", JOB_ID), ("r1-new", "job-of-a-new-agent")):
            store.begin_job(
                cycle_id,
                rack="r1",
                agent=agent,
                machine=agent,
                queue=agent,
                job_id=job_id,
                at=datetime.now(UTC),
            )

    done, data = await asyncio.gather(setup.status("r1"), setup.status_json("r1"))
    assert done.code == 0, done.err
    assert re.search(r"^r1: last cycle started .+, still running; next check in", done.out, re.M)
    assert re.match(
        rf"  r1-m1 +healthy \S+ +passed +.+ +0 +1/1 +\S+ +(just now|.+ ago) +{JOB_ID}$",
        row(done.out, "r1-m1"),
    )
    assert re.match(
        r"  r1-new +unknown +- +- +0 +- +- +never +job-of-a-new-agent$", row(done.out, "r1-new")
    )
    assert "; 2 jobs in flight" in done.out

    [rack] = data["racks"]
    assert rack["last_cycle"]["status"] == "running"
    assert rack["last_cycle"]["finished_at"] is None
    agents = agents_of(data, "r1")
    assert (agents["r1-m1"]["job_in_flight"], agents["r1-m1"]["last_outcome"]) == (
        JOB_ID,
        "passed",
    )
    assert agents["r1-new"]["last_outcome"] is None
    assert agents["r1-m3"]["job_in_flight"] is None


async def test_status_json_has_exactly_the_documented_structure(setup: Setup) -> None:
    """--json prints racks with exactly the keys `status --help` documents."""
    await setup.cycle()
    data = await setup.status_json()
    assert list(data) == ["racks"]
    assert [r["rack"] for r in data["racks"]] == ["r1", "r2"]
    rack = data["racks"][0]
    assert list(rack) == ["rack", "last_cycle", "next_check", "incident", "drift", "agents"]
    assert rack["incident"] is None
    assert rack["drift"] == {"no_agent": [], "stale": [], "maas": []}
    assert set(rack["last_cycle"]) == {"started_at", "finished_at", "status", "error", "duration_s"}
    assert rack["last_cycle"]["status"] == "failures"
    assert rack["last_cycle"]["duration_s"] > 0
    started = datetime.fromisoformat(rack["last_cycle"]["started_at"])
    assert datetime.fromisoformat(rack["next_check"]) == started + timedelta(hours=6)
    agents = agents_of(data, "r1")
    assert list(agents) == ["r1-m1", "r1-m2", "r1-m3"]
    assert list(agents["r1-m2"]) == [
        "agent",
        "machine",
        "health",
        "last_outcome",
        "last_checked_at",
        "consecutive_failures",
        "pass_rate",
        "median_provision_s",
        "last_provision_s",
        "last_passed_at",
        "job_in_flight",
        "maas_status",
        "detail",
        "silence",
    ]
    failing, passing = agents["r1-m2"], agents["r1-m1"]
    assert failing["machine"] == "r1-m2"
    assert failing["detail"] == "provisioning exited 1 (device connector error)"
    assert failing["health"] == {"state": "unknown", "since": None, "reason": "", "job_id": None}
    assert failing["pass_rate"] == {"passed": 0, "judged": 1}
    assert (failing["median_provision_s"], failing["last_provision_s"]) == (None, None)
    assert failing["maas_status"] == "Deployed"
    assert list(passing["health"]) == ["state", "since", "reason", "job_id"]
    assert passing["silence"] is None
    assert passing["health"]["state"] == "healthy"
    assert passing["pass_rate"] == {"passed": 1, "judged": 1}
    assert 0 < passing["median_provision_s"] == passing["last_provision_s"] < 3


async def test_status_names_racks_and_lists_recorded_ones_no_longer_configured(
    setup: Setup, tmp_path: Path
) -> None:
    """Named racks only; with none named, configured racks then recorded ones, unscheduled."""
    await setup.cycle()
    config = write_config(
        tmp_path / "r1-only.toml", setup.lab, setup.urls, setup.state_file, racks=["r1"]
    )
    only_r2, done, as_json = await asyncio.gather(
        setup.status_json("r2"),
        rackwatch("status", "--config", str(config)),
        rackwatch("status", "--json", "--config", str(config)),
    )
    assert [r["rack"] for r in only_r2["racks"]] == ["r2"]
    assert done.code == 0, done.err
    assert re.search(r"^r2: .*; not scheduled \(not in the configuration\)$", done.out, re.M)
    data = json.loads(as_json.out)
    assert [(r["rack"], r["next_check"] is None) for r in data["racks"]] == [
        ("r1", False),
        ("r2", True),
    ]


async def test_status_of_a_rack_neither_configured_nor_recorded_is_a_usage_error(
    setup: Setup,
) -> None:
    """A typo in a rack name exits 2 and names the rack."""
    await setup.cycle(["r1"])
    done = await setup.status("r1", "r9")
    assert done.code == 2
    assert "unknown rack 'r9'" in done.err
    assert done.out == ""


async def test_status_before_any_check_says_so_and_exits_0(setup: Setup) -> None:
    """With no state file yet, status says so; --json gives the configured racks, never checked."""
    done, data = await asyncio.gather(setup.status(), setup.status_json())
    assert done.code == 0, done.err
    assert done.out.strip() == f"no checks recorded yet: {setup.state_file} does not exist"
    assert [(r["rack"], r["last_cycle"], r["agents"]) for r in data["racks"]] == [
        ("r1", None, []),
        ("r2", None, []),
    ]
    assert not setup.state_file.exists()


# status: health over time


async def test_status_shows_health_with_since_and_reason(setup: Setup) -> None:
    """Two failures make an agent unhealthy since its second, with the reason and job in DETAIL."""
    await setup.cycle(["r1"])
    await setup.cycle(["r1"])
    with Store.open_readonly(setup.state_file) as store:
        latest = store.history("r1-m2")[0]
    assert latest.finished_at is not None

    done, data = await asyncio.gather(setup.status("r1"), setup.status_json("r1"))
    assert done.code == 0, done.err
    reason = "failed: provisioning exited 1 (device connector error)"
    why = 'ERROR: MAAS deployment of r1-m2 failed: status "Failed deployment"'
    unhealthy = row(done.out, "r1-m2")
    assert re.match(
        rf"  r1-m2 +unhealthy \d+s +failed +.+ +2 +0/2 +- +never +"
        rf"{re.escape(reason)}: \S+ \S+ {re.escape(why)} .*\(job {latest.job_id}\)$",
        unhealthy,
    ), unhealthy
    assert re.match(r"  r1-m1 +healthy \d+s +passed .* 2/2 ", row(done.out, "r1-m1"))
    assert re.match(r"  r1-m3 +excluded \d+s +offline ", row(done.out, "r1-m3"))

    agents = agents_of(data, "r1")
    assert agents["r1-m2"]["health"] == {
        "state": "unhealthy",
        "since": latest.finished_at.isoformat(),
        "reason": reason,
        "job_id": latest.job_id,
    }
    assert agents["r1-m3"]["health"]["state"] == "excluded"
    assert agents["r1-m3"]["health"]["reason"].startswith("offline: offline: Set to offline by")


async def test_status_shows_the_pass_rate_and_flags_a_slower_provisioning(
    tmp_path: Path,
) -> None:
    """Pass rate over the latest 10 judged checks; median of 10 passes; twice it flagged."""
    o = Outcome
    slow: list[tuple[Outcome, float]] = [
        (o.PASSED, 100), (o.FAILED, 40), (o.PASSED, 100), (o.OFFLINE, 0), (o.PASSED, 100),
        (o.TIMED_OUT, 300), (o.PASSED, 100), (o.PASSED, 100), (o.BUSY, 0), (o.PASSED, 100),
        (o.PASSED, 100), (o.PASSED, 100), (o.FAILED, 40), (o.PASSED, 100), (o.PASSED, 250),
    ]  # fmt: skip
    history: dict[str, list[tuple[Outcome, float]]] = {
        "slow": slow,
        "steady": [(o.PASSED, 100), (o.PASSED, 100), (o.PASSED, 190)],  # only ×1.9
        "young": [(o.PASSED, 100), (o.PASSED, 300)],  # too few passes to judge
    }
    state_file = tmp_path / "state.db"
    start = datetime.now(UTC) - timedelta(days=10)
    with Store.open(state_file) as store:
        for step in range(len(slow)):
            at = start + timedelta(hours=6 * step)
            cycle_id = store.start_cycle("r1", at)
            for agent, checks in history.items():
                index = step - (len(slow) - len(checks))
                if index >= 0:
                    outcome, seconds = checks[index]
                    record(
                        store,
                        cycle_id,
                        agent,
                        outcome,
                        at,
                        seconds=seconds,
                        submitted_after=timedelta(seconds=5),
                        maas_status="Deployed",
                    )
            store.finish_cycle(cycle_id, at + timedelta(hours=1), "failures")
        trends = store.trends(["slow", "steady", "young", "nobody"])
    assert trends["slow"].provision_s == (250, *[100] * 9)
    assert (trends["slow"].passed, trends["slow"].judged) == (8, 10)
    assert trends["nobody"] == AgentTrend("nobody", 0, 0, (), None, None)

    config = tmp_path / "rw.toml"
    config.write_text(f'racks = ["r1"]\nstate_file = "{state_file}"\n')
    done, as_json = await asyncio.gather(
        rackwatch("status", "--config", str(config)),
        rackwatch("status", "--json", "--config", str(config)),
    )
    assert done.code == 0, done.err
    assert re.match(r"  slow .* 8/10 +1m 40s slower ×2\.5 +", row(done.out, "slow"))
    assert re.match(r"  steady .* 3/3 +1m 40s {2,}\d+d \d+h ago$", row(done.out, "steady"))
    assert re.match(r"  young .* 2/2 +3m 20s {2,}\d+d \d+h ago$", row(done.out, "young"))
    agents = agents_of(json.loads(as_json.out), "r1")
    assert {name: (a["pass_rate"], a["median_provision_s"], a["last_provision_s"])
            for name, a in agents.items()} == {
        "slow": ({"passed": 8, "judged": 10}, 100.0, 250.0),
        "steady": ({"passed": 3, "judged": 3}, 100.0, 190.0),
        "young": ({"passed": 2, "judged": 2}, 200.0, 300.0),
    }  # fmt: skip


async def test_status_shows_an_open_rack_incident(setup: Setup) -> None:
    """Two of three checked agents failing open an incident: a header line, JSON, --unhealthy."""
    setup.lab.set_behaviour("r1-m3", Behaviour.FAIL)
    await setup.cycle(["r1"])
    with Store.open_readonly(setup.state_file) as store:
        incident = store.open_incident("r1")
    assert incident is not None

    done, data, unhealthy = await asyncio.gather(
        setup.status(), setup.status_json(), setup.status("--unhealthy")
    )
    assert done.code == 0, done.err
    reason = (
        "2 of 3 checked agents failed (67%): suspected lab infrastructure failure"
        " (switch, power, MAAS images)"
    )
    lines = done.out.splitlines()
    assert lines[0].startswith("r1: last cycle started")
    assert re.fullmatch(rf"  ⚠ rack incident for \d+s: {re.escape(reason)}", lines[1]), lines[1]
    assert "rack incident" not in done.out.split("\n\nr2:")[1].split("\n\n")[0]
    assert done.out.strip().endswith("; 1 rack incident open")
    [r1, r2] = data["racks"]
    assert r1["incident"] == {"opened_at": incident.opened_at.isoformat(), "reason": reason}
    assert r2["incident"] is None
    # The failures of an incident are the lab's, not the machines'.
    assert {a["health"]["state"] for a in r1["agents"] if a["last_outcome"] == "failed"} == {
        "unknown"
    }

    assert unhealthy.code == 1, unhealthy.err
    head, blank, header, incident_line, rest = unhealthy.out.splitlines()
    assert (head, blank, rest) == (
        "needs a person: 1 rack incident, in 1 rack",
        "",
        "  no agent needs a person",
    )
    assert header.startswith("r1: last cycle started")
    assert incident_line.startswith("  ⚠ rack incident for ")


async def test_status_shows_drift_beside_health(tmp_path: Path) -> None:
    """Machines without an agent, stale agents and machines MAAS marks broken, per rack."""
    b = Behaviour
    rack = SimRack(
        "d1",
        [
            SimMachine("d1-m1", b.PASS),
            SimMachine("d1-m2", None),
            SimMachine("d1-m3", b.STALE),
            SimMachine("d1-m4", b.RECOVERY_FAIL),
            SimMachine("d1-m5", b.OFFLINE),
        ],
    )
    async with served(tmp_path, rack) as setup:
        setup.lab.set_maas_status("d1-m1", "Broken")
        await setup.cycle()
        setup.lab.set_maas_status("d1-m4", "Failed deployment")
        await setup.cycle()  # d1-m4 set itself offline after its failed recovery
        with Store.open_readonly(setup.state_file) as store:
            [_, first_stale] = store.history("d1-m3")  # newest first
        done, data, unhealthy, unhealthy_json = await asyncio.gather(
            setup.status(),
            setup.status_json(),
            setup.status("--unhealthy"),
            setup.status("--unhealthy", "--json"),
        )

    assert done.code == 0, done.err
    lines = done.out.splitlines()
    drift_lines = lines[lines.index(row(done.out, "d1-m5")) + 1 :][:3]
    assert drift_lines[0] == "  no agent: d1-m2"
    assert re.fullmatch(r"  stale: d1-m3 \(for \d+s\)", drift_lines[1]), drift_lines
    assert drift_lines[2] == (
        "  MAAS says: d1-m1 Broken (agent healthy), d1-m4 Failed deployment (agent excluded)"
    )
    [block] = data["racks"]
    assert block["drift"] == {
        "no_agent": ["d1-m2"],
        "stale": [{"agent": "d1-m3", "since": first_stale.created_at.isoformat()}],
        "maas": [
            {"agent": "d1-m1", "machine": "d1-m1", "maas_status": "Broken"},
            {"agent": "d1-m4", "machine": "d1-m4", "maas_status": "Failed deployment"},
        ],
    }
    assert agents_of(data, "d1")["d1-m1"]["maas_status"] == "Broken"

    # A stale agent, one its failed recovery took offline and a broken machine need a person;
    # a machine without an agent, and an agent an admin took offline, do not.
    assert unhealthy.code == 1, unhealthy.err
    listed = [line.split()[0] for line in unhealthy.out.splitlines() if line.startswith("  d1-")]
    assert listed == ["d1-m1", "d1-m3", "d1-m4"]
    assert unhealthy.out.splitlines()[0] == "needs a person: 3 agents, in 1 rack"
    assert "no agent:" not in unhealthy.out
    assert "  MAAS says: d1-m1 Broken" in unhealthy.out
    assert unhealthy_json.code == 1
    [only] = json.loads(unhealthy_json.out)["racks"]
    assert [a["agent"] for a in only["agents"]] == ["d1-m1", "d1-m3", "d1-m4"]
    assert only["drift"]["no_agent"] == []


async def test_status_unhealthy_lists_only_what_needs_a_person(setup: Setup) -> None:
    """--unhealthy lists the unhealthy agent alone and exits 1; once it passes, exits 0."""
    await setup.cycle()
    await setup.cycle()
    done, as_json = await asyncio.gather(
        setup.status("--unhealthy"), setup.status("--unhealthy", "--json")
    )
    assert done.code == 1, done.err
    lines = done.out.splitlines()
    assert lines[0] == "needs a person: 1 agent, in 1 rack"
    assert lines[2].startswith("r1: last cycle started")
    assert lines[3].split()[:2] == ["AGENT", "HEALTH"]
    assert [line.split()[:2] for line in lines[4:]] == [["r1-m2", "unhealthy"]]
    assert as_json.code == 1
    [rack] = json.loads(as_json.out)["racks"]
    assert (rack["rack"], [a["agent"] for a in rack["agents"]]) == ("r1", ["r1-m2"])

    setup.lab.set_behaviour("r1-m2", Behaviour.PASS)
    await setup.cycle()
    done, as_json = await asyncio.gather(
        setup.status("--unhealthy"), setup.status("--unhealthy", "--json")
    )
    assert (done.code, done.out, done.err) == (0, "nothing needs a person\n", "")
    assert (as_json.code, json.loads(as_json.out)) == (0, {"racks": []})


async def test_status_unhealthy_before_any_check_exits_0(setup: Setup) -> None:
    """With no state file yet nothing needs a person: exit 0, and --json lists no rack."""
    done, as_json = await asyncio.gather(
        setup.status("--unhealthy"), setup.status("--unhealthy", "--json")
    )
    assert (done.code, done.out.strip()) == (
        0,
        f"no checks recorded yet: {setup.state_file} does not exist",
    )
    assert (as_json.code, json.loads(as_json.out)) == (0, {"racks": []})


async def test_build_status_keeps_a_quarantined_agent_that_turned_busy_needing_a_person(
    tmp_path: Path,
) -> None:
    """Still excluded for its fail streak while it runs someone's job: it needs a person."""
    b = Behaviour
    rack = SimRack("q1", [SimMachine("q1-m1", b.FAIL_STREAK), SimMachine("q1-m2", b.OFFLINE)])
    async with served(tmp_path, rack) as setup:
        await setup.cycle()
        setup.lab.set_behaviour("q1-m1", b.BUSY)
        await setup.cycle()
        settings = setup.settings()
        with Store.open_readonly(setup.state_file) as store, store.reading():
            [status] = build_status(store, settings.racks, settings.schedule, datetime.now(UTC))
    [quarantined, _] = status.agents
    assert quarantined.last is not None and quarantined.last.outcome is Outcome.BUSY
    known = status.health_of("q1-m1")
    assert (known.state, known.outcome) == (Health.EXCLUDED, Outcome.QUARANTINED)
    assert known.reason.startswith("quarantined: ")
    assert status.health_of("q1-m2").outcome is Outcome.OFFLINE
    assert [state.agent for state in needing_a_person([status])[0].agents] == ["q1-m1"]


# history


async def test_history_is_newest_first_and_limited(setup: Setup) -> None:
    """history prints the agent's latest checks, newest first, at most --limit of them."""
    for _ in range(3):
        await setup.cycle(["r1"])
    with Store.open_readonly(setup.state_file) as store:
        recorded = store.history("r1-m2", limit=10)
    assert len(recorded) == 3

    history = ("history", "r1-m2", "--limit", "2", "--config", str(setup.config))
    done, text = await asyncio.gather(rackwatch(*history, "--json"), rackwatch(*history))
    assert done.code == 0, done.err
    data = json.loads(done.out)
    assert data["agent"] == "r1-m2"
    checks = data["checks"]
    assert [c["job_id"] for c in checks] == [c.job_id for c in recorded[:2]]
    assert checks[0]["created_at"] > checks[1]["created_at"]
    assert {(c["outcome"], c["provision_status"], c["rack"]) for c in checks} == {
        ("failed", 1, "r1")
    }

    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0] == "r1-m2: the latest 2 checks, newest first"
    assert lines[1].split() == [
        "TIME", "(UTC)", "RACK", "OUTCOME", "JOB", "ID", "PROVISION", "DURATION", "DETAIL",
    ]  # fmt: skip
    rows = [line for line in lines[2:] if not line.startswith(" ")]  # under a row: its job, log
    assert [line.split()[4] for line in rows] == [c.job_id for c in recorded[:2]]
    assert all(
        re.search(r" r1 +failed +\S+ +1 +[\d.]+s +provisioning exited 1", line) for line in rows
    )


async def test_history_shows_each_jobs_link_and_the_end_of_its_provision_log(
    setup: Setup,
) -> None:
    """Under a failed check: its job's page and its log's last lines; --log and --json, all of it."""
    await setup.cycle(["r1"])
    with Store.open_readonly(setup.state_file) as store:
        [check] = store.history("r1-m2")
    assert check.provision_log is not None
    logged = check.provision_log.splitlines()
    assert len(logged) > 3
    url = f"{setup.urls.testflinger}jobs/{check.job_id}"

    history = ("history", "r1-m2", "--config", str(setup.config))
    text, whole, done = await asyncio.gather(
        rackwatch(*history), rackwatch(*history, "--log"), rackwatch(*history, "--json")
    )
    assert text.code == whole.code == done.code == 0, text.err + whole.err + done.err
    assert text.out.splitlines()[3:] == [
        f"    job: {url}",
        f"    log: … {len(logged) - 3} earlier lines (history --log shows them)",
        *(f"         {line}" for line in logged[-3:]),
    ]
    assert "ERROR: MAAS deployment of r1-m2 failed" in text.out.splitlines()[-2]
    assert whole.out.splitlines()[3:] == [
        f"    job: {url}",
        f"    log: {logged[0]}",
        *(f"         {line}" for line in logged[1:]),
    ]
    [entry] = json.loads(done.out)["checks"]
    assert (entry["provision_log"], entry["url"]) == (check.provision_log, url)


async def test_history_links_under_web_url_and_never_shows_a_password(
    setup: Setup, tmp_path: Path
) -> None:
    """With web_url set, links go under it; a URL's user:password@ is left out of every link."""
    await setup.cycle(["r1"])
    with Store.open_readonly(setup.state_file) as store:
        [check] = store.history("r1-m1")
    web = write_config(
        tmp_path / "web.toml",
        setup.lab,
        setup.urls,
        setup.state_file,
        testflinger='web_url = "https://ui.example.com/testflinger"',
    )
    # Only url and web_url are read: no login, no secret, and no request to Testflinger.
    userinfo = tmp_path / "userinfo.toml"
    userinfo.write_text(
        f'state_file = "{setup.state_file}"\n[testflinger]\n'
        'url = "https://ci-bot:hunter2@testflinger.example.com:8443/"\nclient_id = "ci-bot"\n'
    )
    under_web, bare, bare_text = await asyncio.gather(
        rackwatch("history", "r1-m1", "--json", "--config", str(web)),
        rackwatch("history", "r1-m1", "--json", "--config", str(userinfo)),
        rackwatch("history", "r1-m1", "--config", str(userinfo)),
    )
    assert under_web.code == bare.code == bare_text.code == 0, under_web.err + bare.err
    assert json.loads(under_web.out)["checks"][0]["url"] == (
        f"https://ui.example.com/testflinger/jobs/{check.job_id}"
    )
    link = f"https://testflinger.example.com:8443/jobs/{check.job_id}"
    assert json.loads(bare.out)["checks"][0]["url"] == link
    assert f"    job: {link}" in bare_text.out.splitlines()
    assert "hunter2" not in bare.out + bare_text.out


async def test_status_reads_attention_for_a_rack_with_a_stale_agent(tmp_path: Path) -> None:
    """An ok rack with a stale agent reads attention; the summary counts skips by kind."""
    b = Behaviour
    r1 = rack("r1", b.PASS, b.STALE, b.MAINTENANCE, b.FAIL_STREAK)
    async with served(tmp_path, r1, SimRack("r2", [SimMachine("r2-m1", b.PASS)])) as setup:
        await setup.cycle()
        done, data = await asyncio.gather(setup.status(), setup.status_json())
    assert done.code == 0, done.err
    assert re.search(r"^r1: last cycle .*: attention; next check in", done.out, re.M), done.out
    assert re.search(r"^r2: last cycle .*: ok; next check in", done.out, re.M), done.out
    assert done.out.strip().splitlines()[-2] == (
        "2 racks, 5 agents by their last outcome: 2 passed, 0 failed or timed out, 0 errors,"
        " 2 not checkable (stale, quarantined, no queue), 1 set offline by an admin;"
        " 0 jobs in flight"
    )
    statuses = {rack["rack"]: rack["last_cycle"]["status"] for rack in data["racks"]}
    assert statuses == {"r1": "attention", "r2": "ok"}


async def test_history_of_an_unknown_agent_exits_1(setup: Setup) -> None:
    """An agent with no check recorded gets one line naming it, and exit 1."""
    missing = await rackwatch("history", "r1-m1", "--config", str(setup.config))
    assert missing.code == 1
    assert "no checks recorded yet" in missing.err

    await setup.cycle(["r1"])
    done = await rackwatch("history", "r1-m9", "--config", str(setup.config))
    assert done.code == 1
    assert done.err.strip() == f"rackwatch: no checks of agent 'r1-m9' in {setup.state_file}"


async def test_status_and_history_need_no_secret(setup: Setup, tmp_path: Path) -> None:
    """Run as root outside the service, without the MAAS key, status and history still work."""
    await setup.cycle()
    config = tmp_path / "no-secrets.toml"
    config.write_text(f'racks = ["r1"]\nstate_file = "{setup.state_file}"\n')
    status = await rackwatch("status", "--config", str(config))
    history = await rackwatch("history", "r1-m1", "--config", str(config))
    assert status.code == 0, status.err
    assert "r1-m1" in status.out
    assert history.code == 0, history.err
    assert "passed" in history.out
