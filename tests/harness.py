"""What the tests share: a served simulated lab to run cycles on, rackwatch as a process,
the daemon with a notify socket of the test's own, and a webhook that records what it is
sent. The fixtures are in conftest.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from rackwatch.check import RackReport, run_cycle
from rackwatch.clients import RetryPolicy, connect
from rackwatch.config import Settings
from rackwatch.simlab import Behaviour, Lab, LabUrls, SimMachine, SimRack
from rackwatch.store import Store

FAST_RETRY = RetryPolicy(attempts=3, timeout_s=5.0, wait_initial_s=0.01, wait_max_s=0.05)


@dataclass
class Harness:
    """A served lab, and a way to run rackwatch cycles against it."""

    lab: Lab
    urls: LabUrls
    state_file: Path

    def settings(self, **overrides: Any) -> Settings:
        data: dict[str, Any] = {
            "racks": self.lab.rack_names,
            "state_file": str(self.state_file),
            "maas": {"url": self.urls.maas, "api_key": self.lab.maas_api_key},
            "testflinger": {"url": self.urls.testflinger},
            "check": {"poll_interval": 0.1, "job_timeout": 1.5, "submit_grace": 0.5},
        }
        for section, values in overrides.items():
            if isinstance(values, dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
        return Settings.from_mapping(data)

    async def cycle(
        self,
        racks: list[str] | None = None,
        *,
        dry_run: bool = False,
        agents: list[str] | None = None,
        **overrides: Any,
    ) -> list[RackReport]:
        settings = self.settings(**overrides)
        with Store.open(self.state_file) as store:
            async with connect(settings, FAST_RETRY) as clients:
                return await run_cycle(
                    settings,
                    racks or settings.racks,
                    store=store,
                    maas=clients.maas,
                    testflinger=clients.testflinger,
                    dry_run=dry_run,
                    agents=agents,
                )


LabFactory = Callable[..., Coroutine[Any, Any, Harness]]


def rack(name: str, *behaviours: Behaviour | None) -> SimRack:
    return SimRack(name, [SimMachine(f"{name}-m{i}", b) for i, b in enumerate(behaviours, 1)])


@dataclass
class Done:
    code: int
    out: str
    err: str


def write_config(
    path: Path,
    lab: Lab,
    urls: LabUrls,
    state_file: Path,
    extra: str = "",
    *,
    racks: list[str] | None = None,
    api_key: str | None = None,
    testflinger: str = "",
) -> Path:
    """A configuration of the lab's racks (or `racks`), `extra` ending its [check] section and
    `testflinger` its [testflinger] section; private (0600), as a file with a secret should be."""
    path.write_text(f"""
racks = {json.dumps(lab.rack_names if racks is None else racks)}
state_file = "{state_file}"
[maas]
url = "{urls.maas}"
api_key = "{lab.maas_api_key if api_key is None else api_key}"
[testflinger]
url = "{urls.testflinger}"
{testflinger}
[check]
poll_interval = 0.1
job_timeout = 3
submit_grace = "1s"
{extra}
""")
    path.chmod(0o600)
    return path


async def start(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rackwatch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


async def rackwatch(*args: str, env: dict[str, str] | None = None) -> Done:
    process = await start(*args, env=env)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


@dataclass
class Notifications:
    """A NOTIFY_SOCKET of the test's own, collecting what the daemon tells systemd."""

    path: Path
    sock: socket.socket
    messages: list[str] = field(default_factory=list)

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def saw(self, state: str) -> bool:
        return any(state in message.splitlines() for message in self.drain())


@dataclass
class Daemon:
    lab: Lab
    urls: LabUrls
    tmp: Path
    notify: Notifications
    process: asyncio.subprocess.Process | None = None

    @property
    def config(self) -> Path:
        return self.tmp / "rackwatch.toml"

    @property
    def state_file(self) -> Path:
        return self.tmp / "state.db"

    def write_config(self, racks: list[str], interval: str = "2s") -> None:
        self.config.write_text(f"""
racks = {json.dumps(racks)}
state_file = "{self.state_file}"
[schedule]
interval = "{interval}"
jitter = 0
[maas]
url = "{self.urls.maas}"
api_key = "{self.lab.maas_api_key}"
[testflinger]
url = "{self.urls.testflinger}"
[check]
poll_interval = 0.1
job_timeout = 20
submit_grace = "1s"
""")
        self.config.chmod(0o600)

    async def start(self) -> asyncio.subprocess.Process:
        self.notify.messages.clear()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rackwatch",
            "run",
            "--config",
            str(self.config),
            "--log-format",
            "json",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={
                **os.environ,
                "NOTIFY_SOCKET": str(self.notify.path),
                "WATCHDOG_USEC": "400000",
            },
        )
        return self.process

    async def stop(
        self, signum: signal.Signals = signal.SIGTERM
    ) -> tuple[int, list[dict[str, object]]]:
        """Signal the daemon; its exit code and its log events."""
        assert self.process is not None
        self.process.send_signal(signum)
        _, err = await asyncio.wait_for(self.process.communicate(), timeout=10)
        assert self.process.returncode is not None
        return self.process.returncode, [json.loads(line) for line in err.decode().splitlines()]

    def cycles(self, rack: str) -> int:
        """How many cycles of the rack the state file holds (0 while it is being created)."""
        try:
            with sqlite3.connect(f"file:{self.state_file}?mode=ro", uri=True) as db:
                return int(
                    db.execute("SELECT count(*) FROM cycles WHERE rack = ?", (rack,)).fetchone()[0]
                )
        except sqlite3.Error:
            return 0


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(20):
        while not condition():  # noqa: ASYNC110 - polling the effects of another process or the lab
            await asyncio.sleep(0.05)


# The webhook's token in the receiver's URL, which must appear in no output or log.
TOKEN = "T0001/B0002/xoxb-a-long-webhook-token-0123456789"


@dataclass
class Receiver:
    """An incoming webhook on 127.0.0.1 that records what it accepts and fails on request."""

    url: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)  # accepted, in order
    bodies: list[bytes] = field(default_factory=list)  # the accepted ones as sent, byte for byte
    requests: int = 0
    fail: list[int] = field(default_factory=list)  # statuses to answer next, one per request
    refuse: Callable[[dict[str, Any]], bool] = lambda payload: False  # answered 400
    hang: bool = False  # hold every request until the test ends
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN:
            return web.Response(status=404, text="no such hook")
        self.requests += 1
        payload = await request.json()
        if self.hang:
            await self.release.wait()
        if self.fail:
            # A careless server echoes the URL it was called on: it must not reach us unredacted.
            return web.Response(status=self.fail.pop(0), text=f"failing on purpose: {request.url}")
        if self.refuse(payload):
            return web.json_response({"message": "invalid payload"}, status=400)
        self.messages.append(payload)
        self.bodies.append(await request.read())
        return web.Response(text="ok")

    def kinds(self) -> list[list[tuple[str, str | None]]]:
        """Each accepted message as (kind, agent) pairs."""
        return [[(e["kind"], e["agent"]) for e in m["events"]] for m in self.messages]
