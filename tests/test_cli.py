"""`rackwatch` as a real process against the simulated lab served by the test."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rackwatch import cli
from rackwatch.locks import RackLocks
from rackwatch.simlab import Behaviour, Fault, FaultKind, Lab, LabUrls, SimMachine, SimRack
from rackwatch.store import Store
from tests.harness import LabFactory, rack, rackwatch, start, until, write_config


@dataclass
class Setup:
    lab: Lab
    urls: LabUrls
    config: Path
    state_file: Path


@pytest.fixture
async def setup(served: LabFactory, tmp_path: Path) -> Setup:
    b = Behaviour
    rack = SimRack("r1", [SimMachine("r1-m1", b.PASS), SimMachine("r1-m2", b.OFFLINE)])
    harness = await served([rack], slow_factor=20.0)  # the lab's own slow factor
    state_file = tmp_path / "state.db"
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, state_file)
    return Setup(harness.lab, harness.urls, config, state_file)


async def test_run_once_all_passed_exits_0(setup: Setup) -> None:
    """Skips are not failures: one pass and one offline agent exit 0 with a table."""
    done = await rackwatch("run-once", "--config", str(setup.config))
    assert done.code == 0, done.err
    assert "r1: ok" in done.out
    assert "r1-m1" in done.out and "passed" in done.out
    assert "offline" in done.out
    assert "1 rack: 2 agents, 1 passed, 0 failed" in done.out


async def test_run_once_json_has_exactly_the_documented_shape(setup: Setup) -> None:
    """--json prints the racks with exactly the documented keys."""
    done = await rackwatch("run-once", "r1", "--config", str(setup.config), "--json")
    assert done.code == 0, done.err
    data = json.loads(done.out)
    assert list(data) == ["racks"]
    [rack] = data["racks"]
    assert set(rack) == {"rack", "status", "error", "started_at", "finished_at", "agents"}
    assert (rack["rack"], rack["status"], rack["error"]) == ("r1", "ok", None)
    agents = {a["agent"]: a for a in rack["agents"]}
    assert set(agents["r1-m1"]) == {
        "agent",
        "machine",
        "outcome",
        "job_id",
        "provision_status",
        "detail",
        "duration_s",
        "provision_log",
        "url",
    }
    assert agents["r1-m1"]["outcome"] == "passed"
    assert agents["r1-m1"]["provision_status"] == 0
    assert agents["r1-m1"]["duration_s"] > 0
    assert agents["r1-m1"]["provision_log"] is None
    assert agents["r1-m1"]["url"] == f"{setup.urls.testflinger}jobs/{agents['r1-m1']['job_id']}"
    assert agents["r1-m2"]["outcome"] == "offline"
    assert agents["r1-m2"]["job_id"] is None
    assert agents["r1-m2"]["url"] is None


async def test_a_failed_check_exits_1(setup: Setup) -> None:
    """A failed provisioning makes run-once exit 1."""
    setup.lab.set_behaviour("r1-m1", Behaviour.FAIL)
    done = await rackwatch("run-once", "--config", str(setup.config))
    assert done.code == 1, done.err
    assert "provisioning exited 1" in done.out


async def test_run_once_shows_why_a_check_failed_in_the_table_and_the_json(setup: Setup) -> None:
    """The table's DETAIL ends with the log's error line; --json has the log and the job's page."""
    setup.lab.set_behaviour("r1-m1", Behaviour.FAIL)
    why = 'ERROR: MAAS deployment of r1-m1 failed: status "Failed deployment" (curtin: grub-install'
    text = await rackwatch("run-once", "--config", str(setup.config))
    assert text.code == 1, text.err
    [row] = [line for line in text.out.splitlines() if line.startswith("  r1-m1 ")]
    assert re.search(
        r"provisioning exited 1 \(device connector error\): "
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d {re.escape(why)} failed\)$",
        row,
    ), row

    done = await rackwatch("run-once", "--config", str(setup.config), "--json")
    assert done.code == 1, done.err
    failed = {a["agent"]: a for a in json.loads(done.out)["racks"][0]["agents"]}["r1-m1"]
    assert failed["detail"] == "provisioning exited 1 (device connector error)"
    assert why in failed["provision_log"]
    assert failed["provision_log"].splitlines()[-1].endswith("Cleaning up: releasing node r1-m1")
    assert failed["url"] == f"{setup.urls.testflinger}jobs/{failed['job_id']}"


async def test_a_rack_with_a_stale_agent_reads_attention_and_exits_0(
    served: LabFactory, tmp_path: Path
) -> None:
    """ok but for a stale agent: the rack reads attention, the summary counts it apart, exit 0."""
    b = Behaviour
    harness = await served([rack("r1", b.PASS, b.STALE, b.OFFLINE, b.SHARED_QUEUE)])
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, tmp_path / "s.db")
    text = await rackwatch("run-once", "--config", str(config))
    done = await rackwatch("run-once", "--config", str(config), "--json")
    assert text.code == 0, text.err
    assert re.search(r"^r1: attention in ", text.out, re.MULTILINE), text.out
    assert text.out.strip().splitlines()[-1] == (
        "1 rack: 4 agents, 1 passed, 0 failed, 0 timed out, 0 errors,"
        " 2 not checkable (stale, quarantined, no queue), 1 set offline by an admin"
    )
    assert done.code == 0, done.err
    assert json.loads(done.out)["racks"][0]["status"] == "attention"
    with Store.open_readonly(tmp_path / "s.db") as store:
        last = store.last_cycle("r1")
    assert last is not None and last.status == "ok"  # the state file keeps what the checks found


async def test_an_unknown_rack_exits_69(setup: Setup) -> None:
    """A rack that MAAS does not know cannot be checked: exit 69, the good rack still reported."""
    done = await rackwatch("run-once", "r1", "nope", "--config", str(setup.config))
    assert done.code == 69
    assert "unknown rack 'nope'" in done.out
    assert "r1: ok" in done.out


async def test_an_unreachable_lab_exits_69_without_a_traceback(tmp_path: Path) -> None:
    """Nothing listening: a clear rack error, exit 69, and no traceback."""
    lab = Lab([SimRack("r1", [SimMachine("r1-m1")])])
    urls = LabUrls(maas="http://127.0.0.1:9/MAAS/", testflinger="http://127.0.0.1:9/", port=9)
    config = write_config(tmp_path / "rw.toml", lab, urls, tmp_path / "s.db")
    done = await rackwatch(
        "run-once", "--config", str(config), env={"RACKWATCH_TESTFLINGER__TIMEOUT": "1"}
    )
    assert done.code == 69
    assert "cannot connect" in done.out
    assert "Traceback" not in done.err + done.out


async def test_dry_run_records_nothing(setup: Setup) -> None:
    """--dry-run submits nothing and leaves no state file behind."""
    done = await rackwatch("run-once", "--dry-run", "--config", str(setup.config))
    assert done.code == 0, done.err
    assert "ready" in done.out
    assert setup.lab.submissions == []
    assert not setup.state_file.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("racks = [\n", "config.toml"),
        ('racks = ["r1"]\n[maas]\nurl = "http://m/MAAS/"\napi_key = "only:two"\n', "maas.api_key"),
        ('racks = ["r1"]\n[maas]\nurll = "http://m/MAAS/"\n', "maas.urll"),
        ('racks = [" "]\n[maas]\nurl = "http://m/"\napi_key = "a:b:c"\n', "racks"),
        (
            'racks = ["r1"]\n[maas]\nurl = "http://m/"\napi_key = "a:b:c"\n[check]\njob_timeout = "-1h"\n',
            "check.job_timeout",
        ),
    ],
)
async def test_bad_configuration_exits_78_with_one_line(
    tmp_path: Path, content: str, message: str
) -> None:
    """A bad file gives one line naming the file and the key, exit 78, and no traceback."""
    config = tmp_path / "config.toml"
    config.write_text(content)
    done = await rackwatch("run-once", "--config", str(config))
    assert done.code == 78
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert str(config) in lines[0] and message in lines[0]


BAD_KEY = 'racks = ["r1"]\n[maas]\nurl = "http://m/MAAS/"\napi_key = "only:two"\n'
BAD_RACK = 'racks = [" "]\n'


@pytest.mark.parametrize(
    ("command", "content", "key"),
    [
        (["status"], BAD_RACK, "racks[0]"),
        (["history", "r1-m1"], 'state_file = ""\n', "state_file"),
        (["check-config"], BAD_KEY, "maas.api_key"),
    ],
)
async def test_bad_configuration_exits_78(
    tmp_path: Path, command: list[str], content: str, key: str
) -> None:
    """Every operator command validates what it reads of the configuration: one line, exit 78."""
    config = tmp_path / "config.toml"
    config.write_text(content)
    done = await rackwatch(*command, "--config", str(config))
    assert done.code == 78
    assert done.out == ""
    [line] = done.err.strip().splitlines()
    assert str(config) in line and key in line


async def test_a_missing_config_file_exits_78(tmp_path: Path) -> None:
    """The default path missing is a configuration error, not a crash."""
    done = await rackwatch("run-once", env={"RACKWATCH_CONFIG": str(tmp_path / "none.toml")})
    assert done.code == 78
    assert "none.toml" in done.err


@pytest.mark.parametrize("racks", [[" "], ["a/b"]])
async def test_a_bad_rack_name_is_a_usage_error(setup: Setup, racks: list[str]) -> None:
    """A blank or impossible rack name is refused before any request: exit 2."""
    done = await rackwatch("run-once", *racks, "--config", str(setup.config))
    assert done.code == 2
    assert setup.lab.requests.total() == 0


@pytest.mark.parametrize(
    "command", ["status", "history", "check-config", "silence", "unsilence", "web"]
)
def test_every_command_has_help_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--help describes the command and ends with an example of it."""
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: rackwatch {command}" in out
    assert out.strip().splitlines()[-1].startswith(f"example: rackwatch {command}")


async def test_unknown_options_are_usage_errors() -> None:
    """argparse's usage errors exit 2."""
    done = await rackwatch("run-once", "--no-such-option")
    assert done.code == 2


async def test_ctrl_c_leaves_the_jobs_for_the_next_run(setup: Setup) -> None:
    """SIGINT stops waiting, says the jobs stay recorded, and the next run finishes them."""
    setup.lab.set_behaviour("r1-m1", Behaviour.SLOW)
    process = await start("run-once", "--config", str(setup.config))
    await until(lambda: len(setup.lab.submissions) == 1)
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode == 130
    assert "1 job stays recorded" in err.decode() or "1 job stay recorded" in err.decode()
    assert "Traceback" not in err.decode()

    setup.lab.set_behaviour("r1-m1", Behaviour.PASS)
    done = await rackwatch("run-once", "--config", str(setup.config), "--json")
    [rack] = json.loads(done.out)["racks"]
    # The slow job was tracked on, not submitted again.
    assert len(setup.lab.submissions) == 1
    assert {a["agent"]: a["job_id"] for a in rack["agents"]}["r1-m1"] == (
        setup.lab.submissions[0]["job_id"]
    )


async def test_sigkill_mid_submission_loses_nothing_and_submits_nothing_twice(
    tmp_path: Path,
) -> None:
    """Killed once half the jobs are submitted, a second run ends every agent, one job per queue."""
    machines = [SimMachine(f"r1-m{i:02d}") for i in range(40)]
    lab = Lab([SimRack("r1", machines)], provision_seconds=1.0, pickup_seconds=0.05)
    async with lab.serve() as urls:
        state_file = tmp_path / "state.db"
        config = write_config(tmp_path / "rw.toml", lab, urls, state_file, "concurrency = 4\n")
        # Slow submissions (4 at a time, 0.1 s each) so that the kill lands mid-way.
        lab.inject(
            Fault(
                FaultKind.SLOW, "testflinger", path="/v1/job", method="POST", times=None, delay=0.1
            )
        )
        process = await start("run-once", "--config", str(config))
        await until(lambda: len(lab.submissions) >= 20)
        process.kill()
        await process.wait()
        killed_at = len(lab.submissions)
        assert killed_at < 40, "the kill came too late to test anything"
        lab.clear_faults()
        with Store.open_readonly(state_file) as store:
            assert store.unfinished(), "the first run left no unfinished job to resume"

        done = await rackwatch("run-once", "--config", str(config), "--json")
        assert done.code == 0, done.err

    [rack] = json.loads(done.out)["racks"]
    assert {a["outcome"] for a in rack["agents"]} == {"passed"}
    assert len(rack["agents"]) == 40
    for machine in machines:
        assert len(lab.submissions_for(machine.hostname)) == 1, machine.hostname
    with Store.open_readonly(state_file) as store:
        assert store.unfinished() == []


async def test_the_log_of_a_whole_cycle_holds_no_secret(tmp_path: Path) -> None:
    """Debug logs of a cycle with login on never show the MAAS token secret or the client secret."""
    login = ("rackwatch-ci", "client-secret-that-must-not-leak")
    lab = Lab(
        [SimRack("r1", [SimMachine("r1-m1")])], provision_seconds=0.2, testflinger_login=login
    )
    async with lab.serve() as urls:
        extra = f'[testflinger]\nclient_id = "{login[0]}"\nsecret = "{login[1]}"\n'
        config = write_config(tmp_path / "rw.toml", lab, urls, tmp_path / "s.db")
        config.write_text(config.read_text().replace("[testflinger]\n", extra, 1))
        done = await rackwatch(
            "run-once", "--config", str(config), "--log-level", "debug", "--log-format", "json"
        )
    assert done.code == 0, done.err
    assert "check.finished" in done.err
    token_secret = lab.maas_api_key.rsplit(":", 1)[-1]
    for secret in (token_secret, login[1]):
        assert secret not in done.out + done.err


async def test_maas_refusing_the_key_echoes_nothing_into_the_output(tmp_path: Path) -> None:
    """MAAS puts the real token secret into its 401 body; rackwatch never repeats that body."""
    lab = Lab([SimRack("r1", [SimMachine("r1-m1")])])
    async with lab.serve() as urls:
        config = write_config(tmp_path / "rw.toml", lab, urls, tmp_path / "s.db")
        consumer, token, real_secret = lab.maas_api_key.split(":")
        config.write_text(
            config.read_text().replace(lab.maas_api_key, f"{consumer}:{token}:wrong-secret-given")
        )
        done = await rackwatch("run-once", "--config", str(config), "--log-level", "debug")
    assert done.code == 69
    assert "refused the credentials (401)" in done.out
    assert real_secret not in done.out + done.err
    assert "wrong-secret-given" not in done.out + done.err


# One rackwatch per rack: run-once and the rack locks.


def _slow_config(setup: Setup) -> Path:
    """The setup's config with a job timeout that a SLOW agent (3 s of provisioning) stays under."""
    setup.lab.slow_factor = 10.0
    setup.config.write_text(setup.config.read_text().replace("job_timeout = 3", "job_timeout = 20"))
    return setup.config


async def test_a_held_rack_makes_run_once_exit_75_at_once_naming_the_holder(setup: Setup) -> None:
    """Held by another process, the rack is not checked: exit 75, one line, no request, no cycle."""
    lease = RackLocks(setup.state_file, "run").try_hold("r1")
    assert lease is not None
    with lease:
        done = await rackwatch("run-once", "r1", "--config", str(setup.config))
    assert done.code == 75
    assert done.err.splitlines() == [
        f"rackwatch: rack 'r1' is being checked by another rackwatch ({lease.holder});"
        " try again later, or use --wait"
    ]
    assert f"pid {os.getpid()}, rackwatch run, since " in done.err
    assert done.out == ""
    assert setup.lab.requests.total() == 0
    assert not setup.state_file.exists()  # no cycle written, not even the file created


async def test_of_two_run_once_of_one_rack_exactly_one_checks(setup: Setup) -> None:
    """Started together on a slow agent, one run-once checks the rack and the other exits 75."""
    config = _slow_config(setup)
    setup.lab.set_behaviour("r1-m1", Behaviour.SLOW)
    processes = [await start("run-once", "r1", "--config", str(config)) for _ in range(2)]
    results = await asyncio.gather(
        *(asyncio.wait_for(p.communicate(), timeout=60) for p in processes)
    )
    codes = [p.returncode for p in processes]
    assert sorted(c for c in codes if c is not None) == [0, 75], results
    loser = codes.index(75)
    [line] = results[loser][1].decode().splitlines()
    assert "rackwatch run-once, since " in line and f"pid {processes[1 - loser].pid}," in line
    assert "r1: ok" in results[1 - loser][0].decode()
    assert len(setup.lab.submissions_for("r1-m1")) == 1
    with Store.open_readonly(setup.state_file) as store:
        assert len(store.history("r1-m1")) == 1


async def test_run_once_wait_checks_the_rack_once_its_holder_lets_go(setup: Setup) -> None:
    """--wait names the holder once, submits nothing while it waits, then checks the rack: exit 0."""
    lease = RackLocks(setup.state_file, "run").try_hold("r1")
    assert lease is not None
    process = await start("run-once", "r1", "--wait", "--config", str(setup.config))
    assert process.stderr is not None
    line = await asyncio.wait_for(process.stderr.readline(), timeout=20)
    assert line.decode().strip() == (
        f"rackwatch: waiting for rack 'r1', which another rackwatch is checking ({lease.holder})"
    )
    await asyncio.sleep(1.0)
    assert process.returncode is None
    assert setup.lab.requests.total() == 0
    lease.release()
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    assert "r1: ok" in out.decode()
    assert "waiting for rack" not in err.decode()  # said once, before the rest was read
    assert len(setup.lab.submissions_for("r1-m1")) == 1


async def test_ctrl_c_while_waiting_for_a_rack_exits_130_and_checks_nothing(setup: Setup) -> None:
    """SIGINT during --wait stops waiting: exit 130, a line saying nothing was checked."""
    lease = RackLocks(setup.state_file, "run").try_hold("r1")
    assert lease is not None
    with lease:
        process = await start("run-once", "--wait", "--config", str(setup.config))
        assert process.stderr is not None
        await asyncio.wait_for(process.stderr.readline(), timeout=20)
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), timeout=10)
        assert process.returncode == 130
        assert err.decode().splitlines() == [
            "rackwatch: stopped waiting for rack 'r1'; nothing was checked"
        ]
        assert setup.lab.requests.total() == 0
        assert lease.held and RackLocks(setup.state_file, "run-once").try_hold("r1") is None


async def test_dry_run_takes_no_lock(setup: Setup) -> None:
    """--dry-run records nothing, so it runs while another process holds the rack."""
    lease = RackLocks(setup.state_file, "run").try_hold("r1")
    assert lease is not None
    with lease:
        done = await rackwatch("run-once", "--dry-run", "--config", str(setup.config))
    assert done.code == 0, done.err
    assert "ready" in done.out
    assert setup.lab.submissions == []


async def test_run_once_and_run_help_list_their_exit_codes() -> None:
    """run-once --help documents --wait and every exit code the README gives; so does run --help."""
    run_once = await rackwatch("run-once", "--help")
    assert run_once.code == 0
    assert "--wait" in run_once.out
    text = " ".join(run_once.out.split())
    exits = text[text.index("Exits ") :]
    assert re.findall(r"\b(\d+) (?:when|on)\b", exits) == [
        "0",
        "1",
        "2",
        "69",
        "73",
        "75",
        "78",
        "130",
    ]
    assert "75 when another rackwatch is checking a rack" in exits
    run = await rackwatch("run", "--help")
    assert run.code == 0
    text = " ".join(run.out.split())
    exits = text[text.index("Exits ") :]
    assert re.findall(r"\b(\d+) (?:when|on)\b", exits) == ["0", "73", "74", "78"]
    assert "0 when stopped by a signal" in exits
    assert "74 when the state file was lost or stays unusable" in exits


# Help and errors


async def test_an_unknown_option_shows_the_usage_of_its_command() -> None:
    """run-once --bogus is run-once's usage error, with run-once's usage line: exit 2."""
    done = await rackwatch("run-once", "--bogus")
    assert done.code == 2
    assert done.err.startswith("usage: rackwatch run-once "), done.err
    assert done.err.strip().splitlines()[-1] == (
        "rackwatch run-once: error: unrecognized arguments: --bogus"
    )


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["run"], "run"),
        (["demo"], "demo"),
        (["status", "r1"], "status"),
        (["history", "r1-m1"], "history"),
        (["check-config"], "check-config"),
        (["silence", "r1-m1"], "silence"),
        (["unsilence", "r1-m1"], "unsilence"),
        (["web"], "web"),
        (["alerts"], "alerts"),
        (["alerts", "test"], "alerts test"),
    ],
)
def test_every_command_says_its_own_usage_for_an_unknown_option(
    command: list[str], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command, and alerts' action, names itself in the usage error of an unknown option."""
    with pytest.raises(SystemExit) as exited:
        cli.main([*command, "--bogus"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: rackwatch {name} "), err
    assert f"rackwatch {name}: error: " in err


async def test_a_mistyped_key_is_answered_with_the_key_it_is_close_to(tmp_path: Path) -> None:
    """`concurency = 1` in [check] says did you mean 'concurrency', on its one line: exit 78."""
    config = tmp_path / "config.toml"
    config.write_text('[maas]\nurl = "http://m/"\napi_key = "a:b:c"\n[check]\nconcurency = 1\n')
    done = await rackwatch("run-once", "r1", "--config", str(config))
    assert done.code == 78
    assert done.err.splitlines() == [
        f"rackwatch: configuration error: {config}: check.concurency: unknown key"
        " (did you mean 'concurrency'?)"
    ]


@pytest.mark.skipif(
    Path("/etc/rackwatch/config.toml").exists(), reason="a configuration is at the default path"
)
@pytest.mark.parametrize(
    "command", [["status"], ["history", "r1-m1"], ["silence", "--list"], ["web"]]
)
async def test_the_operator_commands_without_a_config_say_how_to_give_one(
    command: list[str],
) -> None:
    """With no --config, no RACKWATCH_CONFIG and no default file: the three ways to give one."""
    done = await rackwatch(*command)
    assert done.code == 78
    assert done.out == ""
    assert done.err.splitlines() == [
        "rackwatch: configuration error: /etc/rackwatch/config.toml: no such file; name a"
        " configuration file with --config PATH or RACKWATCH_CONFIG, or copy"
        " config.example.toml, from rackwatch's source, to /etc/rackwatch/config.toml"
    ]


@pytest.mark.parametrize("listen", ["9464", "host:", ":9464", "h:65536", "h:-1", "h:port"])
def test_web_refuses_an_address_that_is_not_host_port(
    listen: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """web --listen takes HOST:PORT only: anything else is its usage error, exit 2."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["web", "--listen", listen])
    assert exited.value.code == 2
    assert "must be HOST:PORT, e.g. 127.0.0.1:9464" in capsys.readouterr().err


async def test_web_help_lists_its_pages_and_exit_codes() -> None:
    """web --help names every page, the ssh tunnel, and each exit code the README gives."""
    done = await rackwatch("web", "--help")
    assert done.code == 0
    for said in ["/racks/RACK", "/agents/AGENT", "/api/status", "ssh -L 9464:127.0.0.1:9464"]:
        assert said in done.out
    text = " ".join(done.out.split())
    exits = text[text.index("Exits ") :]
    assert re.findall(r"\b(\d+) (?:when|on)\b", exits) == ["0", "2", "66", "78"]


async def test_a_reader_that_goes_away_ends_the_command_quietly_with_141(tmp_path: Path) -> None:
    """`rackwatch status | head`: when the reader closes the pipe, no traceback, exit 141."""
    config = tmp_path / "config.toml"
    config.write_text(f'racks = ["r1"]\nstate_file = "{tmp_path / "state.db"}"\n')
    config.chmod(0o600)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rackwatch",
        "status",
        "--config",
        str(config),
        stdout=write,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write)
    _, err = await process.communicate()
    assert process.returncode == 141
    assert err.decode() == ""
