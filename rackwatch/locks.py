"""One rackwatch process per rack at a time: an `fcntl.flock` lock per rack, beside the state file.

The locks are files in `<state_file>.locks/`, one per rack (`<rack>.lock`; rack names are MAAS tag
syntax, safe as file names), created 0700 and 0600 like the state file. A process holds a rack by
an exclusive flock on its file, which the OS drops when the process ends, however it ends: a
SIGKILL never leaves a rack held. Once it holds the lock, the process writes into the file who it
is (pid, command, since when), so that another process can name the holder. The files stay on
disk: deleting one could let two processes hold the same rack through two files.

Only the flock matters; the name in a file of a rack nobody holds is the last holder's. Locks are
per rack, so other racks can be checked from the same state file at the same time.

This module imports only the standard library and `rackwatch.errors`.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from rackwatch.errors import RackHeldError, StoreError

# What a holder that has not yet written its name is called, for the instant after it took a lock.
UNNAMED_HOLDER = "a process that has not named itself yet"


def locks_directory(state_file: Path) -> Path:
    """Where the lock files of a state file's racks live: `<state_file>.locks`."""
    return state_file.with_name(state_file.name + ".locks")


class Lease:
    """One rack held by this process, until `release` or the end of a `with` block."""

    def __init__(self, rack: str, path: Path, fd: int, holder: str) -> None:
        self.rack = rack
        self.path = path
        self.holder = holder  # what the lock file says, e.g. "pid 4242, rackwatch run, since ..."
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let the rack go; closing the file drops the lock. Releasing twice does nothing."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<Lease {self.rack!r} {state}: {self.holder}>"


class RackLocks:
    """The rack locks of one state file, taken in the name of one command ("run" or "run-once")."""

    def __init__(self, state_file: Path, command: str) -> None:
        self.state_file = state_file
        self.command = command
        self.directory = locks_directory(state_file)

    def path(self, rack: str) -> Path:
        return self.directory / f"{rack}.lock"

    def try_hold(self, rack: str) -> Lease | None:
        """Take the rack's lock if no process holds it; None when one does."""
        taken = self._attempt(rack)
        return taken if isinstance(taken, Lease) else None

    def holder(self, rack: str) -> str | None:
        """Who holds the rack, as the holder wrote it; None when no process holds it.

        To tell, this takes a shared lock on the file for an instant, so a process trying the rack
        at that very instant finds it held: for reports and tests, not for polling.
        """
        fd = self._open(rack)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_holder(fd)
            except OSError as exc:
                raise self._error(rack, "cannot lock", exc) from exc
            return None  # closing the file drops the shared lock
        finally:
            os.close(fd)

    @contextmanager
    def hold(
        self,
        racks: Iterable[str],
        *,
        wait: bool = False,
        on_wait: Callable[[str, str], None] | None = None,
    ) -> Iterator[list[Lease]]:
        """Hold every rack for the `with` block; the leases, in the order they were taken.

        The locks are taken one by one in sorted order, so that two processes wanting the same
        racks never wait on each other in a circle. Without `wait`, a rack another process holds
        raises RackHeldError naming the holder, and the racks already taken are let go. With
        `wait`, it blocks until each rack is free, calling `on_wait(rack, holder)` once for each
        rack it has to wait for; a KeyboardInterrupt stops the wait and lets every rack go.
        """
        with ExitStack() as stack:
            leases: list[Lease] = []
            for rack in sorted(set(racks)):
                taken = self._attempt(rack)
                if isinstance(taken, str):
                    if not wait:
                        raise RackHeldError(rack, taken)
                    if on_wait is not None:
                        on_wait(rack, taken)
                    taken = self._attempt(rack, block=True)
                    assert isinstance(taken, Lease)  # a blocking attempt returns only once taken
                leases.append(stack.enter_context(taken))
            yield leases

    async def hold_waiting(
        self,
        rack: str,
        *,
        poll_s: float = 1.0,
        on_held: Callable[[str], None] | None = None,
    ) -> Lease:
        """The rack's lock, once no other process holds it; tries every `poll_s` seconds.

        `on_held(holder)` is called once, when the first try finds the rack held. Cancelling the
        task stops the wait.
        """
        told = False
        while isinstance(taken := self._attempt(rack), str):
            if not told and on_held is not None:
                on_held(taken)
            told = True
            await asyncio.sleep(poll_s)
        return taken

    # plumbing

    def _attempt(self, rack: str, *, block: bool = False) -> Lease | str:
        """The rack's lease, or the name of the process that holds it (never a name when blocking)."""
        fd = self._open(rack)
        lease: Lease | None = None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # Read while the holder still holds it: the name is the holder's own.
                return _read_holder(fd)
            holder = _holder_line(self.command)
            data = f"{holder}\n".encode()
            # Over the old name first, then cut what is left of it: a reader sees one whole name.
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            lease = Lease(rack, self.path(rack), fd, holder)
            return lease
        except OSError as exc:
            raise self._error(rack, "cannot lock", exc) from exc
        finally:
            if lease is None:
                os.close(fd)  # a holder named, an error, or a KeyboardInterrupt while blocked

    def _open(self, rack: str) -> int:
        try:
            self.state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"state file {self.state_file}: cannot create the lock directory"
                f" {exc.filename or self.directory}: {exc.strerror}"
            ) from exc
        try:
            return os.open(self.path(rack), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self._error(rack, "cannot open", exc) from exc

    def _error(self, rack: str, what: str, exc: OSError) -> StoreError:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        return StoreError(f"state file {self.state_file}: {what} {self.path(rack)}: {reason}")


def _holder_line(command: str) -> str:
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"pid {os.getpid()}, rackwatch {command}, since {since}"


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode(errors="replace")
    return text.split("\n", 1)[0].strip() or UNNAMED_HOLDER
