"""Fixtures shared by the tests: a clean environment and logging, retries without waits on
request, a served simulated lab (`served`) and a daemon ready to start against one (`daemon`)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import stamina
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from rackwatch.simlab import Behaviour, Lab, SimMachine, SimRack
from tests.harness import TOKEN, Daemon, Harness, LabFactory, Notifications, Receiver

# Settings built in code ignore the environment, but load_settings does not: keep a developer's
# shell and systemd credentials out of every test.
_ENV_NAMES = ("MAAS_URL", "MAAS_API_KEY", "CREDENTIALS_DIRECTORY")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove MAAS_URL, MAAS_API_KEY, CREDENTIALS_DIRECTORY and every RACKWATCH_* variable."""
    for name in list(os.environ):
        if name.upper().startswith("RACKWATCH_") or name in _ENV_NAMES:
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put structlog and the root logger back as they were after each test.

    `logs.configure` changes both, and a command run in-process (`cli.main`) configures them
    with the test's captured stderr, which is closed once the test ends.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def no_retry_waits() -> Iterator[None]:
    """Retry without waiting, as often as the code under test asks (the count stays real)."""
    # cap=True keeps the caller's own attempts whenever they are fewer than this ceiling;
    # set_testing's default (attempts=1, no cap) would turn retries off altogether.
    with stamina.set_testing(True, attempts=1000, cap=True):
        yield


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[LabFactory]:
    """Serve a lab of the test's own; every lab is stopped when the test ends."""
    contexts: list[Any] = []

    async def serve(racks: list[SimRack], **lab_options: Any) -> Harness:
        options = {"provision_seconds": 0.3, "pickup_seconds": 0.05, "slow_factor": 50.0}
        lab = Lab(racks, **{**options, **lab_options})
        context = lab.serve()
        urls = await context.__aenter__()
        contexts.append(context)
        return Harness(lab, urls, tmp_path / "state" / "rackwatch.db")

    yield serve
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    b = Behaviour
    lab = Lab(
        [
            SimRack("r1", [SimMachine("r1-m1", b.PASS), SimMachine("r1-m2", b.PASS)]),
            SimRack("r2", [SimMachine("r2-m1", b.PASS)]),
        ],
        provision_seconds=0.3,
        pickup_seconds=0.05,
        slow_factor=15.0,
    )
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        notify = Notifications(path, sock)
        # Read as systemd would, so the daemon never finds the socket full.
        asyncio.get_running_loop().add_reader(sock.fileno(), notify.drain)
        async with lab.serve() as urls:
            d = Daemon(lab, urls, tmp_path, notify)
            d.write_config(["r1", "r2"])
            yield d
            if d.process is not None and d.process.returncode is None:
                d.process.kill()
                await d.process.wait()
        asyncio.get_running_loop().remove_reader(sock.fileno())


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/{token:.+}", hook.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    hook.url = str(server.make_url(f"/hooks/{TOKEN}"))
    yield hook
    hook.release.set()
    await server.close()
