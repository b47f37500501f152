"""Silences end to end: `rackwatch silence` and `unsilence` as processes on the state file of real
cycles against the simulated lab (and of a running daemon), what the alerts leave out, what
`status` and `history` show, and the one announcement when a silence ends."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rackwatch.errors import StoreError
from rackwatch.model import Health
from rackwatch.simlab import Behaviour
from rackwatch.store import Store
from tests.harness import (
    Daemon,
    Done,
    Harness,
    LabFactory,
    Receiver,
    rack,
    rackwatch,
    until,
    write_config,
)

B = Behaviour
UNTIL = re.compile(r"silenced until \d{4}-\d\d-\d\d \d\d:\d\d UTC by alice: ")


@dataclass
class Setup:
    """A served lab of one rack of four machines, and a configuration naming it."""

    harness: Harness
    config: Path

    async def run(self, *args: str, user: str = "alice") -> Done:
        """A rackwatch command as a process, run under sudo by `user`."""
        return await rackwatch(*args, "--config", str(self.config), env={"SUDO_USER": user})

    def alerts(self) -> list[list[tuple[str, str | None]]]:
        """Each queued alert as (kind, agent) pairs, oldest first."""
        return [[(e["kind"], e["agent"]) for e in a.body["events"]] for a in self.pending()]

    def pending(self) -> list[Any]:
        with Store.open_readonly(self.harness.state_file) as store:
            return store.pending_alerts()

    def health(self, agent: str) -> Health:
        with Store.open_readonly(self.harness.state_file) as store:
            return store.health()[agent][1].state


@pytest.fixture
async def setup(served: LabFactory, tmp_path: Path) -> Setup:
    harness = await served([rack("r1", B.PASS, B.PASS, B.PASS, B.PASS)])
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)
    await harness.cycle()  # the state file, with every agent healthy
    return Setup(harness, config)


async def test_a_silenced_agent_turning_unhealthy_is_neither_announced_nor_needing_a_person(
    setup: Setup,
) -> None:
    """Its fall is recorded but not announced, and status --unhealthy leaves it out (exit 0)."""
    done = await setup.run("silence", "r1-m1", "--reason", "reflashing the BMC", "--for", "1h")
    assert done.code == 0, done.err
    assert re.fullmatch(f"r1-m1: {UNTIL.pattern}reflashing the BMC", done.out.strip())
    setup.harness.lab.set_behaviour("r1-m1", B.FAIL)
    for _ in range(3):
        await setup.harness.cycle()
    assert setup.health("r1-m1") is Health.UNHEALTHY
    assert setup.alerts() == []

    unhealthy = await setup.run("status", "--unhealthy")
    assert (unhealthy.code, unhealthy.out) == (0, "nothing needs a person\n")
    status, as_json, history = await asyncio.gather(
        setup.run("status"), setup.run("status", "--json"), setup.run("history", "r1-m1")
    )
    [row] = [line for line in status.out.splitlines() if line.startswith("  r1-m1 ")]
    assert row.split()[1] == "unhealthy" and "(silenced)" in row
    [said] = [line for line in status.out.splitlines() if line.startswith("  r1-m1: ")]
    assert UNTIL.search(said) and said.endswith(": reflashing the BMC")
    agents = {a["agent"]: a for a in json.loads(as_json.out)["racks"][0]["agents"]}
    silence = agents["r1-m1"]["silence"]
    assert list(silence) == ["until", "by", "reason", "rack"]
    assert (silence["by"], silence["reason"], silence["rack"]) == (
        "alice",
        "reflashing the BMC",
        None,
    )
    assert datetime.fromisoformat(silence["until"]) > datetime.now(UTC)
    assert agents["r1-m2"]["silence"] is None
    assert history.code == 0, history.err
    assert UNTIL.match(history.out.splitlines()[1])


async def test_unsilencing_brings_an_unhealthy_agent_back_and_announces_it_once(
    setup: Setup,
) -> None:
    """After unsilence, status --unhealthy lists it (exit 1) and the next cycle announces it."""
    await setup.run("silence", "r1-m1", "--reason", "reflashing the BMC")
    setup.harness.lab.set_behaviour("r1-m1", B.FAIL)
    for _ in range(2):
        await setup.harness.cycle()
    assert setup.alerts() == []

    done = await setup.run("unsilence", "r1-m1")
    assert done.code == 0, done.err
    assert re.fullmatch(
        f"r1-m1: no longer silenced \\(was {UNTIL.pattern}reflashing the BMC\\)", done.out.strip()
    )
    [said] = re.findall(r"until (\S+ \S+) UTC", done.out)
    assert datetime.fromisoformat(f"{said}Z") > datetime.now(UTC) + timedelta(days=6)  # its until
    unhealthy = await setup.run("status", "--unhealthy")
    assert unhealthy.code == 1
    assert unhealthy.out.splitlines()[0] == "needs a person: 1 agent, in 1 rack"
    assert [line.split()[:2] for line in unhealthy.out.splitlines()[4:]] == [["r1-m1", "unhealthy"]]

    await setup.harness.cycle()
    assert setup.alerts() == [[("unhealthy", "r1-m1")]]
    [event] = setup.pending()[0].body["events"]
    assert event["reason"].startswith("still unhealthy after its silence ended: failed: ")
    await setup.harness.cycle()
    assert setup.alerts() == [[("unhealthy", "r1-m1")]]  # once only


async def test_a_silence_that_expires_while_the_agent_is_unhealthy_announces_it_once(
    setup: Setup,
) -> None:
    """The first cycle after its `until` announces the agent; the cycle after announces nothing."""
    await setup.run("silence", "r1-m1", "--reason", "reflashing the BMC", "--for", "1h")
    setup.harness.lab.set_behaviour("r1-m1", B.FAIL)
    for _ in range(2):
        await setup.harness.cycle()
    assert setup.health("r1-m1") is Health.UNHEALTHY
    assert setup.alerts() == []

    # Shortened to a second: silencing a silenced agent replaces its silence.
    done = await setup.run("silence", "r1-m1", "--reason", "nearly done", "--for", "1s")
    assert done.code == 0, done.err
    assert "(replaces the silence until " in done.out and " by alice)" in done.out
    with Store.open_readonly(setup.harness.state_file) as store:
        [left] = store.silences()
    await until(lambda: datetime.now(UTC) > left.until)
    await setup.harness.cycle()
    assert setup.alerts() == [[("unhealthy", "r1-m1")]]
    await setup.harness.cycle()
    assert setup.alerts() == [[("unhealthy", "r1-m1")]]
    with Store.open_readonly(setup.harness.state_file) as store:
        assert store.silences() == []  # settled


async def test_a_rack_silence_stops_its_incident_alert(setup: Setup) -> None:
    """A silenced rack's incident opens unannounced; its end announces the incident still open."""
    done = await setup.run("silence", "--rack", "r1", "--reason", "switch swap", "--for", "2h")
    assert done.code == 0, done.err
    assert done.out.startswith("rack r1: silenced until ")
    for name in ("r1-m1", "r1-m2", "r1-m3"):
        setup.harness.lab.set_behaviour(name, B.FAIL)
    for _ in range(2):
        await setup.harness.cycle()
    with Store.open_readonly(setup.harness.state_file) as store:
        incident = store.open_incident("r1")
    assert incident is not None and "3 of 4 checked agents failed" in incident.reason
    assert setup.alerts() == []
    status, unhealthy = await asyncio.gather(
        setup.run("status"), setup.run("status", "--unhealthy")
    )
    assert any(
        line.startswith("  rack silenced until ") and line.endswith("by alice: switch swap")
        for line in status.out.splitlines()
    )
    assert "⚠ rack incident for" in status.out
    assert (unhealthy.code, unhealthy.out) == (0, "nothing needs a person\n")

    done = await setup.run("unsilence", "--rack", "r1")
    assert done.code == 0, done.err
    await setup.harness.cycle()
    assert setup.alerts() == [[("incident_opened", None)]]
    [event] = setup.pending()[0].body["events"]
    assert event["reason"].startswith("still open after its silence ended: 3 of 4 checked")
    for name in ("r1-m1", "r1-m2", "r1-m3"):
        setup.harness.lab.set_behaviour(name, B.PASS)
    await setup.harness.cycle()
    assert setup.alerts() == [[("incident_opened", None)], [("incident_closed", None)]]


async def test_a_silenced_agents_drift_is_not_announced(setup: Setup) -> None:
    """MAAS marking a silenced agent's machine Broken is left out; another machine's is not."""
    assert (await setup.run("silence", "r1-m2", "--reason", "RMA")).code == 0
    setup.harness.lab.set_maas_status("r1-m2", "Broken")
    setup.harness.lab.set_maas_status("r1-m3", "Broken")
    await setup.harness.cycle()
    assert setup.alerts() == [[("drift", "r1-m3")]]


async def test_silence_list_shows_what_is_silenced_until_when_by_whom_and_why(
    setup: Setup,
) -> None:
    """--list has one row per silence in force, --json the same as data; ended ones are gone."""
    await setup.run("silence", "r1-m1", "r1-m2", "--reason", "reflashing", user="bob")
    day = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    done = await setup.run("silence", "--rack", "r1", "--reason", "switch swap", "--until", day)
    assert done.code == 0, done.err
    assert (await setup.run("unsilence", "r1-m2")).code == 0
    text, as_json = await asyncio.gather(
        setup.run("silence", "--list"), setup.run("silence", "--list", "--json")
    )
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0] == "2 silences in force"
    assert lines[1].split() == ["SILENCED", "UNTIL", "(UTC)", "BY", "SINCE", "(UTC)", "REASON"]
    assert [line.split()[:2] for line in lines[2:]] == [
        ["r1-m1", lines[2].split()[1]],
        ["rack", "r1"],
    ]
    assert lines[2].split()[3:4] == ["bob"] and lines[2].endswith("  reflashing")
    listed = json.loads(as_json.out)["silences"]
    assert [(s["agent"], s["rack"], s["by"], s["reason"]) for s in listed] == [
        ("r1-m1", None, "bob", "reflashing"),
        (None, "r1", "alice", "switch swap"),
    ]
    assert listed[1]["until"] == f"{day}T00:00:00+00:00"
    assert list(listed[0]) == ["agent", "rack", "until", "by", "reason", "created_at"]


async def test_unsilence_of_what_has_no_silence_exits_1_naming_it(setup: Setup) -> None:
    """An agent with no silence of its own is named, and one its rack still silences says so."""
    await setup.run("silence", "--rack", "r1", "--reason", "switch swap")
    done = await setup.run("unsilence", "r1-m1", "r1-m2")
    assert done.code == 1
    still = [
        re.fullmatch(f"(r1-m.): still {UNTIL.pattern}switch swap \\(its rack's silence\\)", line)
        for line in done.out.splitlines()
    ]
    assert [m.group(1) if m else None for m in still] == ["r1-m1", "r1-m2"]
    assert done.err.splitlines() == [
        "rackwatch: r1-m1 has no silence of its own in force",
        "rackwatch: r1-m2 has no silence of its own in force",
    ]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["r1-m9", "--reason", "x"], "unknown agent 'r1-m9': never checked"),
        (["--rack", "r9", "--reason", "x"], "unknown rack 'r9': never checked"),
        (["r1-m1"], "--reason must say why"),
        (["r1-m1", "--reason", "x", "--for", "91d"], "a silence may last at most 90 days"),
        (["r1-m1", "--reason", "x", "--for", "soon"], "--for 'soon': invalid duration"),
        (["r1-m1", "--reason", "x", "--until", "2020-01-01"], "--until 2020-01-01 00:00 UTC has"),
        (["--reason", "x"], "name an agent or a --rack to silence"),
        (["r1-m1", "--list"], "--list takes no AGENT"),
    ],
)
async def test_a_silence_that_cannot_be_is_a_usage_error_that_silences_nothing(
    setup: Setup, args: list[str], said: str
) -> None:
    """Exit 2 with one line saying why, and no silence written."""
    done = await setup.run("silence", *args)
    assert done.code == 2
    [line] = done.err.splitlines()
    assert line.startswith(f"rackwatch: {said}")
    with Store.open_readonly(setup.harness.state_file) as store:
        assert store.silences() == []


async def test_silence_before_any_state_file_exits_66(tmp_path: Path) -> None:
    """With no state file there is nothing to silence in: exit 66 naming the file; --list is empty."""
    config = tmp_path / "rw.toml"
    config.write_text(f'racks = ["r1"]\nstate_file = "{tmp_path / "state.db"}"\n')
    done = await rackwatch("silence", "r1-m1", "--reason", "x", "--config", str(config))
    assert done.code == 66
    assert done.err.startswith(f"rackwatch: no checks recorded yet: {tmp_path / 'state.db'}")
    assert not (tmp_path / "state.db").exists()
    listed = await rackwatch("silence", "--list", "--json", "--config", str(config))
    assert (listed.code, json.loads(listed.out)) == (0, {"silences": []})


# While the daemon runs


def _health(state_file: Path, agent: str) -> Health | None:
    """The agent's recorded health; None before it has one, or while the file is being made."""
    try:
        with Store.open_readonly(state_file) as store:
            known = store.health().get(agent)
    except StoreError:
        return None
    return known[1].state if known else None


async def test_silence_and_unsilence_work_while_the_daemon_runs(
    daemon: Daemon, receiver: Receiver
) -> None:
    """Run against a running daemon's state file, they keep an agent quiet, then let it speak once."""
    daemon.write_config(["r1"])
    text = daemon.config.read_text()
    daemon.config.write_text(
        f'{text}[health]\nfailures_to_unhealthy = 1\n[alerts]\nwebhook_url = "{receiver.url}"\n'
    )
    config = ("--config", str(daemon.config))
    env = {"SUDO_USER": "alice"}
    await daemon.start()
    await until(lambda: _health(daemon.state_file, "r1-m1") is Health.HEALTHY)

    done = await rackwatch("silence", "r1-m1", "--reason", "reflashing", *config, env=env)
    assert done.code == 0, done.err
    daemon.lab.set_behaviour("r1-m1", B.FAIL)
    await until(lambda: _health(daemon.state_file, "r1-m1") is Health.UNHEALTHY)
    cycles = daemon.cycles("r1")
    await until(lambda: daemon.cycles("r1") >= cycles + 1)
    unhealthy = await rackwatch("status", "--unhealthy", *config)
    assert (unhealthy.code, unhealthy.out) == (0, "nothing needs a person\n")
    assert receiver.messages == []

    done = await rackwatch("unsilence", "r1-m1", *config, env=env)
    assert done.code == 0, done.err
    await until(lambda: len(receiver.messages) >= 1)
    cycles = daemon.cycles("r1")
    await until(lambda: daemon.cycles("r1") >= cycles + 2)
    code, events = await daemon.stop()
    assert code == 0
    assert receiver.kinds() == [[("unhealthy", "r1-m1")]]
    assert "still unhealthy after its silence ended" in receiver.messages[0]["text"]
    assert not [e for e in events if e.get("level") in ("error", "critical")]
