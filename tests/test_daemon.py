"""`rackwatch run` as a real process: schedules, sd_notify, signals and restarts."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rackwatch import daemon as rackwatch_daemon
from rackwatch.config import load_settings
from rackwatch.locks import RackLocks
from rackwatch.simlab import Behaviour
from rackwatch.store import Store
from tests.harness import FAST_RETRY, Daemon, LabFactory, rack, rackwatch, until, write_config


async def test_each_rack_is_checked_every_interval_and_systemd_is_told(daemon: Daemon) -> None:
    """Cycles repeat per rack; READY, WATCHDOG, STATUS and STOPPING reach the notify socket."""
    await daemon.start()
    await until(lambda: daemon.notify.saw("READY=1"))
    await until(lambda: daemon.cycles("r1") >= 2 and daemon.cycles("r2") >= 2)
    await until(lambda: daemon.notify.saw("WATCHDOG=1"))
    code, events = await daemon.stop()

    assert code == 0
    assert daemon.notify.saw("STOPPING=1")
    assert any(m.startswith("STATUS=2 racks") for m in daemon.notify.drain())
    names = [e["event"] for e in events]
    assert "daemon.started" in names and "daemon.stopped" in names
    finished = [e for e in events if e["event"] == "check.finished"]
    assert {e["rack"] for e in finished} == {"r1", "r2"}
    assert all(e["outcome"] == "passed" for e in finished)
    # Two racks, each checked at least twice: at most one agents listing per cycle, and one
    # for both racks when they start together.
    cycles = daemon.cycles("r1") + daemon.cycles("r2")
    assert 2 <= daemon.lab.requests["GET /v1/agents/data"] <= cycles


async def test_sigterm_leaves_jobs_recorded_and_a_restart_resumes_them(daemon: Daemon) -> None:
    """SIGTERM mid-job exits 0 within 10 s; the next start tracks the job on, never resubmits."""
    daemon.lab.set_behaviour("r1-m1", Behaviour.SLOW)  # 0.3 s × 15: still running at the stop
    daemon.write_config(["r1"], interval="1h")
    await daemon.start()
    await until(lambda: len(daemon.lab.submissions_for("r1-m1")) == 1)
    loop = asyncio.get_running_loop()
    stopping = loop.time()
    code, events = await daemon.stop()
    assert code == 0
    assert loop.time() - stopping < 10
    stopped = [e for e in events if e["event"] == "daemon.stopped"]
    assert stopped and int(str(stopped[0]["jobs_left_recorded"])) >= 1
    with Store.open_readonly(daemon.state_file) as store:
        [unfinished] = [c for c in store.unfinished() if c.agent == "r1-m1"]
    job_id = unfinished.job_id

    await daemon.start()
    await until(lambda: _outcome(daemon.state_file, job_id) is not None)
    code, _ = await daemon.stop()
    assert code == 0
    assert _outcome(daemon.state_file, job_id) == "passed"
    assert [j["job_id"] for j in daemon.lab.submissions_for("r1-m1")] == [job_id]


async def test_cycles_share_one_login_until_a_reload_changes_testflinger(
    served: LabFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One session and one set of clients for the daemon's life: a reload of the same settings
    keeps them, one that changes Testflinger's builds new ones, which log in again."""
    login = ("rackwatch", "s3cret-value-123456")
    harness = await served([rack("r1", Behaviour.PASS)], testflinger_login=login)
    monkeypatch.setenv("RACKWATCH_TESTFLINGER__CLIENT_ID", login[0])
    monkeypatch.setenv("RACKWATCH_TESTFLINGER__SECRET", login[1])
    schedule = "[schedule]\ninterval = 0.5\njitter = 0\n"
    config = write_config(
        tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file, schedule
    )
    daemon = rackwatch_daemon.Daemon(load_settings(config), config_path=config, retry=FAST_RETRY)
    serving = asyncio.create_task(daemon.serve())

    def cycles_after(reload: str | None) -> Callable[[], bool]:
        """Send a SIGHUP (after setting `reload`, a Testflinger timeout); then wait for 2 cycles."""
        if reload is not None:
            monkeypatch.setenv("RACKWATCH_TESTFLINGER__TIMEOUT", reload)
        os.kill(os.getpid(), signal.SIGHUP)
        seen = harness.lab.requests["GET /v1/agents/data"]
        return lambda: harness.lab.requests["GET /v1/agents/data"] >= seen + 2

    await until(lambda: harness.lab.requests["GET /v1/agents/data"] >= 2)
    await until(cycles_after(None))  # the same file: the same clients
    assert harness.lab.logins == 1
    await until(cycles_after("20s"))
    daemon.stop()
    assert await serving == 0
    assert harness.lab.logins == 2


async def test_a_restart_waits_for_the_rest_of_the_interval(daemon: Daemon) -> None:
    """A rack checked a moment ago is not checked again just because the daemon restarted."""
    daemon.write_config(["r2"], interval="1h")
    await daemon.start()
    await until(lambda: daemon.cycles("r2") == 1 and _all_finished(daemon.state_file))
    await daemon.stop()
    await daemon.start()
    await until(lambda: daemon.notify.saw("READY=1"))
    await asyncio.sleep(1.0)
    code, events = await daemon.stop()
    assert code == 0
    assert daemon.cycles("r2") == 1
    [scheduled] = [e for e in events if e["event"] == "rack.scheduled"]
    assert scheduled["rack"] == "r2"


async def test_sighup_picks_up_a_new_rack_and_keeps_a_bad_config_out(daemon: Daemon) -> None:
    """SIGHUP re-reads the file: a rack added is checked; a broken file is logged and ignored."""
    daemon.write_config(["r1"])
    process = await daemon.start()
    await until(lambda: daemon.cycles("r1") >= 1)
    daemon.write_config(["r1", "r2"])
    process.send_signal(signal.SIGHUP)
    await until(lambda: daemon.cycles("r2") >= 1)

    daemon.config.write_text("racks = [\n")
    process.send_signal(signal.SIGHUP)
    r1_cycles = daemon.cycles("r1")
    await until(lambda: daemon.cycles("r1") > r1_cycles)  # still running on the old settings
    code, events = await daemon.stop()
    assert code == 0
    failed = [e for e in events if e["event"] == "daemon.reload_failed"]
    assert failed and "rackwatch.toml" in str(failed[0]["error"])
    reloaded = [e for e in events if e["event"] == "daemon.reloaded"]
    assert reloaded and reloaded[0]["added"] == ["r2"]


async def test_a_bad_config_exits_78(daemon: Daemon) -> None:
    """systemd must not restart-loop on a bad file: exit 78, one line, no traceback."""
    daemon.config.write_text('racks = ["r1"]\n[maas]\nurl = "http://x/MAAS/"\n')
    process = await daemon.start()
    _, err = await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode == 78
    assert "maas.api_key" in err.decode()
    assert "Traceback" not in err.decode()


async def test_a_second_signal_exits_at_once(daemon: Daemon) -> None:
    """Two SIGINTs: the second does not wait for anything."""
    await daemon.start()
    await until(lambda: daemon.notify.saw("READY=1"))
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGINT)
    daemon.process.send_signal(signal.SIGINT)
    await asyncio.wait_for(daemon.process.wait(), timeout=10)
    assert daemon.process.returncode in (0, 128 + signal.SIGINT)


async def test_run_once_of_the_rack_the_daemon_checks_exits_75_and_other_racks_go_on(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Mid-cycle on r1, run-once r1 exits 75 fast and submits nothing; run-once r2 checks r2."""
    daemon.lab.slow_factor = 30.0  # r1-m1 provisions for 9 s: the daemon's cycle outlasts both runs
    daemon.lab.set_behaviour("r1-m1", Behaviour.SLOW)
    daemon.write_config(["r1"], interval="1h")
    process = await daemon.start()
    await until(lambda: all(daemon.lab.submissions_for(m) for m in ("r1-m1", "r1-m2")))
    config = write_config(tmp_path / "once.toml", daemon.lab, daemon.urls, daemon.state_file)
    submitted = list(daemon.lab.submissions)

    loop = asyncio.get_running_loop()
    started = loop.time()
    held = await rackwatch("run-once", "r1", "--config", str(config))
    took = loop.time() - started
    assert held.code == 75, held.err
    assert took < 6.0  # at once: not after the daemon's cycle, which provisions r1-m1 for 9 s
    [line] = held.err.splitlines()
    assert line.startswith("rackwatch: rack 'r1' is being checked by another rackwatch (")
    assert f"(pid {process.pid}, rackwatch run, since " in line
    assert line.endswith("; try again later, or use --wait")
    assert daemon.lab.submissions == submitted

    other = await rackwatch("run-once", "r2", "--config", str(config))
    assert other.code == 0, other.err
    assert "r2: ok" in other.out
    assert len(daemon.lab.submissions_for("r2-m1")) == 1
    assert _last_cycle(daemon.state_file, "r1")["finished_at"] is None  # still mid-cycle

    await until(lambda: _last_cycle(daemon.state_file, "r1")["finished_at"] is not None)
    code, _ = await daemon.stop()
    assert code == 0
    with Store.open_readonly(daemon.state_file) as store:
        last = store.last_cycle("r1")
        assert last is not None and last.status == "ok"
        checks = store.checks_of_cycle(last.id)
    assert {c.agent: str(c.outcome) for c in checks} == {"r1-m1": "passed", "r1-m2": "passed"}
    assert len(daemon.lab.submissions_for("r1-m1")) == 1


async def test_the_daemon_waits_for_a_rack_another_process_holds(daemon: Daemon) -> None:
    """A held rack gets no cycle, one rack.held and no second cycle; it is checked once free."""
    lease = RackLocks(daemon.state_file, "run-once").try_hold("r1")
    assert lease is not None
    daemon.write_config(["r1"], interval="1s")
    await daemon.start()
    await until(lambda: any("waiting for r1" in m for m in daemon.notify.drain()))
    await asyncio.sleep(2.5)  # the schedule fires twice more meanwhile
    assert daemon.cycles("r1") == 0
    assert daemon.lab.submissions == []
    released = datetime.now(UTC)
    lease.release()

    await until(lambda: _last_cycle(daemon.state_file, "r1")["finished_at"] is not None)
    code, events = await daemon.stop()
    assert code == 0
    [held] = [e for e in events if e["event"] == "rack.held"]
    assert held["rack"] == "r1" and held["holder"] == lease.holder
    assert f"pid {os.getpid()}, rackwatch run-once" in str(held["holder"])
    # The schedule fired twice or more while the rack was held: said once, not each time.
    [skipped] = [e for e in events if e["event"] == "cycle.skipped"]
    assert skipped["reason"] == "still waiting for another rackwatch"
    assert [e["event"] for e in events].count("rack.freed") == 1
    with closing(sqlite3.connect(f"file:{daemon.state_file}?mode=ro", uri=True)) as db:
        [(first,)] = db.execute("SELECT min(started_at) FROM cycles WHERE rack = 'r1'").fetchall()
    assert datetime.fromisoformat(first) >= released
    finished = [e for e in events if e["event"] == "check.finished"]
    assert {e["agent"] for e in finished} == {"r1-m1", "r1-m2"}


async def test_a_stop_while_waiting_for_a_held_rack_stops_the_wait(daemon: Daemon) -> None:
    """SIGTERM while the daemon waits for a held rack exits 0 at once, having checked nothing."""
    lease = RackLocks(daemon.state_file, "run-once").try_hold("r1")
    assert lease is not None
    with lease:
        daemon.write_config(["r1"], interval="1h")
        await daemon.start()
        await until(lambda: any("waiting for r1" in m for m in daemon.notify.drain()))
        loop = asyncio.get_running_loop()
        stopping = loop.time()
        code, events = await daemon.stop()
        assert code == 0
        assert loop.time() - stopping < 5.0
        assert lease.held  # the daemon never took the rack
    [stopped] = [e for e in events if e["event"] == "daemon.stopped"]
    assert stopped["cycles_interrupted"] == 1 and stopped["jobs_left_recorded"] == 0
    assert "cycle.started" not in [e["event"] for e in events]
    assert daemon.cycles("r1") == 0
    assert daemon.lab.requests.total() == 0


@pytest.mark.parametrize("how", ["deleted", "replaced by another file"])
async def test_a_state_file_lost_under_the_daemon_makes_it_exit_74(
    daemon: Daemon, tmp_path: Path, how: str
) -> None:
    """Deleted or replaced under it, the state file is given up: exit 74 within seconds, one line."""
    path = daemon.state_file
    process = await daemon.start()
    await until(lambda: daemon.cycles("r1") >= 1 and daemon.cycles("r2") >= 1)
    if how == "deleted":
        for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
            (path.parent / name).unlink(missing_ok=True)
    else:
        shutil.copy(path, tmp_path / "copy.db")
        (tmp_path / "copy.db").replace(path)
    replaced = path.stat().st_ino if path.exists() else None

    loop = asyncio.get_running_loop()
    started = loop.time()
    _, err = await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode == 74
    assert loop.time() - started < 5.0
    *logged, line = err.decode().splitlines()
    assert line == (
        f"rackwatch: state file {path} was {how} while the daemon ran;"
        " exiting so that a restart opens it afresh"
    )
    events = [json.loads(entry) for entry in logged]
    [lost] = [e for e in events if e["event"] == "daemon.state_file_lost"]
    assert (lost["state_file"], lost["what"], lost["level"]) == (str(path), how, "error")
    [stopped] = [e for e in events if e["event"] == "daemon.stopped"]
    assert stopped["exit_code"] == 74
    # Nothing was written at the path afterwards: no file made anew, the new one left alone.
    assert (path.stat().st_ino if path.exists() else None) == replaced


async def test_a_state_file_deleted_mid_job_doubles_nothing(daemon: Daemon) -> None:
    """The file goes while a job runs: the daemon exits, and its restart adds no job to the queue."""
    # 0.3 s × 60: still running when the restarted daemon has looked, however slow its start
    daemon.lab.set_behaviour("r1-m1", Behaviour.SLOW)
    daemon.lab.slow_factor = 60.0
    daemon.write_config(["r1"])
    path = daemon.state_file
    process = await daemon.start()
    await until(lambda: len(daemon.lab.submissions_for("r1-m1")) == 1)
    [first] = daemon.lab.submissions_for("r1-m1")
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        (path.parent / name).unlink(missing_ok=True)
    await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode == 74
    assert daemon.lab.job_state(str(first["job_id"])) not in ("complete", "cancelled")

    await daemon.start()  # a state file of its own, with an identity of its own
    await until(lambda: _busy_detail(path, "r1-m1") is not None)
    code, _ = await daemon.stop()
    assert code == 0
    assert daemon.lab.submissions_for("r1-m1") == [first]
    detail = _busy_detail(path, "r1-m1")
    assert detail is not None and str(first["job_id"]) in detail
    assert "rackwatch job" in detail and "of state file rackwatch-" in detail


def _busy_detail(state_file: Path, agent: str) -> str | None:
    """The detail of the agent's latest busy check, if it has one."""
    try:
        with sqlite3.connect(f"file:{state_file}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT detail FROM checks WHERE agent = ? AND outcome = 'busy'"
                " ORDER BY id DESC LIMIT 1",
                (agent,),
            ).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


async def test_a_corrupt_state_file_makes_the_daemon_exit_74_after_3_failed_cycles(
    daemon: Daemon,
) -> None:
    """Garbage over the state file's first pages: 3 cycles fail on it, then exit 74, one line."""
    path = daemon.state_file
    daemon.write_config(["r1"], interval="1s")
    process = await daemon.start()
    await until(lambda: daemon.cycles("r1") >= 1)
    await until(lambda: _last_cycle(path, "r1")["finished_at"] is not None)
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        with (path.parent / name).open("r+b") as file:
            file.write(b"\xde\xad\xbe\xef" * 1024)  # its first page
    _, err = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 74
    *logged, line = err.decode().splitlines()
    assert line == (
        f"rackwatch: state file {path} is unusable, exiting after 3 failed cycles in a row:"
        " file is not a database"
    )
    events = [json.loads(entry) for entry in logged]
    failed = [e for e in events if e["event"] == "cycle.store_failed"]
    assert [e["failures_in_a_row"] for e in failed] == [1, 2, 3]
    assert all(str(path) in str(e["error"]) for e in failed)
    [unusable] = [e for e in events if e["event"] == "daemon.state_file_unusable"]
    assert unusable["state_file"] == str(path) and unusable["level"] == "error"
    assert not [e for e in events if e["event"] == "cycle.crashed"]


def _last_cycle(state_file: Path, rack: str) -> dict[str, object]:
    """The rack's latest cycle row, read without the store; an empty one before the first."""
    try:
        with closing(sqlite3.connect(f"file:{state_file}?mode=ro", uri=True)) as db:
            db.row_factory = sqlite3.Row
            row = db.execute(
                "SELECT * FROM cycles WHERE rack = ? ORDER BY id DESC LIMIT 1", (rack,)
            ).fetchone()
    except sqlite3.Error:
        row = None
    return dict(row) if row is not None else {"finished_at": None}


def _outcome(state_file: Path, job_id: str | None) -> str | None:
    with Store.open_readonly(state_file) as store:
        for check in store.history("r1-m1", limit=10):
            if check.job_id == job_id:
                return str(check.outcome) if check.outcome else None
    return None


def _all_finished(state_file: Path) -> bool:
    if not state_file.exists():
        return False
    with Store.open_readonly(state_file) as store:
        last = store.last_cycle("r2")
        return last is not None and last.finished_at is not None
