"""The MAAS and Testflinger clients, built together from the configuration."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from rackwatch.clients._http import Http, RetryPolicy, make_session
from rackwatch.clients.maas import MaasClient, check_rack_name
from rackwatch.clients.testflinger import TestflingerClient
from rackwatch.config import Settings

__all__ = [
    "Clients",
    "MaasClient",
    "RetryPolicy",
    "TestflingerClient",
    "check_rack_name",
    "connect",
]


@dataclass(frozen=True, slots=True)
class Clients:
    maas: MaasClient
    testflinger: TestflingerClient


@asynccontextmanager
async def connect(
    settings: Settings,
    retry: RetryPolicy | None = None,
    *,
    limiter: asyncio.Semaphore | None = None,
) -> AsyncIterator[Clients]:
    """Both clients over one session, with at most `check.concurrency` requests in flight.

    Pass a `limiter` to share that bound with clients connected elsewhere in the process.
    """
    retry = retry or RetryPolicy()
    limiter = limiter or asyncio.Semaphore(settings.check.concurrency)
    api_key = settings.maas.api_key.get_secret_value()
    secret = settings.testflinger.secret.get_secret_value()
    async with make_session() as session:
        maas = Http(
            "maas",
            session,
            timeout_s=settings.maas.timeout.total_seconds(),
            limiter=limiter,
            retry=retry,
            quote_refusals=False,
            secrets=[api_key.rsplit(":", 1)[-1]],
        )
        testflinger = Http(
            "testflinger",
            session,
            timeout_s=settings.testflinger.timeout.total_seconds(),
            limiter=limiter,
            retry=retry,
            secrets=[secret],
        )
        yield Clients(
            MaasClient(maas, settings.maas.url, api_key),
            TestflingerClient(
                testflinger,
                settings.testflinger.url,
                client_id=settings.testflinger.client_id,
                secret=secret,
            ),
        )
