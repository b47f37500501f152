"""`rackwatch check-config`'s trial of the services: MAAS for each rack, then Testflinger.

Lists each configured rack's machines, logs in to Testflinger when a client_id is set and lists
its agents, all at once, and says what each answered; it submits nothing and writes no state.
May import: `clients`, `config`, `errors` and `render.table`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from rackwatch.clients import Clients, RetryPolicy, connect
from rackwatch.config import Settings
from rackwatch.errors import UpstreamError
from rackwatch.render.table import plural


@dataclass(frozen=True, slots=True)
class Trial:
    """What trying one service said, line by line, and what failed if anything did."""

    lines: list[str]
    failed: str | None = None


async def try_services(settings: Settings) -> list[Trial]:
    """Try every configured rack's MAAS listing and Testflinger at once, in that order."""
    async with connect(settings, RetryPolicy.PROBE) as clients:
        trials = (_try_maas(clients, rack) for rack in settings.racks)
        return await asyncio.gather(*trials, _try_testflinger(clients, settings))


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
    return Trial([*said, f"testflinger: {plural(len(agents), 'agent')}"])
