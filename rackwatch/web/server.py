"""Where the pages listen: on the daemon's one listener beside /metrics and /healthz, or in
`rackwatch web`, a process of their own over the state file, read-only, until a signal.

May import: aiohttp, structlog, `metrics` (its application and collector), `config`, `errors`,
`store` and the package's `app`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog
from aiohttp import web

from rackwatch.config import Settings, StateSettings
from rackwatch.metrics import MetricsEndpoint, RackList, StateCollector, listen, metrics_app
from rackwatch.store import Store
from rackwatch.web.app import StateSource, add_pages, pages_app

log = structlog.get_logger("rackwatch.web")

DEFAULT_ADDRESS = ("127.0.0.1", 9464)  # `rackwatch web` without --listen or web.listen


async def start_listener(
    store: Store,
    address: tuple[str, int],
    is_running: Callable[[], bool],
    configured: Callable[[], Settings],
    *,
    setting: str = "web.listen",
) -> MetricsEndpoint:
    """The daemon's listener on `address`: the pages and /api from its Store, /metrics and
    /healthz. Raises ConfigError, naming `setting`, if it cannot listen there."""
    racks: RackList = lambda: configured().racks  # noqa: E731 - read again at each scrape
    collector = StateCollector(store, racks)
    app = add_pages(
        metrics_app(collector, is_running), StateSource(configured().state_file, store), configured
    )
    # No access log: a scrape every few seconds would bury the events that matter.
    runner = web.AppRunner(app, access_log=None)
    port = await listen(runner, address, setting)
    log.info("metrics.listening", host=address[0], port=port, pages=True)
    return MetricsEndpoint(runner)


async def serve_pages(
    settings: StateSettings,
    address: tuple[str, int],
    *,
    setting: str,
    on_listening: Callable[[str], None],
) -> None:
    """`rackwatch web`: serve the pages from the state file until SIGINT or SIGTERM.

    `on_listening` is told the URL once listening (with the port chosen for port 0). Raises
    ConfigError, naming `setting`, if it cannot listen on `address`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(
        pages_app(StateSource(settings.state_file), lambda: settings), access_log=None
    )
    port = await listen(runner, address, setting)
    host = address[0]
    on_listening(f"http://{f'[{host}]' if ':' in host else host}:{port}/")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
