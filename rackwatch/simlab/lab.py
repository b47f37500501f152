"""The simulated lab: the description a test writes, and the state both services serve.

A `Lab` is racks of machines (`SimRack`, `SimMachine`), each machine with the `Behaviour` of its
Testflinger agent. It is the MAAS inventory that `maas` serves, the agent fleet and the logins that
`testflinger` serves (`agents` simulates the fleet), and the switchboard tests use: fault injection,
request counts, submitted jobs, and mutators that change the lab between cycles. The service
modules know a lab only as `state` describes it, so that this module alone imports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from rackwatch.simlab.agents import AgentFleet
from rackwatch.simlab.faults import Fault, lab_middleware
from rackwatch.simlab.maas import MAAS_STATUSES, MaasApi
from rackwatch.simlab.state import Behaviour, SimAgent, SimJob, SimMachine, SimRack
from rackwatch.simlab.testflinger import TestflingerApi, flask_errors

__all__ = [
    "DEFAULT_MAAS_API_KEY",
    "Behaviour",
    "SimMachine",
    "SimRack",
    "LabUrls",
    "Lab",
    "SimAgent",
    "SimJob",
    "demo_lab",
    "uniform_lab",
]

# A fake key in MAAS's consumer_key:token_key:token_secret shape (18, 18 and 32 characters).
DEFAULT_MAAS_API_KEY = "SmLbCnsmrKeyFake23:SmLbTkenKeyFake456:FakeSecretSmLbNtRea2345678abcdef"


@dataclass(frozen=True)
class LabUrls:
    """Where a served lab answers."""

    maas: str  # MAAS_URL, e.g. http://127.0.0.1:P/MAAS/
    testflinger: str  # e.g. http://127.0.0.1:P/
    port: int


def system_id_for(hostname: str, taken: set[str]) -> str:
    """A MAAS-like system_id (6 lowercase alphanumerics), stable for a hostname."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    for salt in range(1000):
        number = int.from_bytes(hashlib.sha256(f"{hostname}#{salt}".encode()).digest()[:8])
        chars = []
        for _ in range(6):
            number, digit = divmod(number, len(alphabet))
            chars.append(alphabet[digit])
        system_id = "".join(chars)
        if system_id not in taken:
            return system_id
    raise RuntimeError(f"no free system_id for {hostname!r}")


class Lab(AgentFleet):
    """A MAAS region and a Testflinger server with its agents, served as one aiohttp application.

    Each agent serves a queue named after itself plus the rack's shared queue "<rack>-any", except
    SHARED_QUEUE agents, whose only queue "<rack>-shared" is also served by one ordinary agent of
    the rack. `extra_agents` are racks that exist only in Testflinger (agents with no MAAS machine
    or tag); `extra_tags` are MAAS tags on no machine. A machine's own `tags` list it under those
    tags too: with another rack's name, one machine (and its one agent) is in two racks.

    Inspection for tests: `requests` counts requests by method and route template, faulted ones
    included (e.g. "GET /v1/agents/data", "GET /v1/agents/data/{agent_name}", "POST /v1/job",
    "GET /v1/job/search", "GET /v1/job/{job_id}", "GET /v1/result/{job_id}",
    "POST /v1/job/{job_id}/action", "POST /v1/oauth2/token", "GET /MAAS/api/2.0/machines/");
    `submissions`, `cancelled`, `job_state()` and `agent()` come from `AgentFleet`; `logins`
    counts successful Testflinger logins.
    """

    def __init__(
        self,
        racks: Sequence[SimRack],
        *,
        provision_seconds: float = 2.0,
        pickup_seconds: float = 0.2,
        slow_factor: float = 20.0,
        maas_api_key: str = DEFAULT_MAAS_API_KEY,
        testflinger_login: tuple[str, str] | None = None,
        testflinger_role: str = "contributor",
        token_lifetime: float = 600.0,
        extra_agents: Sequence[SimRack] = (),
        extra_tags: Sequence[str] = (),
    ) -> None:
        super().__init__(
            provision_seconds=provision_seconds,
            pickup_seconds=pickup_seconds,
            slow_factor=slow_factor,
        )
        parts = maas_api_key.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError("maas_api_key must be consumer_key:token_key:token_secret")
        self.racks = list(racks)
        self.rack_names = [rack.name for rack in self.racks]
        self.maas_api_key = maas_api_key
        self.testflinger_login = testflinger_login
        self.testflinger_role = testflinger_role
        self.token_lifetime = token_lifetime

        self.requests: Counter[str] = Counter()
        self.faults: list[Fault] = []
        # LATE requests being carried out, whether or not their client still waits.
        self._background: set[asyncio.Task[web.StreamResponse]] = set()
        self.logins = 0
        # Testflinger access tokens (token -> time.monotonic() at issue) and refresh tokens.
        self.tokens: dict[str, float] = {}
        self.refresh_tokens: set[str] = set()

        # The MAAS inventory, in creation order.
        self.machines: list[SimMachine] = []
        self.machine_rack: dict[str, str] = {}
        self.system_ids: dict[str, str] = {}
        self.ip_addresses: dict[str, str] = {}
        self.maas_tags: set[str] = set(extra_tags)
        self._machines_by_hostname: dict[str, SimMachine] = {}
        self._system_ids_taken: set[str] = set()

        for rack in self.racks:
            self.maas_tags.add(rack.name)
            for machine in rack.machines:
                self._add_machine(rack, machine)
                self.maas_tags.update(machine.tags)
        for rack in [*self.racks, *extra_agents]:
            self._add_agents(rack)

    def _add_machine(self, rack: SimRack, machine: SimMachine) -> None:
        if machine.hostname in self.machine_rack:
            raise ValueError(f"hostname {machine.hostname!r} appears twice")
        if machine.maas_status not in MAAS_STATUSES:
            raise ValueError(f"{machine.maas_status!r} is not a MAAS status name")
        self.machines.append(machine)
        self._machines_by_hostname[machine.hostname] = machine
        self.machine_rack[machine.hostname] = rack.name
        number = len(self.machines) - 1
        self.ip_addresses[machine.hostname] = f"10.0.{number // 250}.{number % 250 + 1}"
        system_id = system_id_for(machine.hostname, self._system_ids_taken)
        self._system_ids_taken.add(system_id)
        self.system_ids[machine.hostname] = system_id

    def _add_agents(self, rack: SimRack) -> None:
        with_agents = [(m, m.behaviour) for m in rack.machines if m.behaviour is not None]
        shared_queue = f"{rack.name}-shared"
        sharers = [m for m, behaviour in with_agents if behaviour is Behaviour.SHARED_QUEUE]
        # One ordinary agent also serves the shared queue, so that no sharer serves it alone.
        partner = next((m for m, _ in with_agents if m not in sharers), None) if sharers else None
        for machine, behaviour in with_agents:
            name = machine.agent_name or machine.hostname
            if behaviour is Behaviour.SHARED_QUEUE:
                queues = [shared_queue]
            else:
                queues = [name, f"{rack.name}-any"]
                if machine is partner:
                    queues.append(shared_queue)
            self.add_agent(
                name,
                behaviour,
                queues,
                rack.location or rack.name.upper(),
                hostname=machine.hostname,
                device_ip=self.ip_addresses.get(machine.hostname),
            )

    # -- serving --------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving /MAAS/api/2.0/... and /v1/... ."""
        app = web.Application(
            middlewares=[lab_middleware(self.requests, self.faults, self._background), flask_errors]
        )
        MaasApi(self).register(app.router)
        TestflingerApi(fleet=self, accounts=self).register(app.router)
        app.on_cleanup.append(self._on_cleanup)
        return app

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[LabUrls]:
        """Serve the lab on `host` (a free port by default) until the block ends."""
        runner = web.AppRunner(
            self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            bound = runner.addresses[0][1]
            base = f"http://{host}:{bound}/"
            yield LabUrls(maas=f"{base}MAAS/", testflinger=base, port=bound)
        finally:
            await runner.cleanup()

    async def _on_cleanup(self, _app: web.Application) -> None:
        self.stop()
        # LATE requests still waiting out their delay are dropped with the lab, never carried out.
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- test controls --------------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Make the next `fault.times` requests matching the fault misbehave."""
        self.faults.append(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def set_maas_status(self, hostname: str, status_name: str) -> None:
        if status_name not in MAAS_STATUSES:
            raise ValueError(f"{status_name!r} is not a MAAS status name")
        self._machines_by_hostname[hostname].maas_status = status_name

    def expire_tokens(self) -> None:
        """Age every Testflinger access token past its lifetime, as if time had passed."""
        for token in self.tokens:
            self.tokens[token] = float("-inf")


def demo_lab(**kwargs: Any) -> Lab:
    """Three racks of eight machines with every behaviour, a machine without an agent; most pass."""
    b = Behaviour
    layout: dict[str, list[Behaviour | None]] = {
        "tor3-a": [*[b.PASS] * 5, b.FAIL, b.SLOW, b.BUSY],
        "tor3-b": [*[b.PASS] * 4, b.RECOVERY_FAIL, b.OFFLINE, b.MAINTENANCE, b.NEVER_PICKS_UP],
        "tor3-c": [*[b.PASS] * 4, b.STALE, b.FAIL_STREAK, b.SHARED_QUEUE, None],
    }
    racks = [
        SimRack(
            name,
            [
                SimMachine(
                    f"{name}-m{i:02d}",
                    behaviour,
                    maas_status="Deployed" if behaviour is not None else "Ready",
                )
                for i, behaviour in enumerate(behaviours, start=1)
            ],
        )
        for name, behaviours in layout.items()
    ]
    return Lab(racks, **kwargs)


def uniform_lab(
    racks: int, per_rack: int, behaviour: Behaviour = Behaviour.PASS, **kwargs: Any
) -> Lab:
    """`racks` racks ("rack-00", ...) of `per_rack` machines ("rack-00-m000", ...) alike."""
    return Lab(
        [
            SimRack(
                f"rack-{r:02d}",
                [SimMachine(f"rack-{r:02d}-m{m:03d}", behaviour) for m in range(per_rack)],
            )
            for r in range(racks)
        ],
        **kwargs,
    )
