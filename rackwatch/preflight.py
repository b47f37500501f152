"""`rackwatch check-config`'s trials: the configuration's warnings, the state file, then the services.

Says what in the configuration deserves a warning (`config_warnings`), whether this user could
write the state file, lists each configured rack's machines, logs in to Testflinger when a
client_id is set and lists its agents, all at once, and says what each answered. It submits
nothing and writes nothing: a state file that does not exist yet is not created, its folder is
looked at instead.
May import: `clients`, `config`, `config_warnings`, `errors`, `model` and `render.table`.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from rackwatch.clients import Clients, RetryPolicy, connect
from rackwatch.config import Settings
from rackwatch.config_warnings import config_warnings
from rackwatch.errors import UpstreamError
from rackwatch.model import detection_off
from rackwatch.render.table import plural

# What to do about a state file or folder that this user may not write.
_MAKE_WRITABLE = "make it writable by the user rackwatch runs as, or run check-config as that user"


@dataclass(frozen=True, slots=True)
class Trial:
    """What trying one service said, line by line, and what failed if anything did."""

    lines: list[str]
    failed: str | None = None


async def try_configuration(settings: Settings) -> list[Trial]:
    """The warnings and the state file's trial, then every configured rack's MAAS listing and
    Testflinger, tried at once, in that order."""
    warnings = [f"warning: {line}" for line in config_warnings(settings, settings.config_mode)]
    first = [Trial(warnings)] if warnings else []
    first.append(try_state_file(settings.state_file))
    async with connect(settings, RetryPolicy.PROBE) as clients:
        trials = (_try_maas(clients, rack) for rack in settings.racks)
        return first + await asyncio.gather(*trials, _try_testflinger(clients, settings))


def try_state_file(path: Path) -> Trial:
    """Whether this user could open the state file for writing: the file and its folder
    writable, or, for a file not there yet, the folder to create it in. Creates nothing."""
    try:
        problem, fine = _state_file_problem(path)
    except OSError as exc:  # a folder on the way that this user may not look into
        fine = ""
        problem = (
            f"cannot look at {exc.filename}: {exc.strerror}; run check-config as the user"
            " rackwatch runs as, or with sudo"
        )
    if problem is not None:
        return Trial([f"state file: {path}: {problem}"], "state file")
    return Trial([f"state file: {path}: {fine}"])


def _state_file_problem(path: Path) -> tuple[str | None, str]:
    """What stops this user writing the state file, or None and what lets it."""
    folder = path.parent
    if path.is_dir():
        return f"is a folder; name a file in it, e.g. {path / 'state.db'}", ""
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return f"this user cannot write it{_read_only(path)}; {_MAKE_WRITABLE}", ""
        if not _writable_folder(folder):
            return (
                f"this user cannot write its folder {folder}{_read_only(folder)}, where SQLite"
                f" keeps its -wal and -shm files and rackwatch its locks; {_MAKE_WRITABLE}",
                "",
            )
        return None, "writable"
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file where a folder should be; name another state_file", ""
    if not _writable_folder(existing):
        where = "it" if existing == folder else f"its folder {folder}"
        return (
            f"does not exist, and this user cannot create {where} in {existing}"
            f"{_read_only(existing)}; create {folder}, writable by the user rackwatch runs as"
            " (systemd's StateDirectory= does), or run check-config as that user",
            "",
        )
    if existing == folder:
        return None, f"does not exist yet; this user can create it in {folder}"
    return None, f"does not exist yet; this user can create {folder} and it in {existing}"


def _writable_folder(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _read_only(path: Path) -> str:
    """ " (a read-only file system)" when `path` is on one, else ""."""
    return " (a read-only file system)" if os.statvfs(path).f_flag & os.ST_RDONLY else ""


async def _try_maas(clients: Clients, rack: str) -> Trial:
    try:
        machines = await clients.maas.machines(rack)
    except UpstreamError as exc:
        return Trial([f"maas: {rack}: {exc}"], f"maas {rack}")
    return Trial([f"maas: {rack}: {plural(len(machines), 'machine')}"])


async def _try_testflinger(clients: Clients, settings: Settings) -> Trial:
    client_id = settings.testflinger.client_id
    try:
        await clients.testflinger.log_in()
    except UpstreamError as exc:
        return Trial([f"testflinger: login as {client_id}: {exc}"], "testflinger login")
    if client_id:
        said = [f"testflinger: logged in as {client_id}"]
    else:
        said = ["testflinger: anonymous (no client_id configured)"]
    try:
        agents = await clients.testflinger.agents()
    except UpstreamError as exc:
        return Trial([*said, f"testflinger: agents: {exc}"], "testflinger agents")
    lacking = [f"warning: testflinger: {line}" for _, line in detection_off(agents)]
    return Trial([*said, f"testflinger: {plural(len(agents), 'agent')}", *lacking])
