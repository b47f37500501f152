"""The simulated lab behaves like MAAS and Testflinger, quirks included, over real HTTP."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import itertools
import json
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from oauthlib import oauth1

from rackwatch.simlab import (
    DEFAULT_MAAS_API_KEY,
    Behaviour,
    Fault,
    FaultKind,
    Lab,
    LabUrls,
    SimMachine,
    SimRack,
    demo_lab,
    uniform_lab,
)

SECRET = DEFAULT_MAAS_API_KEY.split(":")[2]
ISO = "%Y-%m-%dT%H:%M:%SZ"
LOGIN = ("rackwatch", "s3cret-client-key")
CREDENTIALS = {"Authorization": aiohttp.encode_basic_auth(*LOGIN)}
STATE_CHOICES = (
    "Must be one of: setup, provision, firmware_update, test, allocate, allocated, reserve, "
    "cleanup, cancelled, completed, active."
)


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


# -- MAAS --------------------------------------------------------------------------------------


async def test_maas_lists_a_racks_machines_for_a_plaintext_signed_request() -> None:
    """oauthlib's PLAINTEXT header with an empty consumer secret gets the rack's machines."""
    async with running(demo_lab()) as (urls, session):
        status, body = await machines(session, urls, "tags=tor3-a")
    assert status == 200
    assert [m["hostname"] for m in body] == [f"tor3-a-m0{i}" for i in range(1, 9)]
    first = body[0]
    assert re.fullmatch(r"[a-z0-9]{6}", first["system_id"])
    assert first["tag_names"] == ["tor3-a"]
    assert (first["status"], first["status_name"], first["power_state"]) == (6, "Deployed", "on")
    assert first["resource_uri"] == f"/MAAS/api/2.0/machines/{first['system_id']}/"


async def test_maas_without_a_signature_answers_a_bare_401() -> None:
    """A request missing the oauth_* names is anonymous, and listing machines needs a user."""
    async with (
        running(demo_lab()) as (urls, session),
        session.get(f"{urls.maas}api/2.0/machines/?tags=tor3-a") as response,
    ):
        assert response.status == 401
        assert response.content_type == "text/plain"


async def test_maas_refuses_a_replayed_nonce() -> None:
    """Sending the same signed header twice fails the second time, as piston stores nonces."""
    header = maas_auth()
    async with running(demo_lab()) as (urls, session):
        url = f"{urls.maas}api/2.0/machines/?tags=tor3-a"
        async with session.get(url, headers=header) as first:
            assert first.status == 200
        async with session.get(url, headers=header) as second:
            assert second.status == 401
            assert "Nonce already used" in await second.text()


async def test_maas_wrong_secret_answer_echoes_the_real_secret() -> None:
    """Like the real MAAS, a bad PLAINTEXT signature's 401 quotes the expected '&secret'."""
    wrong = DEFAULT_MAAS_API_KEY.rsplit(":", 1)[0] + ":not-the-secret"
    async with running(demo_lab()) as (urls, session):
        url = f"{urls.maas}api/2.0/machines/"
        async with session.get(url, headers=maas_auth(wrong)) as response:
            assert response.status == 401
            text = await response.text()
    assert text == (
        f"Authorization Error: 'Invalid signature. Expected signature base string: &{SECRET}'"
    )


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "unknownConsumer:SmLbTkenKeyFake456:" + SECRET,
            "Authorization Error: Invalid API key.",
        ),
        (
            "SmLbCnsmrKeyFake23:deletedToken:" + SECRET,
            "Authorization Error: 'Invalid access token: deletedToken'",
        ),
    ],
)
async def test_maas_names_an_unknown_consumer_or_token(key: str, message: str) -> None:
    """Unknown consumer and token keys get piston's two distinct messages."""
    async with (
        running(demo_lab()) as (urls, session),
        session.get(f"{urls.maas}api/2.0/machines/", headers=maas_auth(key)) as r,
    ):
        assert (r.status, await r.text()) == (401, message)


async def test_maas_refuses_a_timestamp_older_than_five_minutes() -> None:
    """A client clock 400 s behind gets 'Expired timestamp'."""
    old = maas_auth(timestamp=str(int(time.time()) - 400))
    async with (
        running(demo_lab()) as (urls, session),
        session.get(f"{urls.maas}api/2.0/machines/", headers=old) as response,
    ):
        assert response.status == 401
        assert "Expired timestamp" in await response.text()


async def test_maas_accepts_an_hmac_sha1_signature_over_the_full_url() -> None:
    """HMAC-SHA1, signed over the exact URL with its query, is accepted too."""
    async with running(demo_lab()) as (urls, session):
        url = f"{urls.maas}api/2.0/machines/?tags=tor3-b"
        header = maas_auth(signature_method=oauth1.SIGNATURE_HMAC_SHA1, url=url)
        async with session.get(url, headers=header) as response:
            assert response.status == 200
            assert len(await response.json()) == 8


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("tags=tor3-a", 8),
        ("tags=tor3-a&tags=tor3-b", 0),  # AND: no machine is in both racks
        ("tags=tor3-a,tor3-b", 0),  # the legacy comma form
        ("tags=tor3-c&not_tags=tor3-a", 8),
        ("tags=tor3-c&status=ready", 1),  # the machine without an agent
        ("tags=", 24),  # an empty value filters nothing: every machine
        ("tags=empty-rack", 0),
    ],
)
async def test_maas_filters_machines_by_tag_like_maas(query: str, count: int) -> None:
    """Tags combine with AND, accept commas, and an empty value applies no filter at all."""
    async with running(demo_lab(extra_tags=["empty-rack"])) as (urls, session):
        status, body = await machines(session, urls, query)
    assert (status, len(body)) == (200, count)


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("tags=no-such-rack", {"tags": ["No such tag(s): 'no-such-rack'."]}),
        ("tags=TOR3-A", {"tags": ["No such tag(s): 'TOR3-A'."]}),  # names match exactly
        ("tag=tor3-a", {"tag": ["No such constraint."]}),
    ],
)
async def test_maas_answers_400_for_an_unknown_tag_or_parameter(
    query: str, error: dict[str, list[str]]
) -> None:
    """An unknown tag is an error, not an empty list, and so is a misspelt parameter."""
    async with running(demo_lab()) as (urls, session):
        assert await machines(session, urls, query) == (400, error)


async def test_maas_redirects_the_slashless_path() -> None:
    """Django's APPEND_SLASH answers 301 to the slashed URL, keeping the query."""
    async with running(demo_lab()) as (urls, session):
        url = f"{urls.maas}api/2.0/machines?tags=tor3-a"
        async with session.get(url, allow_redirects=False) as response:
            assert response.status == 301
            assert response.headers["Location"] == "/MAAS/api/2.0/machines/?tags=tor3-a"


async def test_maas_version_is_open_and_whoami_needs_the_key() -> None:
    """The version probe needs no credentials; whoami returns the key's user."""
    async with (
        running(demo_lab()) as (urls, session),
        session.get(f"{urls.maas}api/2.0/version/") as response,
    ):
        assert (await response.json())["version"].startswith("3.")
        whoami = f"{urls.maas}api/2.0/users/?op=whoami"
        async with session.get(whoami, headers=maas_auth()) as response:
            assert (await response.json())["username"] == "rackwatch"


def test_system_ids_are_stable_per_hostname() -> None:
    """The same hostname gets the same system_id in every lab, and ids never collide."""
    one, two = uniform_lab(2, 50), uniform_lab(2, 50)
    assert one.system_ids == two.system_ids
    assert len(set(one.system_ids.values())) == 100


# -- Testflinger: agents ---------------------------------------------------------------------


async def test_agents_show_the_state_each_behaviour_calls_for() -> None:
    """Offline, maintenance, busy, stale, fail-streak and shared-queue agents look the part."""
    async with (
        running(demo_lab()) as (urls, session),
        session.get(f"{urls.testflinger}v1/agents/data") as response,
    ):
        agents = {a["name"]: a for a in await response.json()}
    assert "tor3-c-m08" not in agents  # the machine without an agent
    assert len(agents) == 23
    passing = agents["tor3-a-m01"]
    assert passing["queues"] == ["tor3-a-m01", "tor3-a-any"]
    assert (passing["state"], passing["location"], passing["provision_type"]) == (
        "waiting",
        "TOR3-A",
        "maas2",
    )
    assert "job_id" not in passing and "provision_streak_type" not in passing
    assert agents["tor3-b-m06"]["state"] == "offline"
    assert agents["tor3-b-m07"]["state"] == "maintenance"
    busy = agents["tor3-a-m08"]
    assert busy["state"] == "test" and uuid.UUID(busy["job_id"])
    stale = calendar.timegm(time.strptime(agents["tor3-c-m05"]["updated_at"], ISO))
    fresh = calendar.timegm(time.strptime(agents["tor3-b-m08"]["updated_at"], ISO))
    assert fresh - stale > 2 * 24 * 3600  # NEVER_PICKS_UP looks alive, STALE does not
    streak = agents["tor3-c-m06"]
    assert (streak["provision_streak_type"], streak["provision_streak_count"]) == ("fail", 25)
    (shared_queue,) = agents["tor3-c-m07"]["queues"]
    sharers = [name for name, agent in agents.items() if shared_queue in agent["queues"]]
    assert len(sharers) == 2


async def test_unknown_agent_is_404_with_an_empty_object() -> None:
    """GET /v1/agents/data/<unknown> answers 404 {} (and names are case-sensitive)."""
    async with (
        running(lab_of(Behaviour.PASS)) as (urls, session),
        session.get(f"{urls.testflinger}v1/agents/data/M0") as response,
    ):
        assert (response.status, await response.json()) == (404, {})


# -- Testflinger: jobs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "code", "state_after", "streak"),
    [
        (Behaviour.PASS, 0, "waiting", "pass"),
        (Behaviour.FAIL, 1, "waiting", "fail"),
        (Behaviour.RECOVERY_FAIL, 46, "offline", "fail"),
        (Behaviour.FAIL_STREAK, 0, "waiting", "pass"),
    ],
)
async def test_a_job_runs_to_complete_with_the_behaviours_provision_status(
    behaviour: Behaviour, code: int, state_after: str, streak: str
) -> None:
    """The agent takes the job, provisions with its exit code, and ends the job "complete"."""
    async with running(lab_of(behaviour)) as (urls, session):
        job_id = await submit(session, urls, "m0")
        assert (await result(session, urls, job_id))["job_state"] == "waiting"
        running_job = await result_when(session, urls, job_id, "provision")
        assert running_job["setup_status"] == 0 and "provision_status" not in running_job
        assert (await agent_record(session, urls, "m0"))["job_id"] == job_id
        done = await result_when(session, urls, job_id, "complete")
        agent = await agent_record(session, urls, "m0")
    assert done["provision_status"] == code
    assert done["cleanup_status"] == 0
    assert done["device_info"]["agent_name"] == "m0"
    assert (agent["state"], agent["job_id"]) == (state_after, "")
    assert agent["provision_streak_type"] == streak and agent["provision_streak_count"] == 1
    if behaviour is Behaviour.RECOVERY_FAIL:
        assert agent["comment"] == (
            f"Set to offline by agent. Recovery failed during job '{job_id}' execution."
        )


@pytest.mark.parametrize(
    "behaviour",
    [Behaviour.NEVER_PICKS_UP, Behaviour.STALE, Behaviour.BUSY, Behaviour.OFFLINE],
)
async def test_a_job_for_an_agent_that_does_not_serve_stays_waiting(behaviour: Behaviour) -> None:
    """Agents that are stuck, stale, busy or offline never take the job."""
    async with running(lab_of(behaviour, pickup_seconds=0.01)) as (urls, session):
        job_id = await submit(session, urls, "m0")
        await asyncio.sleep(0.05)
        assert (await result(session, urls, job_id))["job_state"] == "waiting"


async def test_a_slow_agent_is_still_provisioning_when_a_normal_one_is_done() -> None:
    """SLOW stretches provisioning by the slow factor."""
    async with running(lab_of(Behaviour.PASS, Behaviour.SLOW)) as (urls, session):
        normal, slow = await submit(session, urls, "m0"), await submit(session, urls, "m1")
        await result_when(session, urls, normal, "complete")
        assert (await result(session, urls, slow))["job_state"] == "provision"


async def test_an_agent_takes_the_next_waiting_job_when_it_becomes_idle() -> None:
    """Two jobs on one agent's queue run one after the other."""
    async with running(lab_of(Behaviour.PASS)) as (urls, session):
        first, second = await submit(session, urls, "m0"), await submit(session, urls, "m0")
        await result_when(session, urls, first, "provision")
        assert (await result(session, urls, second))["job_state"] == "waiting"
        await result_when(session, urls, second, "complete")
        agent = await agent_record(session, urls, "m0")
    assert agent["provision_streak_count"] == 2


async def test_a_behaviour_change_applies_to_the_next_job() -> None:
    """set_behaviour lets a test turn a passing machine into a failing one between cycles."""
    lab = lab_of(Behaviour.PASS)
    async with running(lab) as (urls, session):
        lab.set_behaviour("m0", Behaviour.FAIL)
        job_id = await submit(session, urls, "m0")
        assert (await result_when(session, urls, job_id, "complete"))["provision_status"] == 1
        lab.set_behaviour("m0", Behaviour.OFFLINE)
        assert (await agent_record(session, urls, "m0"))["state"] == "offline"


async def test_duplicate_job_id_stores_a_second_job() -> None:
    """A client-chosen job_id is echoed back, and resubmitting it stores another job."""
    lab = lab_of(Behaviour.NEVER_PICKS_UP)
    chosen = str(uuid.uuid4())
    async with running(lab) as (urls, session):
        assert await submit(session, urls, "m0", job_id=chosen) == chosen
        assert await submit(session, urls, "m0", job_id=chosen) == chosen
    assert len(lab.jobs(chosen)) == 2
    assert len(lab.submissions_for("m0")) == 2


@pytest.mark.parametrize(
    ("body", "headers", "status", "answer"),
    [
        (
            '{"job_queue": "m0"}',
            {},  # no Content-Type: the body is not even read
            422,
            {"job_queue": ["Missing data for required field."]},
        ),
        ('{"job_queue": ""}', None, 422, {"job_queue": ["Shorter than minimum length 1."]}),
        ('{"job_queue": "m0", "queue": "x"}', None, 422, {"queue": ["Unknown field."]}),
        (
            '{"job_queue": "m0", "provision_data": {"foo": 1}}',
            None,
            422,
            {"provision_data": {"_schema": ["Invalid provision data schema."]}},
        ),
        ('{"job_queue": "m0", "job_id": "42"}', None, 400, "Invalid job_id specified"),
        ('{"job_queue": ', None, 400, "Bad Request"),
    ],
)
async def test_job_submission_is_validated_like_the_real_server(
    body: str, headers: dict[str, str] | None, status: int, answer: Any
) -> None:
    """Missing Content-Type, bad fields and bad ids get the real server's statuses and shapes."""
    lab = lab_of(Behaviour.PASS)
    headers = {"Content-Type": "application/json"} if headers is None else headers
    async with (
        running(lab) as (urls, session),
        session.post(f"{urls.testflinger}v1/job", data=body, headers=headers) as r,
    ):
        assert r.status == status
        got = await r.json()
    if status == 422:
        assert got == {"message": "Validation error", "detail": {"json": answer}}
    else:
        assert got == {"message": answer, "detail": {}}
    assert lab.submissions == []


async def test_result_of_an_unknown_job_is_204_and_of_a_non_uuid_400() -> None:
    """204 means "never stored"; a malformed id is a 400."""
    async with (
        running(lab_of(Behaviour.PASS)) as (urls, session),
        session.get(f"{urls.testflinger}v1/result/{uuid.uuid4()}") as response,
    ):
        assert (response.status, await response.read()) == (204, b"")
        async with session.get(f"{urls.testflinger}v1/result/not-a-uuid") as response:
            assert response.status == 400


# -- Testflinger: job search and job definitions -----------------------------------------------


async def test_job_search_filters_by_tags_and_states_like_the_real_server() -> None:
    """Tags match any (or all), "active" keeps unended jobs, and a shared id is listed twice."""
    lab = lab_of(Behaviour.PASS, Behaviour.NEVER_PICKS_UP, Behaviour.SLOW, slow_factor=200.0)
    async with running(lab) as (urls, session):
        done = await submit(session, urls, "m0", tags=["rw", "rack-a"])
        await result_when(session, urls, done, "complete")
        waiting = await submit(session, urls, "m1", tags=["rw"])
        provisioning = await submit(session, urls, "m2", tags=["rw", "rack-a"])
        await result_when(session, urls, provisioning, "provision")
        cancelled = await submit(session, urls, "m1", tags=["rw"])
        assert await cancel(session, urls, cancelled) == (200, "OK")
        other = await submit(session, urls, "m1", tags=["other"])
        untagged = await submit(session, urls, "m1")
        assert await submit(session, urls, "m1", tags=["rw"], job_id=waiting) == waiting

        answers = {
            query: await search(session, urls, query)
            for query in (
                "tags=rw&state=active",
                "tags=rw&tags=rack-a&match=all",
                "tags=rack-a&tags=other",
                "state=provision&state=cancelled",
                "state=completed",
                "tags=nobody",
                "",
            )
        }
        async with session.get(f"{urls.testflinger}v1/job/search/?tags=rw&state=active") as r:
            status, slashed = r.status, await r.json()

    def ids(query: str) -> list[str]:
        code, jobs = answers[query]
        assert code == 200
        return [job["job_id"] for job in jobs]

    assert ids("tags=rw&state=active") == [waiting, provisioning, waiting]
    assert [job["job_state"] for job in answers["tags=rw&state=active"][1]] == [
        "waiting",
        "provision",
        "waiting",
    ]
    assert ids("tags=rw&tags=rack-a&match=all") == [done, provisioning]
    assert ids("tags=rack-a&tags=other") == [done, provisioning, other]
    assert ids("state=provision&state=cancelled") == [provisioning, cancelled]
    assert ids("state=completed") == []  # finished jobs are "complete"
    assert ids("tags=nobody") == []
    assert ids("") == [done, waiting, provisioning, cancelled, other, untagged, waiting]
    assert (status, slashed) == answers["tags=rw&state=active"]
    first = answers["tags=rw&state=active"][1][0]
    assert set(first) == {"job_id", "created_at", "job_state"}
    created = calendar.timegm(time.strptime(first["created_at"], ISO))
    assert abs(created - time.time()) < 60
    assert lab.requests["GET /v1/job/search"] == 8


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        *(
            (f"state={state}", {"state": [STATE_CHOICES]})
            for state in ("waiting", "running", "complete", "bogus")
        ),
        ("state=active&state=waiting", {"state": [STATE_CHOICES]}),
        ("tags=rw&match=some", {"match": ["Must be one of: any, all."]}),
    ],
)
async def test_job_search_refuses_states_and_match_modes_it_does_not_know(
    query: str, errors: dict[str, list[str]]
) -> None:
    """Waiting, running and complete are not searchable states: 422 in the query validation shape."""
    async with running(lab_of(Behaviour.PASS)) as (urls, session):
        assert await search(session, urls, query) == (
            422,
            {"message": "Validation error", "detail": {"query": errors}},
        )


async def test_a_job_definition_is_the_submitted_body_with_its_id() -> None:
    """GET /v1/job/<id> gives the body back with job_id and exclude_agents; 204 and 400 otherwise."""
    lab = lab_of(Behaviour.NEVER_PICKS_UP)
    chosen = str(uuid.uuid4())
    async with running(lab) as (urls, session):
        await submit(session, urls, "m0", job_id=chosen, tags=["rw"])
        async with session.get(f"{urls.testflinger}v1/job/{chosen}") as response:
            assert response.status == 200
            definition = await response.json()
        async with session.get(f"{urls.testflinger}v1/job/{uuid.uuid4()}/") as response:
            unknown = (response.status, await response.read())
        async with session.get(f"{urls.testflinger}v1/job/not-a-uuid") as response:
            malformed = (response.status, await response.json())
    assert definition == {
        "job_queue": "m0",
        "provision_data": {"distro": "noble"},
        "tags": ["rw"],
        "job_id": chosen,
        "exclude_agents": [],
    }
    assert unknown == (204, b"")
    assert malformed == (400, {"message": "Invalid job_id specified", "detail": {}})
    assert lab.requests["GET /v1/job/{job_id}"] == 3


async def test_job_search_and_definitions_are_refused_to_an_agent_token() -> None:
    """Both are open to admin, manager and contributor only, unlike results."""
    lab = lab_of(Behaviour.PASS, testflinger_role="agent", testflinger_login=LOGIN)
    async with running(lab) as (urls, session):
        async with session.post(f"{urls.testflinger}v1/oauth2/token", headers=CREDENTIALS) as r:
            bearer = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
        statuses = []
        for path in (
            "v1/job/search?tags=rw",
            f"v1/job/{uuid.uuid4()}",
            f"v1/result/{uuid.uuid4()}",
        ):
            async with session.get(f"{urls.testflinger}{path}", headers=bearer) as response:
                statuses.append(response.status)
    assert statuses == [403, 403, 204]


# -- Testflinger: cancelling -------------------------------------------------------------------


async def test_cancelling_a_waiting_job_is_final() -> None:
    """A cancelled waiting job is never picked up; cancelling it again is a plain-text 400."""
    lab = lab_of(Behaviour.NEVER_PICKS_UP, pickup_seconds=0.01)
    async with running(lab) as (urls, session):
        job_id = await submit(session, urls, "m0")
        assert await cancel(session, urls, job_id) == (200, "OK")
        lab.set_behaviour("m0", Behaviour.PASS)  # now it would take any waiting job
        await asyncio.sleep(0.05)
        assert (await result(session, urls, job_id))["job_state"] == "cancelled"
        again = await cancel(session, urls, job_id)
    assert again == (400, "The job is already completed or cancelled")
    assert lab.cancelled == [job_id]


async def test_cancelling_during_setup_skips_provisioning() -> None:
    """The agent notices the cancel, skips provision, cleans up and ends the job "complete"."""
    async with running(lab_of(Behaviour.PASS, pickup_seconds=0.1)) as (urls, session):
        job_id = await submit(session, urls, "m0")
        await result_when(session, urls, job_id, "setup")
        assert await cancel(session, urls, job_id) == (200, "OK")
        assert (await result(session, urls, job_id))["job_state"] == "cancelled"
        done = await result_when(session, urls, job_id, "complete")
    assert "provision_status" not in done
    assert done["cleanup_status"] == 0


async def test_cancelling_during_provision_lets_provision_finish() -> None:
    """The job reads cancelled while the agent provisions on, then "complete" with its status."""
    async with running(lab_of(Behaviour.FAIL, provision_seconds=0.5)) as (urls, session):
        job_id = await submit(session, urls, "m0")
        await result_when(session, urls, job_id, "provision")
        assert await cancel(session, urls, job_id) == (200, "OK")
        seen = []
        for _ in range(3):
            job = await result(session, urls, job_id)
            agent = await agent_record(session, urls, "m0")
            seen.append(
                (job["job_state"], "provision_status" in job, agent["state"], agent["job_id"])
            )
            await asyncio.sleep(0.05)
        done = await result_when(session, urls, job_id, "complete")
        after = await agent_record(session, urls, "m0")
    assert seen == [("cancelled", False, "provision", job_id)] * 3
    assert done["provision_status"] == 1
    assert done["cleanup_status"] == 0
    assert (after["state"], after["job_id"]) == ("waiting", "")
    assert after["provision_streak_type"] == "fail"


@pytest.mark.parametrize(
    ("job_id", "action", "answer"),
    [
        (str(uuid.uuid4()), "cancel", (400, "The job is already completed or cancelled")),
        ("not-a-uuid", "cancel", (400, "Invalid job id\n")),
    ],
)
async def test_cancel_refuses_unknown_and_malformed_ids(
    job_id: str, action: str, answer: tuple[int, str]
) -> None:
    """An unknown job is "already completed or cancelled"; a malformed id is "Invalid job id"."""
    async with running(lab_of(Behaviour.PASS)) as (urls, session):
        assert await cancel(session, urls, job_id, action) == answer


async def test_only_cancel_is_an_action() -> None:
    """Any other action is a validation error."""
    async with running(lab_of(Behaviour.PASS)) as (urls, session):
        status, text = await cancel(session, urls, str(uuid.uuid4()), "pause")
    assert status == 422
    assert json.loads(text)["detail"]["json"] == {"action": ["Must be one of: cancel."]}


# -- Testflinger: login ------------------------------------------------------------------------


async def test_a_locked_down_server_wants_a_bearer_token() -> None:
    """With a login configured, only `Bearer <token>` from /v1/oauth2/token opens endpoints."""
    lab = lab_of(Behaviour.PASS, testflinger_login=("rackwatch", "s3cret-client-key"))
    async with running(lab) as (urls, session):
        agents = f"{urls.testflinger}v1/agents/data"
        async with session.get(agents) as response:
            assert response.status == 401
            assert (await response.json())["message"] == (
                "Authentication is required for specified endpoint"
            )
        login = f"{urls.testflinger}v1/oauth2/token"
        wrong = {"Authorization": aiohttp.encode_basic_auth("rackwatch", "wrong")}
        async with session.post(login, headers=wrong) as response:
            assert (response.status, await response.text()) == (
                401,
                "Invalid client id or client key",
            )
        async with session.post(login, headers=CREDENTIALS) as response:
            grant = await response.json()
        assert (grant["token_type"], grant["expires_in"]) == ("Bearer", 600)
        token = grant["access_token"]
        async with session.get(agents, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200
        for header in (token, "Bearer not-a-token"):
            async with session.get(agents, headers={"Authorization": header}) as response:
                assert response.status == 403
    assert lab.logins == 1
    assert lab.requests["POST /v1/oauth2/token"] == 2


async def test_an_expired_token_gets_401_token_has_expired() -> None:
    """A token older than its lifetime is refused with 401, so clients log in again."""
    lab = lab_of(Behaviour.PASS, testflinger_login=("rackwatch", "s3cret-client-key"))
    async with running(lab) as (urls, session):
        login = f"{urls.testflinger}v1/oauth2/token"
        async with session.post(login, headers=CREDENTIALS) as response:
            token = (await response.json())["access_token"]
        lab.expire_tokens()
        bearer = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{urls.testflinger}v1/result/{uuid.uuid4()}", headers=bearer) as r:
            assert (r.status, (await r.json())["message"]) == (401, "Token has expired")


async def test_only_an_admin_token_may_set_an_agent_offline() -> None:
    """POST /v1/agents/data/<name> is refused to anonymous callers and works for an admin."""
    lab = lab_of(Behaviour.PASS, testflinger_role="admin")
    offline = {"state": "offline", "comment": "Set to offline by rackwatch."}
    async with running(lab) as (urls, session):
        url = f"{urls.testflinger}v1/agents/data/m0"
        async with session.post(url, json=offline) as response:
            assert response.status == 403
        lab.testflinger_login = ("rackwatch", "s3cret-client-key")
        login = f"{urls.testflinger}v1/oauth2/token"
        async with session.post(login, headers=CREDENTIALS) as response:
            bearer = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
        async with session.post(url, json=offline, headers=bearer) as response:
            assert response.status == 200
        async with session.get(url, headers=bearer) as response:
            agent = await response.json()
    assert (agent["state"], agent["comment"]) == ("offline", "Set to offline by rackwatch.")


# -- faults ------------------------------------------------------------------------------------


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


# -- building labs and serving them -------------------------------------------------------------


def test_uniform_lab_names_racks_and_machines_for_benchmarks() -> None:
    """uniform_lab builds racks rack-00.. of machines rack-00-m000.., every agent alike."""
    lab = uniform_lab(3, 4, Behaviour.FAIL)
    assert lab.rack_names == ["rack-00", "rack-01", "rack-02"]
    assert list(lab.agents)[:2] == ["rack-00-m000", "rack-00-m001"]
    assert {agent.behaviour for agent in lab.agents.values()} == {Behaviour.FAIL}


def test_a_lab_refuses_duplicate_hostnames() -> None:
    """Two machines with one hostname would make the lab ambiguous."""
    with pytest.raises(ValueError, match="appears twice"):
        Lab([SimRack("a", [SimMachine("m")]), SimRack("b", [SimMachine("m")])])


def test_the_command_line_serves_a_lab_until_sigterm() -> None:
    """python -m rackwatch.simlab prints its URLs as one JSON line and exits 0 on SIGTERM."""
    command = [sys.executable, "-m", "rackwatch.simlab", "--racks", "2", "--per-rack", "3"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        line = json.loads(process.stdout.readline())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert line["maas_url"] == f"http://127.0.0.1:{line['port']}/MAAS/"
    assert line["racks"] == ["rack-00", "rack-01"]
