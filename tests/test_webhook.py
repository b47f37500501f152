"""The webhook client against a webhook of the test's own on 127.0.0.1: what counts as taken,
retries, redirects, and a URL that no message names."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from structlog.testing import capture_logs

from rackwatch.clients import RetryPolicy, WebhookClient, make_session
from rackwatch.config import AlertsSettings
from rackwatch.errors import UpstreamAuthError, UpstreamResponseError, UpstreamUnavailable
from tests.harness import FAST_RETRY

TOKEN = "T0001/B0002/xoxb-a-long-webhook-token-0123456789"
QUERY = "key=q-secret-0123456789"


@dataclass
class Hook:
    """A webhook that answers from a script, one (status, headers) per request, then 200 "ok"."""

    url: str = ""
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    posts: list[object] = field(default_factory=list)  # every JSON body it was sent
    elsewhere: int = 0  # requests that followed a redirect

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append(await request.json())
        status, headers = self.script.pop(0) if self.script else (200, {})
        # A careless server echoes the URL it was called on: it must not reach us unredacted.
        return web.Response(status=status, headers=headers, text=f"echo: {request.url}")

    async def redirected(self, request: web.Request) -> web.Response:
        self.elsewhere += 1
        return web.Response(text="ok")


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    served = Hook()
    app = web.Application()
    app.router.add_post("/hooks/{token:.+}", served.handle)
    app.router.add_route("*", "/elsewhere", served.redirected)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    served.url = f"{server.make_url(f'/hooks/{TOKEN}')}?{QUERY}"
    yield served
    await server.close()


async def post(url: str, retry: RetryPolicy = FAST_RETRY) -> None:
    async with make_session() as session:
        await WebhookClient(AlertsSettings(webhook_url=SecretStr(url)), session, retry).post(
            {"text": "hello"}
        )


@pytest.mark.parametrize("status", [200, 201, 204])
async def test_any_2xx_is_the_message_taken(hook: Hook, status: int) -> None:
    """Slack's 200, and the 201 or 204 of other webhooks, all mean delivered: one post, as JSON."""
    hook.script = [(status, {})]
    await post(hook.url)
    assert hook.posts == [{"text": "hello"}]


async def test_retry_after_sets_the_wait_before_the_next_post(hook: Hook) -> None:
    """A 429 with Retry-After: 0.3 is posted again after 0.3 s, the second answer taken."""
    hook.script = [(429, {"Retry-After": "0.3"})]
    policy = RetryPolicy(attempts=3, timeout_s=5.0, wait_initial_s=0.01, wait_max_s=1.0)
    with capture_logs() as logs:
        started = time.monotonic()
        await post(hook.url, policy)
        elapsed = time.monotonic() - started
    assert len(hook.posts) == 2
    assert [e["wait_for"] for e in logs if e["event"] == "http.retry_scheduled"] == [0.3]
    assert elapsed >= 0.29


async def test_a_webhook_still_failing_after_the_retries_is_unavailable(hook: Hook) -> None:
    """503 to every attempt of the policy ends as UpstreamUnavailable with the status."""
    hook.script = [(503, {})] * 3
    with pytest.raises(UpstreamUnavailable) as caught:
        await post(hook.url)
    assert caught.value.status == 503
    assert len(hook.posts) == 3


async def test_a_redirect_is_an_error_not_followed(hook: Hook) -> None:
    """A redirect would turn the POST into a GET: it is reported, never followed or retried."""
    hook.script = [(301, {"Location": "/elsewhere"})]
    with pytest.raises(UpstreamResponseError) as caught:
        await post(hook.url)
    assert caught.value.status == 301
    assert str(caught.value).startswith("webhook POST answered 301: ")
    assert (len(hook.posts), hook.elsewhere) == (1, 0)


async def test_no_message_or_log_line_names_the_url_its_token_or_its_query(hook: Hook) -> None:
    """Errors say "webhook POST" and the server's echo of the URL comes back as "***"."""
    hook.script = [(500, {}), (401, {})]
    with capture_logs() as logs, pytest.raises(UpstreamAuthError) as caught:
        await post(hook.url)
    assert str(caught.value) == "webhook POST refused the credentials (401): echo: ***"
    assert "http.retry_scheduled" in [e["event"] for e in logs]  # after the 500
    for text in (repr(logs), str(caught.value)):
        assert TOKEN not in text and "xoxb" not in text and "q-secret" not in text


async def test_redact_takes_out_the_url_its_path_and_its_query() -> None:
    """Any text the URL could have reached, such as an exception's, is redacted the same way."""
    url = f"https://hooks.example.com/hooks/{TOKEN}?{QUERY}"
    async with make_session() as session:
        webhook = WebhookClient(AlertsSettings(webhook_url=SecretStr(url)), session)
        said = webhook.redact(f"failed on {url}; path /hooks/{TOKEN}; query {QUERY}")
    assert said == "failed on ***; path ***; query ***"
