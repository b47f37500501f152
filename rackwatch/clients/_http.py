"""HTTP for both clients: one place where answers and aiohttp errors become rackwatch errors.

`Http` sends one request with a bound on requests in flight, a per-request timeout and retries
(stamina) on transient failures, honouring Retry-After. A request that must not be carried out
twice is retried only after failures that leave the server untouched, and a 401 can renew the
credentials for the next attempt. It returns the statuses the caller expects as a `Reply` and
raises an `UpstreamError` for everything else. No aiohttp exception leaves this module. How an
answer's body is read, within its limit, and quoted is in `_body`; the log lines of retries
are in `_retries`.

Whatever a server answers is quoted only through the pool's `Redactor`: no configured secret (in
any of its forms), Authorization header or URL userinfo reaches a message, so none reaches a
log line or the state file either. A URL's `user:password@` is never sent in it: it becomes the
request's HTTP Basic credential when the request carries no Authorization of its own.

`RetryPolicy` holds the retry presets of every client and command; `Pool` is what the clients
of one process share: the session, the bound on requests in flight, a retry policy and the
redactor of the configured secrets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict
from urllib.parse import urlsplit

import aiohttp
import stamina
from yarl import URL

from rackwatch import __version__
from rackwatch.clients._body import (
    BODY_LIMITS,
    Reply,
    excerpt,
    parse_retry_after,
    read_body,
)
from rackwatch.clients._retries import Retried, log_retries, naming
from rackwatch.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamOutcomeUnknown,
    UpstreamResponseError,
    UpstreamUnavailable,
)
from rackwatch.safe_text import NO_SECRETS, Redactor

# Reply is read in `_body`; the clients import it from here with the rest.
__all__ = ["Http", "Pool", "Reply", "RequestOptions", "RetryPolicy", "make_session", "without_url"]

USER_AGENT = f"rackwatch/{__version__}"

# MAAS answers 409 when a database transaction conflicts and asks the client to try again.
RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
# The server (or the proxy's upstream) may have carried the request out before answering these.
UNCERTAIN_STATUSES = frozenset({500, 502, 504})
MAY_HAVE_HAPPENED = "it may have been carried out"

HeaderFactory = Callable[[], Awaitable[Mapping[str, str]]]
Renewal = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try before a transient failure becomes an error.

    The presets are class attributes: `DEFAULT` for the checks, `PROBE` for the commands that
    try a service for an operator, `DELIVERY` for each alert sent, and `DEMO`.
    """

    attempts: int = 5
    timeout_s: float = 300.0  # no attempt starts after this many seconds
    wait_initial_s: float = 1.0
    wait_max_s: float = 30.0  # also caps a server's Retry-After

    DEFAULT: ClassVar[RetryPolicy]
    PROBE: ClassVar[RetryPolicy]
    DELIVERY: ClassVar[RetryPolicy]
    DEMO: ClassVar[RetryPolicy]


RetryPolicy.DEFAULT = RetryPolicy()
# check-config and alerts test: enough to tell a flaky service from a wrong one, quickly.
RetryPolicy.PROBE = RetryPolicy(attempts=2, timeout_s=10.0, wait_initial_s=0.5, wait_max_s=2.0)
# One alert's delivery: a failing webhook leaves it queued for the next run soon enough.
RetryPolicy.DELIVERY = RetryPolicy(attempts=3, timeout_s=30.0, wait_initial_s=1.0, wait_max_s=10.0)
# The demo's lab is on 127.0.0.1: short waits keep the demo's run to seconds.
RetryPolicy.DEMO = RetryPolicy(attempts=3, timeout_s=10.0, wait_initial_s=0.2, wait_max_s=1.0)


@dataclass(frozen=True, slots=True)
class Pool:
    """What the clients of one process share.

    `limiter` bounds the requests in flight across every client built on the pool, so that
    MAAS and Testflinger together never have more than `check.concurrency` requests out.
    `redact` takes the configured secrets out of every answer quoted.
    """

    session: aiohttp.ClientSession
    limiter: asyncio.Semaphore
    retry: RetryPolicy = RetryPolicy.DEFAULT
    redact: Redactor = NO_SECRETS


class RequestOptions(TypedDict, total=False):
    """The options of `Http.request` that a client passes through as they are."""

    expect: Collection[int]
    params: Mapping[str, str] | None
    json_body: Any
    idempotent: bool


class _Renewed(Exception):
    """A 401 after which the credentials were renewed: the next attempt goes out at once."""

    def __init__(self, refusal: UpstreamAuthError) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


class Http:
    """Requests to one service, over the session and within the limiter of a `Pool`.

    The per-request timeout starts once a slot of the limiter is free: waiting for a slot is
    not the server being slow. `secrets`, and those of the pool's redactor, never appear in a
    message; with `quote_refusals` False, neither does the body of a 401 or 403.

    With `redact_url`, the URL is itself a secret (a webhook's carries its token): messages name
    the service and the method but no path, and the URL, its path and its query are redacted from
    every answer quoted. With `follow_redirects` False, a redirect is an answer like any other.

    An answer's body is read up to `body_limit` bytes (the service's `BODY_LIMITS` entry); a
    longer one raises UpstreamResponseError, unless `needs_body` is False: a caller that wants
    only the status gets the body cut at the limit.
    """

    def __init__(
        self,
        service: str,
        pool: Pool,
        *,
        timeout_s: float,
        quote_refusals: bool = True,
        secrets: Sequence[str] = (),
        redact_url: bool = False,
        follow_redirects: bool = True,
        body_limit: int | None = None,
        needs_body: bool = True,
    ) -> None:
        self.service = service
        self._body_limit = BODY_LIMITS[service] if body_limit is None else body_limit
        self._needs_body = needs_body
        self._session = pool.session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._limiter = pool.limiter
        self._retry = pool.retry
        self._quote_refusals = quote_refusals
        self._redactor = pool.redact.also(secrets)
        self._redact_url = redact_url
        self._follow_redirects = follow_redirects
        log_retries()

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        expect: Collection[int] = (200,),
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: HeaderFactory | None = None,
        idempotent: bool = True,
        renew: Renewal | None = None,
    ) -> Reply:
        """Send one request, retried on transient failures; answer a status in `expect`.

        `url` is sent as it is given: a `URL` built with `encoded=True` keeps its escapes. Its
        `user:password@`, if any, is sent as HTTP Basic instead, unless `headers` gives an
        Authorization of its own, which wins.
        `headers` is called again for every attempt, so each attempt can be signed anew; what it
        or `renew` raises ends the request, as they retry on their own.

        With `idempotent` False, the request is never sent again once the server may have
        carried it out: a timeout, a lost connection, a cut-short answer or a 500, 502 or 504
        raises UpstreamOutcomeUnknown. Failures that never reached it (no connection, 409, 429,
        503) are retried as usual.

        With `renew`, a 401 awaits `renew()` and the next attempt follows at once, carrying the
        credentials `headers` then gives. A 401 on the last attempt, or on the attempt right after
        a renewal, and any 403, raise UpstreamAuthError.
        """
        what = f"{self.service} {method}"
        url = url if isinstance(url, URL) else URL(url)
        if not self._redact_url:
            # As sent, escapes and all: a name's newline or "/" stays visible and on one line.
            what += f" {url.raw_path}"
        userinfo = aiohttp.BasicAuth.from_url(url)
        if userinfo is not None:
            url = url.with_user(None)
        basic = userinfo.encode() if userinfo is not None else None
        renewing = False  # the attempt before was refused with a 401 and the credentials renewed

        async def credentials() -> tuple[Mapping[str, str] | None, bool]:
            """This attempt's headers, after renewing the credentials if the last was refused.

            Called outside stamina's attempt: a failure to get credentials ends the request,
            as the login retries on its own.
            """
            nonlocal renewing
            renewed, renewing = renewing, False
            if renewed:
                assert renew is not None
                await renew()
            return (await headers() if headers is not None else None), renewed

        async def send(sent: Mapping[str, str] | None, *, renewed: bool, last: bool) -> Reply:
            nonlocal renewing
            try:
                return await self._once(
                    method, url, what, expect, params, json_body, sent, idempotent, basic
                )
            except UpstreamAuthError as exc:
                if renew is None or exc.status != 401 or renewed or last:
                    raise
                renewing = True
                raise _Renewed(exc) from None

        # Most requests succeed at once, and a retry context costs more than the request: the
        # first attempt goes out bare, and its failure becomes the retry loop's first attempt.
        tries = Retried(what)
        sent, renewed = await credentials()
        try:
            return await send(sent, renewed=renewed, last=self._retry.attempts < 2)
        except UpstreamOutcomeUnknown:
            raise
        except (UpstreamUnavailable, _Renewed) as exc:
            failed: Exception | None = exc
        retrying = stamina.retry_context(
            on=self._backoff,
            attempts=self._retry.attempts,
            timeout=self._retry.timeout_s,
            wait_initial=self._retry.wait_initial_s,
            wait_max=self._retry.wait_max_s,
        )
        try:
            with naming(what):
                async for attempt in retrying:
                    tries.attempts = attempt.num
                    if failed is not None:
                        with attempt:
                            first, failed = failed, None
                            raise first
                        continue
                    sent, renewed = await credentials()
                    with attempt:
                        reply = await send(
                            sent, renewed=renewed, last=attempt.num >= self._retry.attempts
                        )
                        tries.done(status=reply.status)
                        return reply
        except _Renewed as exc:
            tries.done(error=exc.refusal)
            raise exc.refusal from None
        except UpstreamError as exc:
            tries.done(error=exc)
            raise
        raise AssertionError("unreachable: stamina raises once attempts run out")

    async def _once(
        self,
        method: str,
        url: URL,
        what: str,
        expect: Collection[int],
        params: Mapping[str, str] | None,
        json_body: Any,
        headers: Mapping[str, str] | None,
        idempotent: bool,
        basic: str | None,
    ) -> Reply:
        sent_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if headers is not None:
            sent_headers.update(headers)
        if basic is not None and not any(k.lower() == "authorization" for k in sent_headers):
            sent_headers["Authorization"] = basic
        try:
            async with (
                self._limiter,
                self._session.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    headers=sent_headers,
                    timeout=self._timeout,
                    allow_redirects=self._follow_redirects,
                ) as response,
            ):
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                body = await read_body(
                    response,
                    what,
                    limit=self._body_limit,
                    whole=status in expect and self._needs_body,
                    wanted=status in expect,
                )
        except TimeoutError as exc:
            # Only a connection that was never made is sure to have carried nothing.
            reached = not isinstance(exc, aiohttp.ConnectionTimeoutError)
            raise self._no_answer(
                f"{what}: no answer within {self._timeout.total:g} s",
                uncertain=reached and not idempotent,
            ) from None
        except aiohttp.ClientError as exc:
            reached = not isinstance(exc, aiohttp.ClientConnectorError)
            raise self._no_answer(
                f"{what}: {describe_client_error(exc)}", uncertain=reached and not idempotent
            ) from None

        if status in expect:
            return Reply(status, body, what, self._quoting(url))
        said = excerpt(body, redact=self._quoting(url))
        raise self._error(what, status, said, retry_after, idempotent)

    def _no_answer(self, message: str, *, uncertain: bool) -> UpstreamUnavailable:
        if uncertain:
            return UpstreamOutcomeUnknown(self.service, f"{message}; {MAY_HAVE_HAPPENED}")
        return UpstreamUnavailable(self.service, message)

    def _error(
        self, what: str, status: int, said: str, retry_after: float | None, idempotent: bool
    ) -> UpstreamError:
        """The error for an answer `status` that the caller did not expect; `said` is its body."""
        if status in (401, 403):
            quoted = f": {said}" if self._quote_refusals else ""
            return UpstreamAuthError(
                self.service, f"{what} refused the credentials ({status}){quoted}", status=status
            )
        message = f"{what} answered {status}: {said}"
        if status in UNCERTAIN_STATUSES and not idempotent:
            return UpstreamOutcomeUnknown(
                self.service, f"{message}; {MAY_HAVE_HAPPENED}", status=status
            )
        if status in RETRYABLE_STATUSES:
            return UpstreamUnavailable(
                self.service, message, status=status, retry_after=retry_after
            )
        return UpstreamResponseError(self.service, message, status=status)

    def _quoting(self, url: URL) -> Callable[[str], str]:
        """How upstream's words are quoted: without credentials, nor `url` if it is a secret."""
        if not self._redact_url:
            return self._redactor
        return lambda text: without_url(self._redactor(text), str(url))

    def _backoff(self, exc: Exception) -> bool | float:
        if isinstance(exc, _Renewed):
            return 0.0
        if not isinstance(exc, UpstreamUnavailable) or isinstance(exc, UpstreamOutcomeUnknown):
            return False
        if exc.retry_after is not None:
            return min(exc.retry_after, self._retry.wait_max_s)
        return True


def without_url(text: str, url: str) -> str:
    """`text` without the URL, its path or its query, should a server or an error quote them."""
    parts = urlsplit(url)
    for secret in (url, parts.path if len(parts.path) > 1 else "", parts.query):
        if secret:
            text = text.replace(secret, "***")
    return text


def describe_client_error(exc: aiohttp.ClientError) -> str:
    """Name an aiohttp failure without its URL (which could carry credentials)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut short"
    return type(exc).__name__


def make_session() -> aiohttp.ClientSession:
    """The process's one HTTP session; the `Http` limiter bounds its requests in flight."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, raise_for_status=False)
