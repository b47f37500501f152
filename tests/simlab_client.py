"""What the simulated lab's tests share: a small lab with short timings, served with a client
session, and the MAAS and Testflinger calls the tests make to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from oauthlib import oauth1

from rackwatch.simlab import DEFAULT_MAAS_API_KEY, Behaviour, Lab, LabUrls, SimMachine, SimRack

ISO = "%Y-%m-%dT%H:%M:%SZ"


def lab_of(*behaviours: Behaviour | None, **options: Any) -> Lab:
    """One rack "rack-a" of machines m0, m1, ... with these behaviours and short timings."""
    options = {"provision_seconds": 0.1, "pickup_seconds": 0.03, **options}
    machines = [SimMachine(f"m{i}", behaviour) for i, behaviour in enumerate(behaviours)]
    return Lab([SimRack("rack-a", machines)], **options)


@contextlib.asynccontextmanager
async def running(lab: Lab) -> AsyncIterator[tuple[LabUrls, aiohttp.ClientSession]]:
    async with lab.serve() as urls, aiohttp.ClientSession() as session:
        yield urls, session


def maas_auth(api_key: str = DEFAULT_MAAS_API_KEY, **sign: Any) -> dict[str, str]:
    """The Authorization header a MAAS client sends (PLAINTEXT unless told otherwise)."""
    consumer_key, token_key, token_secret = api_key.split(":")
    url = sign.pop("url", "http://127.0.0.1/MAAS/api/2.0/machines/")
    client = oauth1.Client(
        consumer_key,
        client_secret="",
        resource_owner_key=token_key,
        resource_owner_secret=token_secret,
        signature_method=sign.pop("signature_method", oauth1.SIGNATURE_PLAINTEXT),
        **sign,
    )
    _, headers, _ = client.sign(url)
    return {"Authorization": headers["Authorization"]}


async def machines(session: aiohttp.ClientSession, urls: LabUrls, query: str) -> tuple[int, Any]:
    async with session.get(f"{urls.maas}api/2.0/machines/?{query}", headers=maas_auth()) as r:
        return r.status, await r.json()


async def submit(session: aiohttp.ClientSession, urls: LabUrls, queue: str, **fields: Any) -> str:
    body = {"job_queue": queue, "provision_data": {"distro": "noble"}, **fields}
    async with session.post(f"{urls.testflinger}v1/job", json=body) as response:
        assert response.status == 200, await response.text()
        job_id: str = (await response.json())["job_id"]
        return job_id


async def result(session: aiohttp.ClientSession, urls: LabUrls, job_id: str) -> dict[str, Any]:
    async with session.get(f"{urls.testflinger}v1/result/{job_id}") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def result_when(
    session: aiohttp.ClientSession, urls: LabUrls, job_id: str, *states: str
) -> dict[str, Any]:
    """Poll the job's result until its job_state is one of `states`."""
    for _ in range(500):
        body = await result(session, urls, job_id)
        if body["job_state"] in states:
            return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} never reached {states}: {body}")


async def agent_record(session: aiohttp.ClientSession, urls: LabUrls, name: str) -> Any:
    async with session.get(f"{urls.testflinger}v1/agents/data/{name}") as response:
        return await response.json()


async def search(session: aiohttp.ClientSession, urls: LabUrls, query: str) -> tuple[int, Any]:
    async with session.get(f"{urls.testflinger}v1/job/search?{query}") as response:
        return response.status, await response.json()


async def cancel(
    session: aiohttp.ClientSession, urls: LabUrls, job_id: str, action: str = "cancel"
) -> tuple[int, str]:
    url = f"{urls.testflinger}v1/job/{job_id}/action"
    async with session.post(url, json={"action": action}) as response:
        return response.status, await response.text()
