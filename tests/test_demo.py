"""`rackwatch demo` as a real process: the story it tells, and the directory it leaves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rackwatch import cli, demo
from rackwatch.model import EventKind

_ENV = {
    name: value
    for name, value in os.environ.items()
    if not name.upper().startswith("RACKWATCH_")
    and name not in ("MAAS_URL", "MAAS_API_KEY", "CREDENTIALS_DIRECTORY")
}


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float


def run(*args: str, timeout: float = 120) -> Run:
    """`rackwatch ARGS` as a process, in an environment without the caller's RACKWATCH_*."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "rackwatch", *args],
        capture_output=True,
        text=True,
        env=_ENV,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


@dataclass
class Told:
    run: Run
    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "rackwatch.toml"

    def cycle(self, number: int) -> str:
        """The lines the story printed for cycle `number`."""
        found = re.search(rf"^cycle {number}: .*?(?=^cycle |^\n)", self.run.out, re.M | re.S)
        assert found is not None, f"no cycle {number} in:\n{self.run.out}"
        return found.group()


@pytest.fixture(scope="module")
def told(tmp_path_factory: pytest.TempPathFactory) -> Told:
    """One whole demo, whose output and directory the tests of this module read."""
    directory = tmp_path_factory.mktemp("demo") / "kept"
    done = run("demo", "--dir", str(directory))
    print(f"rackwatch demo took {done.seconds:.1f} s")  # the story's target: under 45 s
    return Told(done, directory)


def test_demo_tells_the_story_and_exits_0(told: Told) -> None:
    """Each step of the story is a line under the cycle that recorded it, and the demo exits 0."""
    assert told.run.code == 0, told.run.err
    assert "did not happen" not in told.run.err
    assert re.search(r"^  \d+ passed", told.cycle(1), re.M)
    assert not re.search(r"unhealthy\s+tor3-a-m06", told.cycle(1))
    assert re.search(r"^  unhealthy\s+tor3-a-m06: failed", told.cycle(2), re.M)
    assert re.search(r"^  incident\s+tor3-a: \d+ of \d+ checked agents failed", told.cycle(3), re.M)
    assert re.search(r"^  incident over\s+tor3-a$", told.cycle(4), re.M)
    assert re.search(r"^  recovered\s+tor3-a-m06: passed", told.cycle(4), re.M)
    assert re.search(r"^  drift\s+tor3-b-m03: MAAS marks the machine Broken", told.cycle(5), re.M)


def test_demo_ends_with_the_report_and_the_directory_it_leaves(told: Told) -> None:
    """After the story: the last cycle's report, what the outcomes mean, then DIR and its commands."""
    out = told.run.out
    report = out[out.index("\ntor3-a: ") :]
    for outcome in ("passed", "failed", "timed_out", "offline", "busy", "stale", "quarantined"):
        assert f"  {outcome} " in report or f" {outcome}  " in report, outcome
    assert "no_queue" in report and "no_agent" in report
    assert "What the outcomes mean" in report
    config = told.config.resolve()
    assert f"rackwatch silence --list --config {config}\n" in out
    assert out.rstrip().endswith(f"rackwatch web --config {config}")
    assert f"stay in {told.directory.resolve()}" in out
    assert f"rackwatch status --config {config}\n" in out
    assert f"rackwatch history tor3-a-m06 --config {config}\n" in out
    assert (told.directory / "state.db").is_file()


def test_status_reads_the_story_from_the_directory_after_the_lab_is_gone(told: Told) -> None:
    """status --config DIR/rackwatch.toml shows the story's agents as the story left them."""
    shown = run("status", "--config", str(told.config))
    assert shown.code == 0, shown.err
    for agent in ("tor3-a-m06", "tor3-a-m07", "tor3-b-m03", "tor3-b-m08", "tor3-c-m08"):
        assert agent in shown.out, agent
    assert "unhealthy" in shown.out and "healthy" in shown.out

    as_json = run("status", "--config", str(told.config), "--json")
    assert as_json.code == 0, as_json.err
    racks = {rack["rack"]: rack for rack in json.loads(as_json.out)["racks"]}
    assert list(racks) == ["tor3-a", "tor3-b", "tor3-c"]
    agents = {a["agent"]: a for rack in racks.values() for a in rack["agents"]}
    assert agents["tor3-a-m06"]["health"]["state"] == "healthy"  # recovered
    assert agents["tor3-a-m06"]["last_outcome"] == "passed"
    assert agents["tor3-b-m08"]["health"]["state"] == "unhealthy"
    assert agents["tor3-b-m03"]["maas_status"] == "Broken"
    assert agents["tor3-b-m03"]["last_outcome"] == "failed"
    assert racks["tor3-a"]["incident"] is None  # opened, then closed


def test_history_reads_an_agents_story_from_the_directory(told: Told) -> None:
    """history AGENT --config DIR/rackwatch.toml shows its failures, then its recovery."""
    shown = run("history", "tor3-a-m06", "--config", str(told.config))
    assert shown.code == 0, shown.err
    assert "passed" in shown.out and "failed" in shown.out

    as_json = run("history", "tor3-a-m06", "--config", str(told.config), "--json")
    assert as_json.code == 0, as_json.err
    outcomes = [check["outcome"] for check in json.loads(as_json.out)["checks"]]
    assert outcomes == ["passed", "passed", "failed", "failed", "failed"]  # newest first


def test_silence_list_reads_the_directory(told: Told) -> None:
    """silence --list works on the demo's directory, with no lab to ask."""
    shown = run("silence", "--list", "--config", str(told.config))
    assert (shown.code, shown.out.strip()) == (0, "no silences in force")


def test_demo_json_prints_the_last_report_alone_on_stdout(tmp_path: Path) -> None:
    """With --json, stdout is the final report as run-once --json has it; the story is on stderr."""
    done = run("demo", "--dir", str(tmp_path / "demo"), "--json")
    assert done.code == 0, done.err
    racks = json.loads(done.out)["racks"]
    assert [rack["rack"] for rack in racks] == ["tor3-a", "tor3-b", "tor3-c"]
    outcomes = {a["outcome"] for rack in racks for a in rack["agents"]}
    assert {"passed", "failed", "timed_out", "no_agent"} <= outcomes
    assert "cycle 5: " in done.err and "rackwatch status --config" in done.err


def test_demo_refuses_a_directory_that_holds_something(tmp_path: Path) -> None:
    """--dir must be new or empty: the story needs a state file of its own (exit 2)."""
    (tmp_path / "state.db").write_text("not the demo's")
    done = run("demo", "--dir", str(tmp_path))
    assert done.code == 2
    assert "not an empty directory" in done.err
    assert (tmp_path / "state.db").read_text() == "not the demo's"


def test_a_step_that_did_not_happen_is_named_and_fails_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cycle that did not record what its scene expects exits 1 with a line naming the step."""
    as_built = demo.SCENES[0]
    expected = demo.Expectation(
        "tor3-a-m06 is announced unhealthy after one failure",
        lambda chapter: any(
            event.kind is EventKind.UNHEALTHY and event.agent == demo.ILL
            for event in chapter.events
        ),
    )
    monkeypatch.setattr(demo, "SCENES", (demo.Scene(as_built.title, as_built.change, (expected,)),))

    code = cli.main(["demo", "--dir", str(tmp_path / "demo")])

    err = capsys.readouterr().err
    assert code == 1
    assert (
        "rackwatch: demo: this step of the story did not happen: cycle 1: tor3-a-m06 is"
        " announced unhealthy after one failure"
    ) in err
