"""`rackwatch run-once` as a process on a lab that misbehaves: answers without end, huge or nested
without end, and a machine that MAAS lists in two racks."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import pytest

from rackwatch.simlab import Behaviour, Fault, FaultKind, SimMachine, SimRack
from rackwatch.store import Store
from tests.harness import Daemon, Done, Harness, LabFactory, rack, rackwatch, until, write_config

# Runs the command given after the report path, then writes the peak RSS of that command alone
# (in KiB, as Linux counts ru_maxrss) to the report path, and exits with its code.
MEASURED = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
    "open(sys.argv[1], 'w').write(str(rss)); sys.exit(code)"
)
PEAK_RSS_LIMIT_KIB = 300 * 1024


async def measured_run_once(config: Path, report: Path) -> tuple[Done, int]:
    """`rackwatch run-once` of every configured rack, and its peak RSS in KiB."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        MEASURED,
        str(report),
        sys.executable,
        "-m",
        "rackwatch",
        "run-once",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    peak_kib = int(await asyncio.to_thread(report.read_text))
    return Done(process.returncode, out.decode(), err.decode()), peak_kib


def cycle_ends(harness: Harness, racks: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """Each rack's last cycle as the state file has it: (status, error)."""
    with Store.open_readonly(harness.state_file) as store:
        cycles = {name: store.last_cycle(name) for name in racks}
    ends = {}
    for name, cycle in cycles.items():
        assert cycle is not None and cycle.finished_at is not None
        ends[name] = (cycle.status, cycle.error)
    return ends


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (
            Fault(FaultKind.ENDLESS, "maas", times=None),
            "maas GET /MAAS/api/2.0/machines/ answered 200 with a body over 64 MiB, the limit"
            " for maas answers; reading stopped there",
        ),
        (
            Fault(FaultKind.HUGE, "maas", times=None),
            "maas GET /MAAS/api/2.0/machines/ answered 200 with a body over 64 MiB, the limit"
            " for maas answers; its length is 419,430,400 bytes",
        ),
        (
            Fault(FaultKind.DEEP, "maas", times=None),
            "maas GET /MAAS/api/2.0/machines/ answered 200 with JSON nested more than 64 levels"
            " deep",
        ),
        (
            Fault(FaultKind.DEEP, "testflinger", path="/v1/agents/data", times=None),
            "testflinger GET /v1/agents/data answered 200 with JSON nested more than 64 levels"
            " deep",
        ),
    ],
    ids=["endless", "huge", "deep", "deep-agents"],
)
async def test_an_answer_too_big_or_too_deep_is_a_rack_error_in_bounded_memory(
    served: LabFactory, tmp_path: Path, fault: Fault, error: str
) -> None:
    """Both racks end 'error' with one line, exit 69, no traceback, peak RSS under 300 MB."""
    harness = await served([rack("r1", None), rack("r2", None)])
    harness.lab.inject(fault)
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)

    done, peak_kib = await measured_run_once(config, tmp_path / "rss")

    assert done.code == 69, done.err
    assert "Traceback" not in done.err
    assert re.search(rf"^r1: error in \d+s\n  {re.escape(error)}\n", done.out, re.MULTILINE)
    assert cycle_ends(harness, ["r1", "r2"]) == {"r1": ("error", error), "r2": ("error", error)}
    assert peak_kib < PEAK_RSS_LIMIT_KIB, f"peak RSS {peak_kib} KiB"


def two_racks() -> list[SimRack]:
    """Racks r1 and r2, and machine "both" tagged with each."""
    return [
        SimRack("r1", [SimMachine("r1-m1"), SimMachine("both", tags=("r2",))]),
        SimRack("r2", [SimMachine("r2-m1")]),
    ]


def outcomes_of(done: Done) -> dict[str, dict[str, tuple[str, str]]]:
    """Each rack's agents in run-once --json: (outcome, detail)."""
    return {
        report["rack"]: {a["agent"]: (a["outcome"], a["detail"]) for a in report["agents"]}
        for report in json.loads(done.out)["racks"]
    }


async def test_a_machine_in_two_racks_checked_together_is_busy_in_one(
    served: LabFactory, tmp_path: Path
) -> None:
    """One run-once of both racks: one job for the machine, busy in the other rack, exit 0."""
    harness = await served(two_racks())
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)

    done = await rackwatch("run-once", "--config", str(config), "--json")

    assert done.code == 0, done.err
    assert "Traceback" not in done.err
    seen = outcomes_of(done)
    [checked] = [name for name, agents in seen.items() if agents["both"][0] == "passed"]
    [other] = [name for name in seen if name != checked]
    busy = ("busy", f"in rack {checked} too, whose cycle checks it in this run")
    assert seen[other]["both"] == busy
    assert len(harness.lab.submissions_for("both")) == 1


async def test_a_machine_in_two_racks_checked_rack_by_rack_passes_in_each(
    served: LabFactory, tmp_path: Path
) -> None:
    """run-once r1, then run-once r2: the machine is checked, and passes, in each."""
    harness = await served(two_racks())
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)

    first = await rackwatch("run-once", "r1", "--config", str(config), "--json")
    second = await rackwatch("run-once", "r2", "--config", str(config), "--json")

    for done in (first, second):
        assert done.code == 0, done.err
        assert "Traceback" not in done.err
    assert outcomes_of(first)["r1"]["both"][0] == "passed"
    assert outcomes_of(second)["r2"]["both"][0] == "passed"
    assert len(harness.lab.submissions_for("both")) == 2


def events_of(done: Done, name: str) -> list[dict[str, object]]:
    """The log events of that name that run-once --log-format json wrote."""
    lines = (json.loads(line) for line in done.err.splitlines() if line.startswith("{"))
    return [event for event in lines if event["event"] == name]


async def test_agent_records_lacking_fields_are_said_once_per_field(
    served: LabFactory, tmp_path: Path
) -> None:
    """Records without updated_at and provision_streak_*: one warning per field, naming the
    rule it turns off and for how many agents; the agents are still checked."""
    b = Behaviour
    harness = await served([rack("r1", b.PASS, b.FAIL_STREAK), rack("r2", b.PASS)])
    harness.lab.inject(Fault(FaultKind.BARE_AGENTS, "testflinger", "/v1/agents/data", times=None))
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)

    done = await rackwatch("run-once", "--config", str(config), "--json", "--log-format", "json")

    assert done.code == 0, done.err
    said = [
        (e["level"], e["field"], e["detail"]) for e in events_of(done, "testflinger.records_lack")
    ]
    assert said == [
        (
            "warning",
            "updated_at",
            "stale detection is off for 3 agents: Testflinger's records lack updated_at",
        ),
        (
            "warning",
            "provision_streak_*",
            "quarantine detection is off for 3 agents: Testflinger's records lack"
            " provision_streak_*",
        ),
    ]
    # Its fail streak of 25 unseen, r1-m2 is given a job rather than quarantined.
    assert outcomes_of(done)["r1"]["r1-m2"][0] == "passed"


async def test_full_agent_records_are_said_nothing_of(served: LabFactory, tmp_path: Path) -> None:
    """The same lab serving whole records: r1-m2 is quarantined, and no field is said missing."""
    b = Behaviour
    harness = await served([rack("r1", b.PASS, b.FAIL_STREAK), rack("r2", b.PASS)])
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)

    done = await rackwatch("run-once", "--config", str(config), "--json", "--log-format", "json")

    assert done.code == 0, done.err
    assert events_of(done, "testflinger.records_lack") == []
    assert outcomes_of(done)["r1"]["r1-m2"][0] == "quarantined"


async def test_the_daemon_says_what_records_lack_once_for_its_life(daemon: Daemon) -> None:
    """Cycle after cycle of records without the fields: still one warning per field."""
    daemon.lab.inject(Fault(FaultKind.BARE_AGENTS, "testflinger", "/v1/agents/data", times=None))
    await daemon.start()
    await until(lambda: daemon.cycles("r1") >= 2 and daemon.cycles("r2") >= 2)

    code, events = await daemon.stop()

    assert code == 0
    said = [(e["field"], e["detail"]) for e in events if e["event"] == "testflinger.records_lack"]
    assert said == [
        (
            "updated_at",
            "stale detection is off for 3 agents: Testflinger's records lack updated_at",
        ),
        (
            "provision_streak_*",
            "quarantine detection is off for 3 agents: Testflinger's records lack"
            " provision_streak_*",
        ),
    ]
