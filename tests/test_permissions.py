"""The operator commands on a state file this user may not read, or whose folder is read-only.

The tests run as root, which file permissions do not stop; the commands run here as root
without the capabilities that pass them by (setpriv drops CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH), which is what a user without sudo meets.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rackwatch.errors import StoreError
from rackwatch.simlab import Behaviour
from rackwatch.store import Store
from tests.harness import Done, LabFactory, rack, write_config
from tests.stored import at, begin

WITHOUT_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def run(*args: str, unprivileged: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rackwatch", *args]
    if unprivileged:
        command = [*_without_dac(), *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


async def run_beside_a_lab(*args: str) -> Done:
    """`run` without blocking the event loop, so that a lab served by this test can answer."""
    process = await asyncio.create_subprocess_exec(
        *_without_dac(),
        sys.executable,
        "-m",
        "rackwatch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


def _without_dac() -> list[str]:
    if shutil.which("setpriv") is None:
        pytest.fail("these tests need setpriv: apt-get install util-linux")
    return WITHOUT_DAC


def recorded(state_file: Path) -> None:
    with Store.open(state_file) as store:
        cycle = store.start_cycle("r1", at(0))
        begin(store, cycle, "r1-m1")


def config(tmp_path: Path, state_file: Path) -> Path:
    path = tmp_path / "rackwatch.toml"
    path.write_text(f'racks = ["r1"]\nstate_file = "{state_file}"\n')
    return path


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """A state file in a folder of another owner's, 0700, as the service's is."""
    folder = tmp_path / "private"
    folder.mkdir()
    recorded(folder / "state.db")
    os.chown(folder, 61234, 61234)
    folder.chmod(0o700)
    tmp_path.chmod(0o755)
    return folder / "state.db"


@pytest.mark.parametrize("command", [["status"], ["history", "r1-m1"], ["silence", "--list"]])
def test_no_permission_is_one_line_and_66(
    tmp_path: Path, private: Path, command: list[str]
) -> None:
    """Without permission to the state folder: one line naming the file and what to do, 66."""
    done = run(*command, "--config", str(config(tmp_path, private)))
    assert done.returncode == 66, done.stderr
    assert done.stderr == (
        f"rackwatch: state file {private}: permission denied; run this with sudo, or as a user"
        f" of a group that may read {private.parent}\n"
    )
    assert "Traceback" not in done.stderr


def test_a_state_file_in_a_read_only_folder_is_read(tmp_path: Path) -> None:
    """A copy of the file in a folder this user may not write is still read by status."""
    folder = tmp_path / "copy"
    folder.mkdir()
    state_file = folder / "state.db"
    recorded(state_file)
    with sqlite3.connect(state_file) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for leftover in folder.glob("state.db-*"):
        leftover.unlink()
    os.chown(folder, 61234, 61234)
    folder.chmod(0o555)
    state_file.chmod(0o644)
    tmp_path.chmod(0o755)
    done = run("status", "--config", str(config(tmp_path, state_file)), "--json")
    assert done.returncode == 0, done.stderr
    assert '"agent": "r1-m1"' in done.stdout


def test_a_negative_schema_is_refused_by_name(tmp_path: Path) -> None:
    """A user_version below zero is named as such, not as an upgrade to schema 0 failing."""
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = -1")
    for opener in (Store.open, Store.open_readonly):
        with pytest.raises(StoreError) as caught:
            opener(path)
        assert str(caught.value) == f"state file {path}: schema -1 is not one rackwatch writes"


def test_a_state_file_error_names_the_file_once(tmp_path: Path) -> None:
    """run-once on a state file it cannot create says 'state file' once, then the file."""
    (tmp_path / "taken").write_text("a file where the folder should be")
    state_file = tmp_path / "taken" / "state.db"
    path = tmp_path / "rackwatch.toml"
    path.write_text(
        f'racks = ["r1"]\nstate_file = "{state_file}"\n[maas]\nurl = "http://127.0.0.1:9/MAAS/"\n'
        'api_key = "a:b:c"\n'
    )
    done = run("run-once", "--config", str(path), unprivileged=False)
    assert done.returncode == 73, done.stderr
    assert done.stderr.startswith(f"rackwatch: state file {state_file}: ")
    assert "state file: state file" not in done.stderr


# check-config's trial of the state file: what it says is what stops run-once (exit 73).

MAKE_IT = "make it writable by the user rackwatch runs as, or run check-config as that user"


def read_only_file(tmp_path: Path) -> tuple[Path, str]:
    state_file = tmp_path / "state" / "state.db"
    state_file.parent.mkdir()
    recorded(state_file)
    state_file.chmod(0o444)
    return state_file, f"this user cannot write it; {MAKE_IT}"


def folder_not_writable(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "state"
    folder.mkdir()
    recorded(folder / "state.db")
    os.chown(folder, 61234, 61234)
    folder.chmod(0o755)
    return folder / "state.db", (
        f"this user cannot write its folder {folder}, where SQLite keeps its -wal and -shm files"
        f" and rackwatch its locks; {MAKE_IT}"
    )


def folder_cannot_be_made(tmp_path: Path) -> tuple[Path, str]:
    parent = tmp_path / "var"
    parent.mkdir()
    os.chown(parent, 61234, 61234)
    parent.chmod(0o755)
    folder = parent / "rackwatch"
    return folder / "state.db", (
        f"does not exist, and this user cannot create its folder {folder} in {parent}; create"
        f" {folder}, writable by the user rackwatch runs as (systemd's StateDirectory= does), or"
        " run check-config as that user"
    )


def folder_closed(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "private"
    folder.mkdir()
    recorded(folder / "state.db")
    os.chown(folder, 61234, 61234)
    folder.chmod(0o700)
    return folder / "state.db", (
        f"cannot look at {folder / 'state.db'}: Permission denied; run check-config as the user"
        " rackwatch runs as, or with sudo"
    )


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.mark.parametrize(
    "case", [read_only_file, folder_not_writable, folder_cannot_be_made, folder_closed]
)
async def test_check_config_fails_on_a_state_file_this_user_cannot_write(
    served: LabFactory, tmp_path: Path, case: Callable[[Path], tuple[Path, str]]
) -> None:
    """check-config names the file and what to do, exits 69, and run-once then exits 73."""
    harness = await served([rack("r1", Behaviour.PASS)])
    tmp_path.chmod(0o755)  # noqa: ASYNC240 - before anything runs
    state_file, problem = case(tmp_path)
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, state_file)
    before = files_under(tmp_path)

    checked = await run_beside_a_lab("check-config", "--config", str(config))

    assert checked.code == 69, checked.err
    assert f"state file: {state_file}: {problem}" in checked.out.splitlines()
    assert checked.err == "rackwatch: check-config: failed: state file\n"
    assert "maas: r1: 1 machine" in checked.out
    assert files_under(tmp_path) == before  # nothing made, not even the missing folder
    ran = await run_beside_a_lab("run-once", "--config", str(config))
    assert ran.code == 73, ran.err
    assert ran.err.startswith(f"rackwatch: state file {state_file}: ")
    assert harness.lab.submissions == []
