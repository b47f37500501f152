"""The clients of MAAS, Testflinger and the alerts webhook, and the one place that builds the
MAAS and Testflinger clients from the configuration, each with its own part of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from rackwatch.clients._http import Pool, RetryPolicy, make_session
from rackwatch.clients.maas import MaasClient
from rackwatch.clients.testflinger import TestflingerClient
from rackwatch.clients.webhook import WebhookClient
from rackwatch.config import Settings, check_rack_name
from rackwatch.safe_text import Redactor

__all__ = [
    "Clients",
    "MaasClient",
    "TestflingerClient",
    "WebhookClient",
    "Pool",
    "RetryPolicy",
    "check_rack_name",
    "connect",
    "make_clients",
    "make_session",
]


@dataclass(frozen=True, slots=True)
class Clients:
    maas: MaasClient
    testflinger: TestflingerClient


def make_clients(
    settings: Settings,
    session: aiohttp.ClientSession,
    retry: RetryPolicy = RetryPolicy.DEFAULT,
    *,
    limiter: asyncio.Semaphore,
) -> Clients:
    """Both clients over `session`, with at most `limiter`'s count of requests in flight.

    Whatever either service answers is quoted without any of the configured secrets.
    """
    pool = Pool(session, limiter, retry, Redactor(settings.secret_values()))
    return Clients(MaasClient(settings.maas, pool), TestflingerClient(settings.testflinger, pool))


@asynccontextmanager
async def connect(
    settings: Settings,
    retry: RetryPolicy | None = None,
    *,
    limiter: asyncio.Semaphore | None = None,
) -> AsyncIterator[Clients]:
    """Both clients on a session of their own; at most `check.concurrency` requests in flight.

    Pass a `limiter` to share that bound with clients connected elsewhere in the process.
    """
    limiter = limiter or asyncio.Semaphore(settings.check.concurrency)
    async with make_session() as session:
        yield make_clients(settings, session, retry or RetryPolicy.DEFAULT, limiter=limiter)
