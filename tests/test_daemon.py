"""`rackwatch run` as a real process: schedules, sd_notify, signals and restarts."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from rackwatch.simlab import Behaviour
from rackwatch.store import Store
from tests.harness import Daemon, until


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
    # Two racks, each checked at least twice, each cycle one agents listing.
    assert daemon.lab.requests["GET /v1/agents/data"] >= 4


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
