"""The operator commands on a state file this user may not read, or whose folder is read-only.

The tests run as root, which file permissions do not stop; the commands run here as root
without the capabilities that pass them by (setpriv drops CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH), which is what a user without sudo meets.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from rackwatch.errors import StoreError
from rackwatch.store import Store
from tests.stored import at, begin

WITHOUT_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def run(*args: str, unprivileged: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rackwatch", *args]
    if unprivileged:
        if shutil.which("setpriv") is None:
            pytest.fail("these tests need setpriv: apt-get install util-linux")
        command = [*WITHOUT_DAC, *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


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
