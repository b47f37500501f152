"""The simulated lab's faults break the answers they match, as often and as late as told."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from typing import Any

import aiohttp
import pytest

from rackwatch.simlab import Behaviour, Fault, FaultKind, Lab, demo_lab
from tests.simlab_client import lab_of, machines, running, submit


@pytest.mark.parametrize(
    ("kind", "status", "content_type"),
    [
        (FaultKind.UNAVAILABLE, 503, "text/plain"),
        (FaultKind.CONFLICT, 409, "text/plain"),
        (FaultKind.SERVER_ERROR, 500, "text/html"),
        (FaultKind.MALFORMED, 200, "application/json"),
    ],
)
async def test_a_fault_replaces_the_next_matching_answer(
    kind: FaultKind, status: int, content_type: str
) -> None:
    """A fault hits `times` matching requests, then the normal answer comes back."""
    lab = lab_of(Behaviour.PASS)
    lab.inject(Fault(kind, "testflinger", path="/v1/agents/data"))
    async with (
        running(lab) as (urls, session),
        session.get(f"{urls.testflinger}v1/agents/data") as response,
    ):
        assert (response.status, response.content_type) == (status, content_type)
        if kind in (FaultKind.UNAVAILABLE, FaultKind.CONFLICT):
            assert response.headers["Retry-After"] == "1"
        body = await response.text()
        async with session.get(f"{urls.testflinger}v1/agents/data") as response:
            assert response.status == 200
            assert len(await response.json()) == 1
    if kind is FaultKind.MALFORMED:
        with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
            json.loads(body)
    assert lab.requests["GET /v1/agents/data"] == 2


async def test_a_slow_fault_delays_the_normal_answer() -> None:
    """SLOW answers normally, after its delay."""
    lab = demo_lab()
    lab.inject(Fault(FaultKind.SLOW, "maas", delay=0.2))
    async with running(lab) as (urls, session):
        started = time.monotonic()
        status, body = await machines(session, urls, "tags=tor3-a")
    assert time.monotonic() - started >= 0.2
    assert (status, len(body)) == (200, 8)


async def test_a_fault_hits_only_its_service_path_and_method() -> None:
    """A fault for POST /v1/job leaves MAAS, other paths and other methods alone."""
    lab = lab_of(Behaviour.NEVER_PICKS_UP)
    lab.inject(
        Fault(FaultKind.UNAVAILABLE, "testflinger", path="/v1/job", method="POST", times=None)
    )
    async with running(lab) as (urls, session):
        status, _ = await machines(session, urls, "tags=rack-a")
        assert status == 200
        async with session.get(f"{urls.testflinger}v1/agents/data/m0") as response:
            assert response.status == 200
        for _ in range(3):
            async with session.post(f"{urls.testflinger}v1/job", json={"job_queue": "m0"}) as r:
                assert r.status == 503
    assert lab.submissions == []
    assert lab.requests["POST /v1/job"] == 3


@pytest.mark.parametrize(("kind", "stored"), [(FaultKind.SLOW, False), (FaultKind.LATE, True)])
async def test_only_a_late_fault_carries_out_a_request_whose_client_gave_up(
    kind: FaultKind, stored: bool
) -> None:
    """A client that times out cancels a SLOW request, but a LATE one is stored all the same."""
    lab = lab_of(Behaviour.NEVER_PICKS_UP)
    lab.inject(Fault(kind, "testflinger", path="/v1/job", method="POST", delay=0.3))
    chosen = str(uuid.uuid4())
    async with running(lab) as (urls, session):
        body = {"job_queue": "m0", "job_id": chosen}
        impatient = aiohttp.ClientTimeout(total=0.1)
        with pytest.raises(TimeoutError):
            await session.post(f"{urls.testflinger}v1/job", json=body, timeout=impatient)
        assert lab.jobs(chosen) == []
        await asyncio.sleep(0.5)
        assert len(lab.jobs(chosen)) == (1 if stored else 0)
    assert lab.requests["POST /v1/job"] == 1


async def test_a_late_fault_answers_a_client_that_waits() -> None:
    """A LATE request whose client stays is answered normally once its delay has passed."""
    lab = lab_of(Behaviour.NEVER_PICKS_UP)
    lab.inject(Fault(FaultKind.LATE, "testflinger", path="/v1/job", method="POST", delay=0.2))
    async with running(lab) as (urls, session):
        started = time.monotonic()
        job_id = await submit(session, urls, "m0")
        waited = time.monotonic() - started
    assert waited >= 0.2
    assert [job.job_id for job in lab.jobs(job_id)] == [job_id]


@pytest.mark.parametrize("serial", [True, False])
async def test_serial_late_posts_are_stored_one_after_the_other(serial: bool) -> None:
    """With serial, each POST waits for the one before it, then its own delay; else they overlap."""
    lab = lab_of(Behaviour.NEVER_PICKS_UP)
    lab.inject(
        Fault(
            FaultKind.LATE,
            "testflinger",
            path="/v1/job",
            method="POST",
            times=None,
            delay=0.2,
            serial=serial,
        )
    )
    chosen = [str(uuid.uuid4()) for _ in range(3)]
    impatient = aiohttp.ClientTimeout(total=0.05)

    async def post(job_id: str) -> None:
        body = {"job_queue": "m0", "job_id": job_id}
        with pytest.raises(TimeoutError):
            await session.post(f"{urls.testflinger}v1/job", json=body, timeout=impatient)

    async with running(lab) as (urls, session):
        await asyncio.gather(*(post(job_id) for job_id in chosen))
        async with asyncio.timeout(5):
            while len(lab.submissions) < 3:  # noqa: ASYNC110 - polling the lab's own state
                await asyncio.sleep(0.02)
    stored = sorted(lab.jobs(job_id)[0].created_at for job_id in chosen)
    gaps = [later - earlier for earlier, later in itertools.pairwise(stored)]
    if serial:
        assert min(gaps) >= 0.19
    else:
        assert max(gaps) < 0.15


async def test_a_lab_stops_at_once_with_a_late_request_still_pending() -> None:
    """Leaving serve() cancels a LATE request nobody waits for, so it is never carried out."""
    lab = lab_of(Behaviour.NEVER_PICKS_UP)
    lab.inject(Fault(FaultKind.LATE, "testflinger", path="/v1/job", method="POST", delay=30.0))
    async with running(lab) as (urls, session):
        with pytest.raises(TimeoutError):
            await session.post(
                f"{urls.testflinger}v1/job",
                json={"job_queue": "m0"},
                timeout=aiohttp.ClientTimeout(total=0.1),
            )
        started = time.monotonic()
    assert time.monotonic() - started < 2.0
    assert lab.submissions == []


async def statuses_under(fault: Fault, count: int) -> tuple[list[int], Lab]:
    """The statuses of `count` agent listings, one after the other, with `fault` injected."""
    lab = lab_of(Behaviour.PASS)
    lab.inject(fault)
    statuses = []
    async with running(lab) as (urls, session):
        for _ in range(count):
            async with session.get(f"{urls.testflinger}v1/agents/data") as response:
                statuses.append(response.status)
    return statuses, lab


async def test_a_fault_with_a_ratio_hits_a_repeatable_fraction_of_requests() -> None:
    """ratio=0.5 hits the requests a Random(seed) picks: the same ones in every run."""

    def fault(seed: int) -> Fault:
        return Fault(FaultKind.SERVER_ERROR, "testflinger", times=None, ratio=0.5, seed=seed)

    first, _ = await statuses_under(fault(7), 20)
    again, _ = await statuses_under(fault(7), 20)
    other, _ = await statuses_under(fault(8), 20)
    draws = random.Random(7)  # noqa: S311 - the fault's own draws, replayed
    assert first == [500 if draws.random() < 0.5 else 200 for _ in range(20)]
    assert again == first
    assert other != first
    assert 5 <= first.count(500) <= 15


async def test_only_hits_count_against_a_faults_times() -> None:
    """A fault of ratio 0.5 and times=3 answers exactly three 500s, then goes away."""
    fault = Fault(FaultKind.SERVER_ERROR, "testflinger", times=3, ratio=0.5)
    statuses, lab = await statuses_under(fault, 20)
    assert statuses.count(500) == 3
    assert statuses[-5:] == [200] * 5
    assert lab.faults == []


async def test_an_endless_answer_goes_on_for_as_long_as_the_client_reads() -> None:
    """ENDLESS streams a JSON list without a length and without an end, until the client leaves."""
    lab = lab_of(Behaviour.PASS)
    lab.inject(Fault(FaultKind.ENDLESS, "maas", path="/machines/"))
    async with running(lab) as (urls, session):
        async with session.get(f"{urls.maas}api/2.0/machines/?tags=rack-a") as response:
            assert (response.status, response.content_type) == (200, "application/json")
            assert response.content_length is None
            read = b""
            while len(read) < 5 * 2**20:
                read += await response.content.read(2**20)
            assert read.startswith(b'[{"name": "filler"')
            assert not response.content.at_eof()
        # The lab answers normally once the fault is spent, the endless answer abandoned.
        status, body = await machines(session, urls, "tags=rack-a")
    assert (status, len(body)) == (200, 1)


async def test_a_huge_answer_is_valid_json_of_the_size_it_declares() -> None:
    """HUGE answers a JSON list of exactly `size` bytes, with its Content-Length."""
    lab = lab_of(Behaviour.PASS)
    lab.inject(Fault(FaultKind.HUGE, "testflinger", path="/v1/agents/data", size=300_001))
    async with (
        running(lab) as (urls, session),
        session.get(f"{urls.testflinger}v1/agents/data") as response,
    ):
        assert response.content_length == 300_001
        body = await response.read()
    assert len(body) == 300_001
    records = json.loads(body)
    assert len(records) > 200
    assert records[-1] == {}


async def test_a_deep_answer_nests_past_what_json_can_decode() -> None:
    """DEEP answers lists nested `depth` deep, which Python's json refuses with RecursionError."""
    lab = lab_of(Behaviour.PASS)
    lab.inject(Fault(FaultKind.DEEP, "testflinger", path="/v1/agents/data"))
    async with (
        running(lab) as (urls, session),
        session.get(f"{urls.testflinger}v1/agents/data") as response,
    ):
        assert response.content_type == "application/json"
        body = await response.read()
    assert body == b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(RecursionError):
        json.loads(body)


async def test_an_echoing_error_page_shows_the_request_headers_back() -> None:
    """ECHO_HEADERS answers its status with the request line and every header, credentials too."""
    lab = lab_of(Behaviour.PASS)
    lab.inject(Fault(FaultKind.ECHO_HEADERS, "testflinger", path="/v1/oauth2/token", status=401))
    login = aiohttp.encode_basic_auth("rackwatch", "s3cret-value-123456")
    async with (
        running(lab) as (urls, session),
        session.post(
            f"{urls.testflinger}v1/oauth2/token?x=1", headers={"Authorization": login}
        ) as response,
    ):
        assert (response.status, response.content_type) == (401, "text/plain")
        page = (await response.text()).splitlines()
    assert page[:3] == [
        "401 Unauthorized",
        "The server could not handle this request:",
        "POST /v1/oauth2/token?x=1 HTTP/1.1",
    ]
    assert f"Authorization: {login}" in page
    assert f"Host: 127.0.0.1:{urls.port}" in page


@pytest.mark.parametrize(
    "options",
    [
        {"ratio": 0.0},
        {"ratio": -0.5},
        {"ratio": 1.5},
        {"kind": FaultKind.UNAVAILABLE, "serial": True},
    ],
)
def test_a_fault_refuses_a_bad_ratio_and_serial_on_a_kind_that_does_not_delay(
    options: dict[str, Any],
) -> None:
    """A ratio must be in (0, 1]; only SLOW and LATE faults, which delay, can be serial."""
    with pytest.raises(ValueError, match=r"^(ratio|only SLOW)"):
        Fault(**{"kind": FaultKind.SLOW, "service": "testflinger", **options})
