"""The MAAS and Testflinger clients against the simulated lab, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from rackwatch.clients import RetryPolicy, connect, make_session
from rackwatch.clients._http import Http, Pool
from rackwatch.config import Settings
from rackwatch.errors import (
    UnknownRackError,
    UpstreamAuthError,
    UpstreamOutcomeUnknown,
    UpstreamResponseError,
    UpstreamUnavailable,
    UsageError,
)
from rackwatch.model import JobDefinition, Machine
from rackwatch.simlab import (
    DEFAULT_MAAS_API_KEY,
    Behaviour,
    Fault,
    FaultKind,
    Lab,
    LabUrls,
    SimMachine,
    SimRack,
)
from tests.harness import FAST_RETRY, until

MACHINES = "GET /MAAS/api/2.0/machines/"
LOGIN = ("rackwatch", "s3cret-value-123456")
WRONG_SECRET = "not-the-s3cret-987654"
MAAS_SECRET = DEFAULT_MAAS_API_KEY.rsplit(":", 1)[1]
# The lab's key with the right consumer and token keys but another token secret.
WRONG_MAAS_SECRET = "WrongSecretOfTheRightShape0123456"
WRONG_MAAS_KEY = DEFAULT_MAAS_API_KEY.rsplit(":", 1)[0] + ":" + WRONG_MAAS_SECRET


class ObservedLab(Lab):
    """A lab that also records what only the server sees: headers and requests in flight.

    `answer_then_fail` makes the next MAAS requests be fully handled (so their OAuth nonce is
    spent) and then answered 503, as when a proxy loses the answer on its way back.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.authorizations: list[tuple[str, str]] = []  # (path, Authorization header)
        self.handled: list[int] = []  # statuses of MAAS answers that answer_then_fail dropped
        self.answer_then_fail = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    def app(self) -> web.Application:
        app = super().app()

        @web.middleware
        async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.authorizations.append((request.path, request.headers.get("Authorization", "")))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                response = await handler(request)
            finally:
                self.in_flight -= 1
            if request.path.startswith("/MAAS") and self.answer_then_fail > 0:
                self.answer_then_fail -= 1
                self.handled.append(response.status)
                return web.Response(status=503, text="503 Service Unavailable\n")
            return response

        # Outermost, so that a SLOW fault's delay counts as time in flight.
        app.middlewares.insert(0, observe)
        return app

    def nonces(self) -> list[str]:
        """The oauth_nonce of every MAAS request, in order."""
        found = []
        for path, header in self.authorizations:
            if path.startswith("/MAAS"):
                found += [p.split("=", 1)[1] for p in header.split(", ") if "oauth_nonce=" in p]
        return found


def make_lab(**options: Any) -> ObservedLab:
    """Two racks: rack-a with a deployed, a broken and an agentless ready machine; rack-b."""
    rack_a = SimRack(
        "rack-a",
        [
            SimMachine("a-m1"),
            SimMachine("a-m2", maas_status="Broken"),
            SimMachine("a-m3", behaviour=None, maas_status="Ready"),
        ],
    )
    rack_b = SimRack("rack-b", [SimMachine("b-m1"), SimMachine("b-m2")])
    return ObservedLab([rack_a, rack_b], **options)


def settings_for(urls: LabUrls, **sections: dict[str, Any]) -> Settings:
    """Settings pointing at a served lab, with the lab's MAAS key unless a section says otherwise."""
    data: dict[str, Any] = {
        "maas": {"url": urls.maas, "api_key": DEFAULT_MAAS_API_KEY},
        "testflinger": {"url": urls.testflinger},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return Settings.from_mapping(data)


def maas_requests(lab: Lab) -> int:
    return sum(count for key, count in lab.requests.items() if " /MAAS/" in key)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_nothing_says(texts: list[str], *secrets: str) -> None:
    for secret in secrets:
        for text in texts:
            assert secret not in text


# -- MAAS ----------------------------------------------------------------------------------------


async def test_machines_of_a_rack_are_exactly_those_with_its_tag() -> None:
    """machines(rack) answers the rack's machines, with their MAAS status and power state."""
    lab = make_lab(extra_tags=["empty-rack"])
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        machines = await clients.maas.machines("rack-a")
        empty = await clients.maas.machines("empty-rack")
    ids = lab.system_ids
    assert sorted(machines, key=lambda m: m.hostname) == [
        Machine("a-m1", ids["a-m1"], "Deployed", "on", ("rack-a",)),
        Machine("a-m2", ids["a-m2"], "Broken", "unknown", ("rack-a",)),
        Machine("a-m3", ids["a-m3"], "Ready", "off", ("rack-a",)),
    ]
    assert empty == []


async def test_every_maas_attempt_is_signed_anew() -> None:
    """A retry after an answer that was lost carries a fresh nonce, which MAAS accepts."""
    lab = make_lab()
    lab.answer_then_fail = 1
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        machines = await clients.maas.machines("rack-b")
    assert {m.hostname for m in machines} == {"b-m1", "b-m2"}
    assert lab.handled == [200]  # the first attempt was accepted, so its nonce is spent
    nonces = lab.nonces()
    assert len(nonces) == 2
    assert nonces[0] != nonces[1]


@pytest.mark.parametrize("rack", ["", "   ", "rack a", "rack/a", "rack-a,rack-b"])
async def test_a_rack_name_that_cannot_be_a_tag_is_refused_before_any_request(rack: str) -> None:
    """A blank name (MAAS would list every machine) or one with odd characters is a UsageError."""
    lab = make_lab()
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UsageError):
            await clients.maas.machines(rack)
    assert maas_requests(lab) == 0


async def test_an_unknown_tag_is_an_unknown_rack() -> None:
    """MAAS's 400 for a tag it does not have becomes UnknownRackError naming the rack."""
    lab = make_lab()
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UnknownRackError) as caught:
            await clients.maas.machines("rack-z")
    assert caught.value.rack == "rack-z"
    assert lab.requests[MACHINES] == 1


async def test_a_wrong_maas_key_is_an_auth_error_that_quotes_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused key is not retried, and neither secret reaches the message or the logs."""
    lab = make_lab()
    caplog.set_level(logging.DEBUG)
    async with lab.serve() as urls:
        settings = settings_for(urls, maas={"api_key": WRONG_MAAS_KEY})
        with structlog.testing.capture_logs() as logs:
            async with connect(settings, FAST_RETRY) as clients:
                with pytest.raises(UpstreamAuthError) as caught:
                    await clients.maas.machines("rack-a")
    assert caught.value.status == 401
    assert lab.requests[MACHINES] == 1
    texts = [
        str(caught.value),
        "".join(traceback.format_exception(caught.value)),
        caplog.text,
        *(repr(entry) for entry in logs),
    ]
    assert_nothing_says(texts, MAAS_SECRET, WRONG_MAAS_SECRET)


async def test_retry_after_sets_the_wait_before_the_next_attempt() -> None:
    """A 503 with Retry-After: 0.3 is retried after 0.3 s, not after the policy's own backoff."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.UNAVAILABLE, "maas", retry_after=0.3))
    policy = RetryPolicy(attempts=3, wait_initial_s=0.01, wait_max_s=1.0, timeout_s=5)
    async with lab.serve() as urls, connect(settings_for(urls), policy) as clients:
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            machines = await clients.maas.machines("rack-a")
            elapsed = time.monotonic() - started
    assert len(machines) == 3
    assert lab.requests[MACHINES] == 2
    assert [e["wait_for"] for e in logs if e["event"] == "http.retry_scheduled"] == [0.3]
    assert elapsed >= 0.29


async def test_retry_after_is_capped_by_the_policy() -> None:
    """A server asking for a long wait gets at most wait_max_s."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.UNAVAILABLE, "maas", retry_after=30))
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with structlog.testing.capture_logs() as logs:
            await clients.maas.machines("rack-a")
    assert [e["wait_for"] for e in logs if e["event"] == "http.retry_scheduled"] == [0.05]


async def test_a_maas_conflict_is_retried() -> None:
    """MAAS's 409 (a database conflict) is transient: two of them, then the machines."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.CONFLICT, "maas", times=2))
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        machines = await clients.maas.machines("rack-b")
    assert len(machines) == 2
    assert lab.requests[MACHINES] == 3


@pytest.mark.usefixtures("no_retry_waits")
async def test_an_html_error_page_is_named_not_quoted() -> None:
    """500s with an HTML page, every attempt, end as UpstreamUnavailable saying "an HTML page"."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.SERVER_ERROR, "maas", times=None))
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamUnavailable) as caught:
            await clients.maas.machines("rack-a")
    assert lab.requests[MACHINES] == 3
    assert caught.value.status == 500
    assert "an HTML page" in str(caught.value)
    assert "<" not in str(caught.value)


async def test_a_malformed_answer_is_a_response_error_and_not_retried() -> None:
    """A 200 whose body is cut-off JSON is UpstreamResponseError after one request."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.MALFORMED, "maas"))
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamResponseError) as caught:
            await clients.maas.machines("rack-a")
    assert lab.requests[MACHINES] == 1
    assert "not JSON" in str(caught.value)


async def test_a_maas_slower_than_its_timeout_is_unavailable() -> None:
    """Answers later than maas.timeout are given up on, each attempt, then reported as no answer."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.SLOW, "maas", times=None, delay=1.0))
    async with lab.serve() as urls:
        settings = settings_for(urls, maas={"timeout": 0.2})
        async with connect(settings, FAST_RETRY) as clients:
            with pytest.raises(UpstreamUnavailable) as caught:
                await clients.maas.machines("rack-a")
    assert lab.requests[MACHINES] == 3
    assert caught.value.status is None
    assert "no answer within 0.2 s" in str(caught.value)


@pytest.mark.usefixtures("no_retry_waits")
async def test_a_maas_that_refuses_connections_is_unavailable() -> None:
    """Nothing listening on the port is UpstreamUnavailable, not an aiohttp exception."""
    port = free_port()
    settings = Settings.from_mapping(
        {"maas": {"url": f"http://127.0.0.1:{port}/MAAS/", "api_key": DEFAULT_MAAS_API_KEY}}
    )
    async with connect(settings, FAST_RETRY) as clients:
        with pytest.raises(UpstreamUnavailable) as caught:
            await clients.maas.machines("rack-a")
    assert caught.value.status is None
    assert "cannot connect" in str(caught.value)


# -- bounded answers -----------------------------------------------------------------------------


async def test_an_endless_answer_is_refused_once_past_the_services_limit() -> None:
    """MAAS streaming a list without end is one UpstreamResponseError line, and never retried."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.ENDLESS, "maas", times=None))
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamResponseError) as caught:
            await clients.maas.machines("rack-a")
    assert str(caught.value) == (
        "maas GET /MAAS/api/2.0/machines/ answered 200 with a body over 64 MiB, the limit for"
        " maas answers; reading stopped there"
    )
    assert lab.requests[MACHINES] == 1


async def test_a_huge_answer_is_refused_by_its_length_before_it_is_read() -> None:
    """A 400 MB agent listing that says so in its Content-Length is refused unread."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.HUGE, "testflinger", path="/v1/agents/data"))
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        started = time.monotonic()
        with pytest.raises(UpstreamResponseError) as caught:
            await clients.testflinger.agents()
    assert time.monotonic() - started < 1.0
    assert str(caught.value) == (
        "testflinger GET /v1/agents/data answered 200 with a body over 32 MiB, the limit for"
        " testflinger answers; its length is 419,430,400 bytes"
    )


@pytest.mark.parametrize(("service", "path"), [("maas", "/machines/"), ("testflinger", "/v1/")])
async def test_json_nested_too_deeply_is_a_response_error(service: str, path: str) -> None:
    """Lists nested 200,000 deep, and so past what json can decode, are one line, not a crash."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.DEEP, service, path=path))
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamResponseError) as caught:
            if service == "maas":
                await clients.maas.machines("rack-a")
            else:
                await clients.testflinger.agents()
    assert str(caught.value).endswith("answered 200 with JSON nested more than 64 levels deep")


async def test_a_rack_of_a_thousand_machines_is_well_within_the_maas_limit() -> None:
    """1,000 simulated machines (1.5 MB) are read whole."""
    lab = Lab([SimRack("big", [SimMachine(f"big-m{i:04d}") for i in range(1000)])])
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        machines = await clients.maas.machines("big")
    assert len(machines) == 1000


async def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_not() -> None:
    """The limit counts the bytes of the body: that many pass, one more is refused."""
    lab = make_lab()
    async with lab.serve() as urls, make_session() as session:
        pool = Pool(session, asyncio.Semaphore(1), FAST_RETRY)
        url = f"{urls.testflinger}v1/agents/data"
        size = len((await Http("testflinger", pool, timeout_s=5).request("GET", url)).body)
        exact = Http("testflinger", pool, timeout_s=5, body_limit=size)
        assert len((await exact.request("GET", url)).body) == size
        with pytest.raises(UpstreamResponseError, match=f"its length is {size:,} bytes"):
            await Http("testflinger", pool, timeout_s=5, body_limit=size - 1).request("GET", url)


async def test_of_an_answer_not_asked_for_only_the_head_is_read() -> None:
    """An endless answer whose status the caller did not expect is quoted from its first bytes."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.ENDLESS, "testflinger", path="/v1/agents/data"))
    async with lab.serve() as urls, make_session() as session:
        http = Http("testflinger", Pool(session, asyncio.Semaphore(1), FAST_RETRY), timeout_s=5)
        with pytest.raises(UpstreamResponseError) as caught:
            await http.request("GET", f"{urls.testflinger}v1/agents/data", expect=(204,))
    assert str(caught.value).startswith('testflinger GET /v1/agents/data answered 200: [{"name"')


async def test_a_caller_that_needs_no_body_gets_it_cut_at_the_limit() -> None:
    """The webhook's kind of request: an endless 200 is taken, its body cut at 64 KiB."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.ENDLESS, "testflinger", path="/v1/agents/data"))
    async with lab.serve() as urls, make_session() as session:
        pool = Pool(session, asyncio.Semaphore(1), FAST_RETRY)
        http = Http("webhook", pool, timeout_s=5, needs_body=False)
        reply = await http.request("GET", f"{urls.testflinger}v1/agents/data")
    assert (reply.status, len(reply.body)) == (200, 64 * 1024)


# -- Testflinger ---------------------------------------------------------------------------------


async def test_agents_and_one_agent_by_name() -> None:
    """agents() lists every agent; agent(name) reads one, or None for a name the server lacks."""
    lab = make_lab()
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        agents = await clients.testflinger.agents()
        one = await clients.testflinger.agent("a-m1")
        missing = await clients.testflinger.agent("no-such-agent")
    assert {agent.name for agent in agents} == {"a-m1", "a-m2", "b-m1", "b-m2"}
    assert one is not None
    assert one.state == "waiting"
    assert one.queues == ("a-m1", "rack-a-any")
    assert one.location == "RACK-A"
    assert one.updated_at is not None
    assert one.updated_at.tzinfo is not None
    assert missing is None


ODD_NAME = "a?b#c%2Fd\te\nf"


async def test_an_agent_name_goes_into_the_path_escaped_and_comes_back_whole() -> None:
    """A name with "?", "#", "%2F", a tab and a newline reaches its agent, which reads back."""
    lab = Lab([SimRack("rack-a", [SimMachine(ODD_NAME)])])
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        agent = await clients.testflinger.agent(ODD_NAME)
    assert agent is not None
    assert agent.name == ODD_NAME
    assert lab.requests["GET /v1/agents/data/{agent_name}"] == 1


@pytest.mark.parametrize("name", ["a/b", "tor3/m07", "", ".", ".."])
async def test_a_name_no_path_segment_can_carry_is_refused_unsent(name: str) -> None:
    """Testflinger takes a name from one decoded path segment: "a/b" names no agent it serves."""
    lab = make_lab()
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamResponseError, match="agent name Testflinger cannot serve"):
            await clients.testflinger.agent(name)
    assert lab.requests["GET /v1/agents/data/{agent_name}"] == 0


async def test_a_job_id_from_the_server_stays_one_path_segment() -> None:
    """A job id with slashes and dots reaches the job route, escaped, and nothing else."""
    lab = make_lab()
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamResponseError) as caught:
            await clients.testflinger.result("../agents/data")
    assert str(caught.value) == (
        "testflinger GET /v1/result/..%2Fagents%2Fdata answered 400: Invalid job_id specified"
    )
    assert lab.requests["GET /v1/result/{job_id}"] == 1


async def test_a_submitted_job_keeps_the_id_rackwatch_chose() -> None:
    """submit answers the job_id we sent, and the server stored our queue and id."""
    lab = make_lab()
    job_id = str(uuid.uuid4())
    job = {"job_queue": "a-m1", "job_id": job_id, "provision_data": {"distro": "noble"}}
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        answered = await clients.testflinger.submit(job)
    assert answered == job_id
    assert len(lab.submissions) == 1
    assert lab.submissions[0]["job_queue"] == "a-m1"
    assert lab.submissions[0]["job_id"] == job_id


async def test_a_result_carries_the_provision_output_when_it_is_text() -> None:
    """provision_output is read as the agent posted it; anything but text reads as none."""
    lab = make_lab(provision_seconds=0.05, pickup_seconds=0.02)
    lab.set_behaviour("a-m1", Behaviour.FAIL)
    job_id = str(uuid.uuid4())
    job = {"job_queue": "a-m1", "job_id": job_id, "provision_data": {"distro": "noble"}}
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        tf = clients.testflinger
        await tf.submit(job)
        await until(lambda: lab.job_state(job_id) == "complete")
        result = await tf.result(job_id)
        stored = lab.job(job_id)
        assert stored is not None
        stored.provision_output = cast(Any, ["not", "text"])
        garbled = await tf.result(job_id)
    assert result is not None and result.provision_status == 1
    assert result.provision_output is not None
    assert "ERROR: MAAS deployment of a-m1 failed" in result.provision_output
    assert garbled is not None and garbled.provision_output is None


async def test_the_result_of_an_unknown_job_is_none() -> None:
    """Testflinger's 204 for a job it does not have reads as None."""
    lab = make_lab()
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        assert await clients.testflinger.result(str(uuid.uuid4())) is None


async def test_a_job_is_followed_from_running_to_complete() -> None:
    """result() shows the job's phases while it runs and its statuses once it has ended."""
    lab = make_lab(provision_seconds=0.2, pickup_seconds=0.05)
    job_id = str(uuid.uuid4())
    job = {"job_queue": "a-m1", "job_id": job_id, "provision_data": {"distro": "noble"}}
    states = []
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        tf = clients.testflinger
        await tf.submit(job)
        async with asyncio.timeout(5):
            while True:
                result = await tf.result(job_id)
                assert result is not None
                states.append(result.state)
                if result.has_ended:
                    break
                await asyncio.sleep(0.02)
        cancelled = await tf.cancel(job_id)
    assert "provision" in states
    assert result.state == "complete"
    assert result.provision_status == 0
    assert result.setup_status == 0
    assert cancelled is False  # it had already ended


async def test_cancel_is_true_only_for_a_job_that_had_not_ended() -> None:
    """Cancelling a waiting job answers True; a cancelled or unknown job answers False."""
    lab = make_lab()
    job_id = str(uuid.uuid4())
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        tf = clients.testflinger
        await tf.submit({"job_queue": "no-agent-serves-this", "job_id": job_id})
        first = await tf.cancel(job_id)
        again = await tf.cancel(job_id)
        unknown = await tf.cancel(str(uuid.uuid4()))
    assert (first, again, unknown) == (True, False, False)
    assert lab.cancelled == [job_id]
    assert lab.job_state(job_id) == "cancelled"


@pytest.mark.parametrize(
    ("job", "said"),
    [
        ({"job_queue": "a-m1", "bogus": 1}, "bogus: Unknown field."),
        ({"job_queue": ""}, "job_queue: Shorter than minimum length 1."),
        ({"job_queue": "a-m1", "job_id": "not-a-uuid"}, "Invalid job_id specified"),
    ],
)
async def test_testflinger_error_bodies_become_readable_messages(
    job: dict[str, Any], said: str
) -> None:
    """Validation errors and explicit aborts arrive as the server's words, not raw JSON."""
    lab = make_lab()
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamResponseError) as caught:
            await clients.testflinger.submit(job)
    assert said in str(caught.value)
    assert "{" not in str(caught.value)
    assert lab.requests["POST /v1/job"] == 1  # not retried


async def test_a_plain_text_error_becomes_a_readable_message() -> None:
    """The plain-text shape (cancelling a job id that is not a UUID) is quoted as a line."""
    lab = make_lab()
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamResponseError) as caught:
            await clients.testflinger.cancel("not-a-uuid")
    assert caught.value.status == 400
    assert str(caught.value).endswith("answered 400: Invalid job id")


async def test_a_fault_on_one_path_is_retried() -> None:
    """Two 503s on the result path are retried; the third attempt reads the result."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.UNAVAILABLE, "testflinger", path="/v1/result/", times=2))
    job_id = str(uuid.uuid4())
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        await clients.testflinger.submit({"job_queue": "no-agent-serves-this", "job_id": job_id})
        result = await clients.testflinger.result(job_id)
    assert result is not None
    assert result.state == "waiting"
    assert lab.requests["GET /v1/result/{job_id}"] == 3
    assert lab.requests["POST /v1/job"] == 1


async def test_a_post_stored_after_the_client_gave_up_is_an_unknown_outcome() -> None:
    """A POST the server stores after our timeout is sent once, raises, and the job turns up."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.LATE, "testflinger", path="/v1/job", method="POST", delay=1.0))
    job_id = str(uuid.uuid4())
    async with lab.serve() as urls:
        settings = settings_for(urls, testflinger={"timeout": 0.3})
        async with connect(settings, FAST_RETRY) as clients:
            tf = clients.testflinger
            with pytest.raises(UpstreamOutcomeUnknown) as caught:
                await tf.submit({"job_queue": "no-agent-serves-this", "job_id": job_id})
            assert await tf.job(job_id) is None  # not yet
            async with asyncio.timeout(3):
                while (found := await tf.job(job_id)) is None:  # noqa: ASYNC110 - polling
                    await asyncio.sleep(0.05)
    assert str(caught.value) == (
        "testflinger POST /v1/job: no answer within 0.3 s; it may have been carried out"
    )
    assert caught.value.status is None
    assert found == JobDefinition(job_id, "no-agent-serves-this")
    assert lab.requests["POST /v1/job"] == 1
    assert len(lab.jobs(job_id)) == 1


async def test_a_post_answered_503_is_sent_again_and_stored_once() -> None:
    """A 503 leaves the server untouched, so the POST is retried, and one job is stored."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.UNAVAILABLE, "testflinger", path="/v1/job", method="POST"))
    job_id = str(uuid.uuid4())
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        answered = await clients.testflinger.submit({"job_queue": "a-m1", "job_id": job_id})
    assert answered == job_id
    assert lab.requests["POST /v1/job"] == 2
    assert len(lab.jobs(job_id)) == 1


async def test_a_post_answered_500_is_not_sent_again() -> None:
    """After a 500 the job may be stored: one POST, and UpstreamOutcomeUnknown with the status."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.SERVER_ERROR, "testflinger", path="/v1/job", method="POST"))
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamOutcomeUnknown) as caught:
            await clients.testflinger.submit({"job_queue": "a-m1", "job_id": str(uuid.uuid4())})
    assert caught.value.status == 500
    assert str(caught.value).startswith("testflinger POST /v1/job answered 500: an HTML page")
    assert str(caught.value).endswith("; it may have been carried out")
    assert lab.requests["POST /v1/job"] == 1


@contextlib.asynccontextmanager
async def hanging_up() -> AsyncIterator[tuple[Settings, list[bytes]]]:
    """A server that reads each request's head and closes the connection without an answer."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    settings = Settings.from_mapping(
        {
            "maas": {"url": f"{base}MAAS/", "api_key": DEFAULT_MAAS_API_KEY},
            "testflinger": {"url": base},
        }
    )
    async with server:
        yield settings, heads


@pytest.mark.usefixtures("no_retry_waits")
async def test_a_connection_closed_without_an_answer_ends_a_post_but_not_a_read() -> None:
    """The server may have acted on a dropped POST, so it is sent once; a GET is retried."""
    async with hanging_up() as (settings, heads), connect(settings, FAST_RETRY) as clients:
        with pytest.raises(UpstreamOutcomeUnknown) as posted:
            await clients.testflinger.submit({"job_queue": "a-m1", "job_id": str(uuid.uuid4())})
        posts = len(heads)
        with pytest.raises(UpstreamUnavailable) as read:
            await clients.testflinger.agents()
    assert posts == 1
    assert heads[0].startswith(b"POST /v1/job ")
    assert "it may have been carried out" in str(posted.value)
    assert type(read.value) is UpstreamUnavailable
    # FAST_RETRY makes three attempts; aiohttp may resend an idempotent request by itself too.
    assert len(heads) - posts >= 3
    assert all(head.startswith(b"GET /v1/agents/data ") for head in heads[posts:])


@pytest.mark.usefixtures("no_retry_waits")
async def test_a_post_that_cannot_connect_is_retried_and_unavailable() -> None:
    """A refused connection carried nothing, so even a POST is retried; the outcome is known."""
    port = free_port()
    settings = Settings.from_mapping(
        {
            "maas": {"url": f"http://127.0.0.1:{port}/MAAS/", "api_key": DEFAULT_MAAS_API_KEY},
            "testflinger": {"url": f"http://127.0.0.1:{port}/"},
        }
    )
    async with connect(settings, FAST_RETRY) as clients:
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(UpstreamUnavailable) as caught,
        ):
            await clients.testflinger.submit({"job_queue": "a-m1", "job_id": str(uuid.uuid4())})
    assert type(caught.value) is UpstreamUnavailable
    assert "cannot connect" in str(caught.value)
    assert len([e for e in logs if e["event"] == "http.retry_scheduled"]) == 2


async def test_active_jobs_and_job_definitions_round_trip() -> None:
    """active_jobs lists the tag's unended jobs; job() reads a definition, or None."""
    lab = make_lab(provision_seconds=0.1, pickup_seconds=0.02, slow_factor=300.0)
    lab.set_behaviour("b-m1", Behaviour.SLOW)
    tag = "rackwatch"
    ids = {name: str(uuid.uuid4()) for name in ("done", "running", "waiting", "cancelled", "other")}
    jobs: dict[str, dict[str, Any]] = {
        "done": {
            "job_queue": "a-m1",
            "tags": [tag, "rack-a"],
            "provision_data": {"distro": "noble"},
        },
        "running": {"job_queue": "b-m1", "tags": [tag], "provision_data": {"distro": "noble"}},
        "waiting": {"job_queue": "nobody", "tags": [tag]},
        "cancelled": {"job_queue": "nobody", "tags": [tag]},
        "other": {"job_queue": "nobody", "tags": ["someone-else"]},
    }
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        tf = clients.testflinger
        for name, job in jobs.items():
            await tf.submit({**job, "job_id": ids[name]})
        await tf.cancel(ids["cancelled"])
        await until(
            lambda: lab.job_state(ids["done"]) == "complete"
            and lab.job_state(ids["running"]) == "provision"
        )
        active = await tf.active_jobs(tag)
        nobody = await tf.active_jobs("no-job-has-this-tag")
        done = await tf.job(ids["done"])
        waiting = await tf.job(ids["waiting"])
        unknown = await tf.job(str(uuid.uuid4()))
    assert [(job.job_id, job.state) for job in active] == [
        (ids["running"], "provision"),
        (ids["waiting"], "waiting"),
    ]
    assert nobody == []
    assert done == JobDefinition(ids["done"], "a-m1", (tag, "rack-a"))
    assert waiting == JobDefinition(ids["waiting"], "nobody", (tag,))
    assert unknown is None
    assert lab.requests["GET /v1/job/search"] == 2


@pytest.mark.parametrize("call", ["active_jobs", "job"])
async def test_an_unreadable_search_or_definition_is_a_response_error(call: str) -> None:
    """A cut-off body from the search or the definition is UpstreamResponseError, not retried."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.MALFORMED, "testflinger", path="/v1/job/"))
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        tf = clients.testflinger
        with pytest.raises(UpstreamResponseError, match="not JSON"):
            if call == "active_jobs":
                await tf.active_jobs("rackwatch")
            else:
                await tf.job(str(uuid.uuid4()))
    assert sum(n for key, n in lab.requests.items() if key.startswith("GET /v1/job/")) == 1


async def test_requests_in_flight_are_bounded_by_check_concurrency() -> None:
    """With check.concurrency = 2, six slow agent reads are never more than two at the server."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.SLOW, "testflinger", path="/v1/agents/data/", times=None, delay=0.2))
    async with lab.serve() as urls:
        settings = settings_for(urls, check={"concurrency": 2})
        async with connect(settings, FAST_RETRY) as clients:
            names = ["a-m1", "a-m2", "b-m1", "b-m2", "a-m1", "b-m1"]
            agents = await asyncio.gather(*(clients.testflinger.agent(n) for n in names))
    assert [agent.name if agent else None for agent in agents] == names
    assert lab.requests["GET /v1/agents/data/{agent_name}"] == 6
    assert lab.peak_in_flight == 2


# -- Testflinger login ---------------------------------------------------------------------------


def login_settings(urls: LabUrls, secret: str = LOGIN[1]) -> Settings:
    return settings_for(urls, testflinger={"client_id": LOGIN[0], "secret": secret})


async def test_one_login_serves_many_calls_even_concurrent_ones() -> None:
    """Against a locked-down server, calls carry a Bearer token from a single login."""
    lab = make_lab(testflinger_login=LOGIN)
    async with lab.serve() as urls, connect(login_settings(urls), FAST_RETRY) as clients:
        tf = clients.testflinger
        names = ["a-m1", "a-m2", "b-m1", "b-m2"]
        listed, found = await asyncio.gather(
            tf.agents(), asyncio.gather(*(tf.agent(name) for name in names))
        )
        await tf.result(str(uuid.uuid4()))
        await tf.agents()
    assert len(listed) == 4
    assert [agent.name if agent else None for agent in found] == names
    assert lab.logins == 1
    assert lab.requests["POST /v1/oauth2/token"] == 1
    api_calls = [header for path, header in lab.authorizations if path != "/v1/oauth2/token"]
    assert len(api_calls) == 7
    assert all(header.startswith("Bearer ") for header in api_calls)


async def test_an_expired_token_is_renewed_once_and_the_call_replayed() -> None:
    """After the server expires the token, the call logs in again once and retries at once."""
    lab = make_lab(testflinger_login=LOGIN)
    async with lab.serve() as urls, connect(login_settings(urls), FAST_RETRY) as clients:
        await clients.testflinger.agents()
        lab.expire_tokens()
        with structlog.testing.capture_logs() as logs:
            agents = await clients.testflinger.agents()
    assert len(agents) == 4
    assert lab.logins == 2
    assert lab.requests["GET /v1/agents/data"] == 3  # one, then one refused and its replay
    assert [e["wait_for"] for e in logs if e["event"] == "http.retry_scheduled"] == [0.0]
    listings = [header for path, header in lab.authorizations if path == "/v1/agents/data"]
    assert listings[0] == listings[1] != listings[2]


async def test_a_retry_after_a_500_carries_a_fresh_token_once_the_old_one_expired() -> None:
    """A 500, then a 401 for the expired token: a fresh token, and the third attempt reads."""
    lab = make_lab(testflinger_login=LOGIN)
    job_id = str(uuid.uuid4())
    async with lab.serve() as urls, connect(login_settings(urls), FAST_RETRY) as clients:
        tf = clients.testflinger
        await tf.submit({"job_queue": "no-agent-serves-this", "job_id": job_id})
        lab.expire_tokens()
        lab.inject(Fault(FaultKind.SERVER_ERROR, "testflinger", path="/v1/result/"))
        with structlog.testing.capture_logs() as logs:
            result = await tf.result(job_id)
    assert result is not None
    assert result.state == "waiting"
    assert lab.logins == 2
    assert lab.requests["GET /v1/result/{job_id}"] == 3
    reads = [header for path, header in lab.authorizations if path.startswith("/v1/result/")]
    newest = list(lab.tokens)[-1]
    assert reads == [reads[0], reads[0], f"Bearer {newest}"]
    assert reads[0] != reads[2]
    waits = [e["wait_for"] for e in logs if e["event"] == "http.retry_scheduled"]
    assert len(waits) == 2
    assert waits[0] > 0.0  # backoff after the 500
    assert waits[1] == 0.0  # at once after the renewal


async def test_every_attempt_carries_the_token_that_is_current_when_it_is_sent() -> None:
    """A retry that starts after our token's renewal time logs in first, with no 401 at all."""
    # Testflinger says 2 s; we renew 1 s after login. The 503 asks for 1.2 s before the retry.
    lab = make_lab(testflinger_login=LOGIN, token_lifetime=2.0)
    policy = RetryPolicy(attempts=3, timeout_s=5, wait_initial_s=0.01, wait_max_s=2.0)
    job_id = str(uuid.uuid4())
    async with lab.serve() as urls, connect(login_settings(urls), policy) as clients:
        tf = clients.testflinger
        await tf.submit({"job_queue": "no-agent-serves-this", "job_id": job_id})
        lab.inject(Fault(FaultKind.UNAVAILABLE, "testflinger", path="/v1/result/", retry_after=1.2))
        result = await tf.result(job_id)
    assert result is not None
    assert lab.logins == 2
    assert lab.requests["GET /v1/result/{job_id}"] == 2
    reads = [header for path, header in lab.authorizations if path.startswith("/v1/result/")]
    assert reads[0] != reads[1]
    assert reads[1] == f"Bearer {list(lab.tokens)[-1]}"


async def test_result_reads_ride_out_server_errors_across_token_expiry() -> None:
    """With 2 s tokens and 40 % of reads answered 500, every read in 5 s still succeeds."""
    lab = make_lab(testflinger_login=LOGIN, token_lifetime=2.0)
    lab.inject(
        Fault(FaultKind.SERVER_ERROR, "testflinger", path="/v1/result/", times=None, ratio=0.4)
    )
    # Waits of 0.3 s to 1 s, so that chains of attempts span a token's renewal or expiry.
    policy = RetryPolicy(attempts=6, timeout_s=10, wait_initial_s=0.3, wait_max_s=1.0)
    job_id = str(uuid.uuid4())
    async with lab.serve() as urls, connect(login_settings(urls), policy) as clients:
        tf = clients.testflinger
        await tf.submit({"job_queue": "no-agent-serves-this", "job_id": job_id})
        results = []
        started = time.monotonic()
        while time.monotonic() - started < 5.0:
            results.append(await tf.result(job_id))
            await asyncio.sleep(0.1)
    assert len(results) >= 5
    assert all(result is not None and result.state == "waiting" for result in results)
    assert lab.requests["GET /v1/result/{job_id}"] > len(results)  # some were retried
    assert lab.logins >= 2
    api_calls = [header for path, header in lab.authorizations if path != "/v1/oauth2/token"]
    assert all(header.startswith("Bearer ") for header in api_calls)


async def test_a_fresh_token_that_is_refused_too_ends_the_call() -> None:
    """A 401 right after a renewal is an auth error: the server refuses even fresh tokens."""
    lab = make_lab(testflinger_login=LOGIN, token_lifetime=0.0)  # every token has expired
    async with lab.serve() as urls, connect(login_settings(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamAuthError) as caught:
            await clients.testflinger.agents()
    assert caught.value.status == 401
    assert "Token has expired" in str(caught.value)
    assert lab.logins == 2
    assert lab.requests["GET /v1/agents/data"] == 2


async def test_a_403_is_not_retried_even_with_a_login() -> None:
    """A token whose role may not list agents gets 403 once: a new token would be no better."""
    lab = make_lab(testflinger_login=LOGIN, testflinger_role="agent")
    async with lab.serve() as urls, connect(login_settings(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamAuthError) as caught:
            await clients.testflinger.agents()
    assert caught.value.status == 403
    assert lab.logins == 1
    assert lab.requests["GET /v1/agents/data"] == 1


async def test_a_wrong_testflinger_secret_is_an_auth_error_that_quotes_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused login is UpstreamAuthError, and no secret reaches the message or the logs."""
    lab = make_lab(testflinger_login=LOGIN)
    # A 503 first, so that the logs hold a retry event whose text is checked too.
    lab.inject(Fault(FaultKind.UNAVAILABLE, "testflinger", path="/v1/oauth2/token"))
    caplog.set_level(logging.DEBUG)
    basic = base64.b64encode(f"{LOGIN[0]}:{WRONG_SECRET}".encode()).decode()
    async with lab.serve() as urls:
        with structlog.testing.capture_logs() as logs:
            async with connect(login_settings(urls, WRONG_SECRET), FAST_RETRY) as clients:
                with pytest.raises(UpstreamAuthError) as caught:
                    await clients.testflinger.agents()
    assert caught.value.status == 401
    assert lab.logins == 0
    assert lab.requests["GET /v1/agents/data"] == 0
    assert any(entry["event"] == "http.retry_scheduled" for entry in logs)
    texts = [
        str(caught.value),
        "".join(traceback.format_exception(caught.value)),
        caplog.text,
        *(repr(entry) for entry in logs),
    ]
    assert_nothing_says(texts, LOGIN[1], WRONG_SECRET, basic)


async def test_a_refused_login_is_not_tried_again_in_the_same_call() -> None:
    """A 401 from the login itself ends the call: logging in again cannot help."""
    lab = make_lab(testflinger_login=LOGIN)
    async with (
        lab.serve() as urls,
        connect(login_settings(urls, WRONG_SECRET), FAST_RETRY) as clients,
    ):
        with pytest.raises(UpstreamAuthError):
            await clients.testflinger.agents()
    assert lab.requests["POST /v1/oauth2/token"] == 1


async def test_no_login_against_a_locked_down_server_is_an_auth_error() -> None:
    """Without a client id, a server that requires login refuses us with UpstreamAuthError."""
    lab = make_lab(testflinger_login=LOGIN)
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamAuthError) as caught:
            await clients.testflinger.agents()
    assert caught.value.status == 401
    assert "Authentication is required" in str(caught.value)
    assert lab.requests["GET /v1/agents/data"] == 1
    assert lab.requests["POST /v1/oauth2/token"] == 0


# -- userinfo, redaction and the log lines of retries ----------------------------------------------


def with_userinfo(url: str, userinfo: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{userinfo}@{rest}"


async def test_the_userinfo_of_a_url_is_sent_as_basic_unless_the_request_signs_itself() -> None:
    """A URL's user:password@ is HTTP Basic for a bare request; MAAS's OAuth and Testflinger's
    Bearer win over it. Neither URL is sent with it, and no message names it."""
    lab = make_lab(testflinger_login=LOGIN)
    async with lab.serve() as urls:
        settings = settings_for(
            urls,
            maas={"url": with_userinfo(urls.maas, "proxy:maas-pw")},
            testflinger={
                "url": with_userinfo(urls.testflinger, "proxy:tf-pw"),
                "client_id": LOGIN[0],
                "secret": LOGIN[1],
            },
        )
        async with connect(settings, FAST_RETRY) as clients:
            assert len(await clients.maas.machines("rack-a")) == 3
            assert len(await clients.testflinger.agents()) == 4
        async with make_session() as session:
            http = Http("testflinger", Pool(session, asyncio.Semaphore(1)), timeout_s=5)
            with pytest.raises(UpstreamAuthError) as refused:
                await http.request("GET", with_userinfo(urls.testflinger, "u:p") + "v1/agents/data")
    sent = dict(lab.authorizations)
    assert sent["/MAAS/api/2.0/machines/"].startswith("OAuth ")
    basic = base64.b64encode(f"{LOGIN[0]}:{LOGIN[1]}".encode()).decode()
    assert sent["/v1/oauth2/token"] == f"Basic {basic}"
    assert next(h for p, h in lab.authorizations if p == "/v1/agents/data").startswith("Bearer ")
    # The bare request: Basic from its URL, which the lab counts as no role at all.
    assert lab.authorizations[-1] == ("/v1/agents/data", "Basic dTpw")
    assert str(refused.value).startswith("testflinger GET /v1/agents/data refused the credentials")


async def test_an_echoed_authorization_header_is_redacted_from_the_error() -> None:
    """An error page showing the request's headers back names no credential of any kind."""
    lab = make_lab(testflinger_login=LOGIN)
    lab.inject(Fault(FaultKind.ECHO_HEADERS, "testflinger", path="/v1/agents/data", status=400))
    lab.inject(Fault(FaultKind.ECHO_HEADERS, "maas", status=400))
    async with lab.serve() as urls, connect(login_settings(urls), FAST_RETRY) as clients:
        with pytest.raises(UpstreamResponseError) as listing:
            await clients.testflinger.agents()
        with pytest.raises(UpstreamResponseError) as machines:
            await clients.maas.machines("rack-a")
    [token] = lab.tokens
    assert "Authorization: *** Host:" in str(listing.value)  # the page sorts the headers
    assert "Authorization: *" in str(machines.value)  # cut short there
    assert_nothing_says(
        [str(listing.value), str(machines.value)],
        token,
        LOGIN[1],
        MAAS_SECRET,
        *DEFAULT_MAAS_API_KEY.split(":"),
    )


async def test_the_retries_of_one_request_are_named_and_joined_in_one_line() -> None:
    """Each retry is a debug line naming the request; one line says how it ended, and how long
    it took. stamina's own line, which names no request, is not logged."""
    lab = make_lab()
    lab.inject(Fault(FaultKind.UNAVAILABLE, "maas", times=2, retry_after=0.01))
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with structlog.testing.capture_logs() as logs:
            await clients.maas.machines("rack-a")
            lab.inject(Fault(FaultKind.UNAVAILABLE, "maas", times=None, retry_after=0.01))
            with pytest.raises(UpstreamUnavailable):
                await clients.maas.machines("rack-a")
    request = "maas GET /MAAS/api/2.0/machines/"
    retries = [e for e in logs if e["event"] == "http.retry_scheduled"]
    assert [(e["log_level"], e["request"], e["retry_num"]) for e in retries] == [
        ("debug", request, 1),
        ("debug", request, 2),
        ("debug", request, 1),
        ("debug", request, 2),
    ]
    assert retries[0]["caused_by"].startswith(f"{request} answered 503: ")
    answered, gave_up = [e for e in logs if e["event"] == "http.retried"]
    assert answered["log_level"] == "info"
    assert (answered["request"], answered["attempts"], answered["answered"]) == (request, 3, 200)
    assert gave_up["log_level"] == "warning"
    assert (gave_up["request"], gave_up["attempts"]) == (request, 3)
    assert gave_up["gave_up"].startswith(f"{request} answered 503: ")
    assert 0 <= answered["seconds"] < 5
    assert [e for e in logs if e["event"].startswith("stamina")] == []
    assert "<context block>" not in repr(logs)


async def test_a_request_answered_at_once_logs_nothing_of_retries() -> None:
    """No retry, no line."""
    lab = make_lab()
    async with lab.serve() as urls, connect(settings_for(urls), FAST_RETRY) as clients:
        with structlog.testing.capture_logs() as logs:
            await clients.maas.machines("rack-a")
    assert [e["event"] for e in logs if e["event"].startswith("http.")] == []
