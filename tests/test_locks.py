"""The rack locks, on real files and real processes: who holds a rack, and what frees it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from rackwatch.errors import RackHeldError, StoreError
from rackwatch.locks import RackLocks, locks_directory

HOLDER = re.compile(r"pid (\d+), rackwatch (\S+), since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def holder_process(state_file: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds rack r1 until it is killed; it prints "held" once it does."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from rackwatch.locks import RackLocks
        lease = RackLocks(Path({str(state_file)!r}), "run").try_hold("r1")
        print("held" if lease else "not held", flush=True)
        time.sleep(60)
    """)
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        yield process
        process.kill()


def test_a_held_rack_cannot_be_taken_until_it_is_released(state_file: Path) -> None:
    """A second taker gets None and the holder's name; after release it gets the rack."""
    daemon, other = RackLocks(state_file, "run"), RackLocks(state_file, "run-once")
    lease = daemon.try_hold("r1")
    assert lease is not None and lease.held

    assert other.try_hold("r1") is None
    named = other.holder("r1")
    assert named is not None and named == lease.holder
    match = HOLDER.fullmatch(named)
    assert match is not None and match.groups() == (str(os.getpid()), "run")

    lease.release()
    assert not lease.held
    assert other.holder("r1") is None
    second = other.try_hold("r1")
    assert second is not None
    assert HOLDER.fullmatch(second.holder) is not None and "rackwatch run-once" in second.holder
    assert daemon.holder("r1") == second.holder
    second.release()


def test_lock_files_are_private_and_stay_beside_the_state_file(state_file: Path) -> None:
    """One 0600 file per rack in a 0700 <state_file>.locks directory, left on disk when released."""
    locks = RackLocks(state_file, "run")
    with locks.hold(["r1", "r2"]):
        pass
    directory = state_file.parent / "state.db.locks"
    assert locks.directory == directory == locks_directory(state_file)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["r1.lock", "r2.lock"]
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "rackwatch run" in path.read_text()
    assert not state_file.exists()  # the locks never create the state file itself


def test_hold_takes_every_rack_or_none(state_file: Path) -> None:
    """A held rack among several raises RackHeldError naming it, and the others are let go."""
    holder = RackLocks(state_file, "run")
    taker = RackLocks(state_file, "run-once")
    lease = holder.try_hold("r2")
    assert lease is not None
    with pytest.raises(RackHeldError) as raised, taker.hold(["r3", "r2", "r1"]):
        pytest.fail("the block must not run while r2 is held")
    assert raised.value.rack == "r2"
    assert raised.value.holder == lease.holder
    assert str(raised.value) == f"rack 'r2' is being checked by another rackwatch ({lease.holder})"
    # r1 was taken before r2 (sorted order) and let go again; r3 was never taken.
    assert holder.holder("r1") is None and holder.holder("r3") is None

    lease.release()
    with taker.hold(["r3", "r2", "r1", "r2"]) as leases:
        assert [held.rack for held in leases] == ["r1", "r2", "r3"]
        assert all(holder.try_hold(rack) is None for rack in ("r1", "r2", "r3"))
    assert all(not held.held for held in leases)


def test_a_sigkilled_holder_leaves_the_rack_free(
    state_file: Path, holder_process: subprocess.Popen[str]
) -> None:
    """A rack held by another process is named by its pid; SIGKILL frees it at once."""
    locks = RackLocks(state_file, "run-once")
    assert locks.try_hold("r1") is None
    named = locks.holder("r1")
    assert named is not None
    match = HOLDER.fullmatch(named)
    assert match is not None and match.groups() == (str(holder_process.pid), "run")
    with pytest.raises(RackHeldError, match=f"pid {holder_process.pid}, rackwatch run"):
        locks.hold(["r1"]).__enter__()

    holder_process.send_signal(signal.SIGKILL)
    holder_process.wait()
    assert locks.holder("r1") is None
    lease = locks.try_hold("r1")
    assert lease is not None
    assert f"pid {os.getpid()}, rackwatch run-once" in lease.holder
    lease.release()


def test_hold_with_wait_blocks_until_the_holder_is_gone(
    state_file: Path, holder_process: subprocess.Popen[str]
) -> None:
    """wait=True names the holder once, then takes the rack as soon as the holder dies."""
    told: list[tuple[str, str]] = []
    killer = subprocess.Popen(["sh", "-c", f"sleep 0.5; kill -9 {holder_process.pid}"])
    with RackLocks(state_file, "run-once").hold(
        ["r1", "r0"], wait=True, on_wait=lambda rack, holder: told.append((rack, holder))
    ) as leases:
        assert holder_process.poll() is not None  # taken only after the holder died
        assert [lease.rack for lease in leases] == ["r0", "r1"]
    killer.wait()
    [(rack, holder)] = told
    assert rack == "r1" and f"pid {holder_process.pid}, rackwatch run" in holder


async def test_hold_waiting_polls_until_free_and_tells_once(state_file: Path) -> None:
    """The async wait reports the holder once, keeps trying, and gets the rack after release."""
    first = RackLocks(state_file, "run-once").try_hold("r1")
    assert first is not None
    told: list[str] = []
    waiting = asyncio.create_task(
        RackLocks(state_file, "run").hold_waiting("r1", poll_s=0.05, on_held=told.append)
    )
    await asyncio.sleep(0.4)  # several tries
    assert not waiting.done()
    assert told == [first.holder]
    first.release()
    lease = await asyncio.wait_for(waiting, timeout=5)
    assert lease.held and "rackwatch run," in lease.holder
    assert told == [first.holder]
    lease.release()


async def test_cancelling_hold_waiting_stops_the_wait_and_takes_nothing(state_file: Path) -> None:
    """A cancelled wait (the daemon stopping) leaves the rack to its holder and holds nothing."""
    locks = RackLocks(state_file, "run")
    first = RackLocks(state_file, "run-once").try_hold("r1")
    assert first is not None
    waiting = asyncio.create_task(locks.hold_waiting("r1", poll_s=0.05))
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    first.release()
    assert locks.holder("r1") is None


def test_a_lock_directory_that_cannot_be_made_is_a_store_error(tmp_path: Path) -> None:
    """Where the lock directory should be there is a file: one StoreError line naming both."""
    state_file = tmp_path / "state.db"
    blocker = tmp_path / "state.db.locks"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError) as raised:
        RackLocks(state_file, "run-once").try_hold("r1")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"state file {state_file}: ")
    assert str(blocker) in message and "File exists" in message
