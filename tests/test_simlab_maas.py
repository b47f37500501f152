"""The simulated MAAS region behaves like MAAS, quirks included, over real HTTP."""

from __future__ import annotations

import re
import time

import pytest
from oauthlib import oauth1

from rackwatch.simlab import DEFAULT_MAAS_API_KEY, Lab, SimMachine, SimRack, demo_lab, uniform_lab
from tests.simlab_client import maas_auth, machines, running

SECRET = DEFAULT_MAAS_API_KEY.split(":")[2]


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


async def test_a_machine_with_another_racks_tag_is_listed_in_both_racks() -> None:
    """A machine's own tags add to its rack's: MAAS lists it under each, with one system_id."""
    lab = Lab(
        [
            SimRack("r1", [SimMachine("r1-m1"), SimMachine("both", tags=("r2", "spare"))]),
            SimRack("r2", [SimMachine("r2-m1")]),
        ]
    )
    async with running(lab) as (urls, session):
        listings = {rack: await machines(session, urls, f"tags={rack}") for rack in ("r1", "r2")}
        _, spare = await machines(session, urls, "tags=spare")
    r1, r2 = (body for _, body in listings.values())
    assert [m["hostname"] for m in r1] == ["r1-m1", "both"]
    assert [m["hostname"] for m in r2] == ["both", "r2-m1"]
    assert r1[1] == r2[0]
    assert r1[1]["tag_names"] == ["r1", "r2", "spare"]
    assert [m["hostname"] for m in spare] == ["both"]
    assert list(lab.agents) == ["r1-m1", "both", "r2-m1"]  # one agent for the machine


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
