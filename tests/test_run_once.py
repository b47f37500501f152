"""`rackwatch run-once --agent`: one machine checked again, as a real process on the simulated lab."""

from __future__ import annotations

import json
from pathlib import Path

from rackwatch.simlab import Behaviour
from rackwatch.store import Store
from tests.harness import LabFactory, rack, rackwatch, write_config


async def test_one_agent_gets_one_job_and_one_row(served: LabFactory, tmp_path: Path) -> None:
    """--agent checks only that agent: one job, one row, and the other rack is not touched."""
    harness = await served([rack("r1", *[Behaviour.PASS] * 3), rack("r2", Behaviour.PASS)])
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)

    done = await rackwatch("run-once", "--config", str(config), "--agent", "R1-M2", "--json")

    assert done.code == 0, done.err
    [report] = json.loads(done.out)["racks"]
    assert report["rack"] == "r1"
    assert [a["agent"] for a in report["agents"]] == ["r1-m2"]
    assert [body["job_queue"] for body in harness.lab.submissions] == ["r1-m2"]
    with Store.open_readonly(harness.state_file) as store:
        assert store.racks() == ["r1"]
        [cycle] = [store.last_cycle("r1", partial=True)]
        assert cycle is not None and cycle.partial
        assert [c.agent for c in store.checks_of_cycle(cycle.id)] == ["r1-m2"]


async def test_a_partial_cycle_keeps_the_rack_whole_in_status(
    served: LabFactory, tmp_path: Path
) -> None:
    """After a full cycle, checking one agent again leaves status listing every agent."""
    harness = await served([rack("r1", *[Behaviour.PASS] * 3)])
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)
    assert (await rackwatch("run-once", "--config", str(config))).code == 0
    assert (await rackwatch("run-once", "--config", str(config), "--agent", "r1-m3")).code == 0

    done = await rackwatch("status", "--config", str(config), "--json")
    assert done.code == 0, done.err
    [status] = json.loads(done.out)["racks"]
    assert [a["agent"] for a in status["agents"]] == ["r1-m1", "r1-m2", "r1-m3"]
    # The rack's last cycle, and so its schedule, is the full one.
    with Store.open_readonly(harness.state_file) as store:
        last = store.last_cycle("r1")
        assert last is not None and not last.partial
        assert status["last_cycle"]["started_at"] == last.started_at.isoformat()


async def test_a_name_in_no_rack_is_a_usage_error(served: LabFactory, tmp_path: Path) -> None:
    """An agent that no configured rack holds exits 2 naming it, and nothing is checked."""
    harness = await served([rack("r1", Behaviour.PASS)])
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)

    done = await rackwatch(
        "run-once", "--config", str(config), "--agent", "r1-m1", "--agent", "nope"
    )

    assert done.code == 2
    assert done.err.strip() == "rackwatch: no machine named 'nope' in the racks checked (r1)"
    assert harness.lab.submissions == []
    assert not harness.state_file.exists()
