"""The simulated Testflinger server answers like the real one, quirks included, over real HTTP."""

from __future__ import annotations

import calendar
import json
import time
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from rackwatch.simlab import Behaviour
from tests.simlab_client import ISO, cancel, lab_of, result_when, running, search, submit

LOGIN = ("rackwatch", "s3cret-client-key")
CREDENTIALS = {"Authorization": aiohttp.encode_basic_auth(*LOGIN)}
STATE_CHOICES = (
    "Must be one of: setup, provision, firmware_update, test, allocate, allocated, reserve, "
    "cleanup, cancelled, completed, active."
)


# -- Testflinger: job submission ---------------------------------------------------------------


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


# -- Testflinger: cancel requests --------------------------------------------------------------


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


# -- Testflinger: agent names in the path ------------------------------------------------------

ODD_NAME = "a?b#c%2Fd\te\nf"


async def test_an_agent_name_is_its_path_segment_decoded() -> None:
    """An agent posting under an escaped "?", "#", "%2F", tab or newline is stored and served."""
    lab = lab_of(Behaviour.PASS, testflinger_login=LOGIN, testflinger_role="agent")
    async with running(lab) as (urls, session):
        async with session.post(f"{urls.testflinger}v1/oauth2/token", headers=CREDENTIALS) as r:
            bearer = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
        url = URL(f"{urls.testflinger}v1/agents/data/{quote(ODD_NAME, safe='')}", encoded=True)
        async with session.post(url, json={"state": "waiting"}, headers=bearer) as response:
            assert response.status == 200
        async with session.get(url, headers=bearer) as response:
            assert response.status == 200
            record = await response.json()
    assert record["name"] == ODD_NAME
    assert ODD_NAME in lab.agents


async def test_an_escaped_slash_in_an_agent_name_matches_no_route() -> None:
    """As on the real server, which routes on the decoded path, "a%2Fb" is "Not found" as text."""
    lab = lab_of(Behaviour.PASS)
    lab.add_agent("a/b", queues=["a/b"])  # as if written around the API: it is listed
    async with running(lab) as (urls, session):
        async with session.get(f"{urls.testflinger}v1/agents/data") as response:
            assert "a/b" in [agent["name"] for agent in await response.json()]
        url = URL(f"{urls.testflinger}v1/agents/data/a%2Fb", encoded=True)
        async with session.get(url) as response:
            assert (response.status, response.content_type) == (404, "text/html")
            assert (await response.text()).startswith("Not found: ")
        async with session.post(url, json={"state": "waiting"}) as response:
            assert response.status == 404
