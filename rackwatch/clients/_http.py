"""HTTP for both clients: one place where answers and aiohttp errors become rackwatch errors.

`Http` sends one request with a bound on requests in flight, a per-request timeout and retries
(stamina) on transient failures, honouring Retry-After. A request that must not be carried out
twice is retried only after failures that leave the server untouched, and a 401 can renew the
credentials for the next attempt. It returns the statuses the caller expects as a `Reply` and
raises an `UpstreamError` for everything else. No aiohttp exception leaves this module.

Every answer is read in chunks up to the body limit of its service (`BODY_LIMITS`), and reading
stops once a body passes it; JSON nested deeper than `MAX_JSON_DEPTH` is refused. Either way the
answer is an `UpstreamResponseError` of one line, so that a server that never ends its answer, or
nests it without end, costs rackwatch a bounded amount of memory and never a traceback.

`RetryPolicy` holds the retry presets of every client and command; `Pool` is what the clients
of one process share: the session, the bound on requests in flight and a retry policy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypedDict
from urllib.parse import urlsplit

import aiohttp
import stamina
from yarl import URL

from rackwatch import __version__
from rackwatch.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamOutcomeUnknown,
    UpstreamResponseError,
    UpstreamUnavailable,
)

USER_AGENT = f"rackwatch/{__version__}"

# MAAS answers 409 when a database transaction conflicts and asks the client to try again.
RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
# The server (or the proxy's upstream) may have carried the request out before answering these.
UNCERTAIN_STATUSES = frozenset({500, 502, 504})
MAY_HAVE_HAPPENED = "it may have been carried out"

KIB = 1024
MIB = 1024 * KIB
# The most of an answer's body rackwatch reads, by service; a longer answer is refused.
BODY_LIMITS = {
    # A rack of 1,000 machines at 64 KiB each. The simulated MAAS answers 1.5 KB a machine; a
    # realistic machine (one NIC, one disk) is 7-9.5 KB, and one with bonded NICs and many
    # disks 20-50 KB.
    "maas": 64 * MIB,
    # 10,000 agents at 3.3 KiB each (the simulated record is 213 bytes); it also bounds a job
    # result with its provision output.
    "testflinger": 32 * MIB,
    # Slack answers "ok", Mattermost "ok" or a short JSON error.
    "webhook": 64 * KIB,
}
# Of an answer whose status the caller did not ask for, only this much is read: its excerpt.
ERROR_BODY_LIMIT = 64 * KIB
READ_CHUNK_BYTES = 64 * KIB
# A MAAS listing nests 8 levels deep (machine, interface, link, subnet, VLAN), Testflinger's 4.
MAX_JSON_DEPTH = 64

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
    """

    session: aiohttp.ClientSession
    limiter: asyncio.Semaphore
    retry: RetryPolicy = RetryPolicy.DEFAULT


class RequestOptions(TypedDict, total=False):
    """The options of `Http.request` that a client passes through as they are."""

    expect: Collection[int]
    params: Mapping[str, str] | None
    json_body: Any
    idempotent: bool


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer whose status the caller asked for."""

    status: int
    body: bytes
    what: str  # "testflinger GET /v1/result/<id>", for messages

    def json(self) -> Any:
        """The body as JSON; UpstreamResponseError when it is not JSON or nests too deeply."""
        try:
            data = json.loads(self.body)
        except ValueError:
            raise self._unreadable(f"a body that is not JSON: {excerpt(self.body)}") from None
        except RecursionError:
            data = None
        else:
            if not nests_deeper(data, MAX_JSON_DEPTH):
                return data
        raise self._unreadable(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")

    def _unreadable(self, why: str) -> UpstreamResponseError:
        return UpstreamResponseError(
            self.what.split(" ", 1)[0],
            f"{self.what} answered {self.status} with {why}",
            status=self.status,
        )

    def message(self) -> str:
        """The server's own words, from any of the error body shapes."""
        return excerpt(self.body)


class _Renewed(Exception):
    """A 401 after which the credentials were renewed: the next attempt goes out at once."""

    def __init__(self, refusal: UpstreamAuthError) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


class Http:
    """Requests to one service, over the session and within the limiter of a `Pool`.

    The per-request timeout starts once a slot of the limiter is free: waiting for a slot is
    not the server being slow. `secrets` never appear in a message; with `quote_refusals`
    False, neither does the body of a 401 or 403.

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
        self._secrets = [s for s in secrets if s]
        self._redact_url = redact_url
        self._follow_redirects = follow_redirects

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

        `url` is sent as it is given: a `URL` built with `encoded=True` keeps its escapes.
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
        if not self._redact_url:
            # As sent, escapes and all: a name's newline or "/" stays visible and on one line.
            what += f" {(url if isinstance(url, URL) else URL(url)).raw_path}"
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
                    method, url, what, expect, params, json_body, sent, idempotent
                )
            except UpstreamAuthError as exc:
                if renew is None or exc.status != 401 or renewed or last:
                    raise
                renewing = True
                raise _Renewed(exc) from None

        # Most requests succeed at once, and a retry context costs more than the request: the
        # first attempt goes out bare, and its failure becomes the retry loop's first attempt.
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
            async for attempt in retrying:
                if failed is not None:
                    with attempt:
                        first, failed = failed, None
                        raise first
                    continue
                sent, renewed = await credentials()
                with attempt:
                    return await send(
                        sent, renewed=renewed, last=attempt.num >= self._retry.attempts
                    )
        except _Renewed as exc:
            raise exc.refusal from None
        raise AssertionError("unreachable: stamina raises once attempts run out")

    async def _once(
        self,
        method: str,
        url: str | URL,
        what: str,
        expect: Collection[int],
        params: Mapping[str, str] | None,
        json_body: Any,
        headers: Mapping[str, str] | None,
        idempotent: bool,
    ) -> Reply:
        sent_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if headers is not None:
            sent_headers.update(headers)
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
                body = await self._read_body(response, what, wanted=status in expect)
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
            return Reply(status, body, what)
        said = self._redact(excerpt(body), str(url))
        raise self._error(what, status, said, retry_after, idempotent)

    async def _read_body(
        self, response: aiohttp.ClientResponse, what: str, *, wanted: bool
    ) -> bytes:
        """The body, read in chunks up to the limit; past it, reading stops.

        A `wanted` answer (its status is one the caller expects) longer than the body limit
        raises UpstreamResponseError, unless the caller does not need its body: then, as of any
        other answer, only its head is read (ERROR_BODY_LIMIT bytes of an unwanted one, for
        its excerpt).
        """
        if not (wanted and self._needs_body):
            limit = self._body_limit if wanted else min(self._body_limit, ERROR_BODY_LIMIT)
            head = await read_head(response.content, limit)
            if not response.content.at_eof():
                response.close()  # drop the connection rather than read the rest
            return head
        declared = response.content_length
        if declared is not None and declared > self._body_limit:
            response.close()
            raise self._too_large(what, response.status, f"its length is {declared:,} bytes")
        body = await read_within(response.content, self._body_limit)
        if body is None:
            response.close()
            raise self._too_large(what, response.status, "reading stopped there")
        return body

    def _too_large(self, what: str, status: int, why: str) -> UpstreamResponseError:
        limit = format_size(self._body_limit)
        return UpstreamResponseError(
            self.service,
            f"{what} answered {status} with a body over {limit}, the limit for {self.service}"
            f" answers; {why}",
            status=status,
        )

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

    def _redact(self, text: str, url: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return without_url(text, url) if self._redact_url else text

    def _backoff(self, exc: Exception) -> bool | float:
        if isinstance(exc, _Renewed):
            return 0.0
        if not isinstance(exc, UpstreamUnavailable) or isinstance(exc, UpstreamOutcomeUnknown):
            return False
        if exc.retry_after is not None:
            return min(exc.retry_after, self._retry.wait_max_s)
        return True


async def read_within(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, read in chunks; None as soon as it passes `limit` bytes.

    What was read is dropped then, and the rest is never read.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_head(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The first `limit` bytes of a body (all of it when shorter); the rest is left unread."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := await content.read(min(READ_CHUNK_BYTES, limit - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def nests_deeper(data: Any, limit: int) -> bool:
    """Whether decoded JSON nests lists and objects more than `limit` levels deep.

    Level by level rather than recursively, so that no depth can exhaust the stack.
    """
    level = [data] if isinstance(data, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            item
            for node in level
            for item in (node.values() if isinstance(node, dict) else node)
            if isinstance(item, (dict, list))
        ]
    return False


def format_size(size: int) -> str:
    """A byte count the way the limits are written: "64 MiB", "64 KiB", "512 bytes"."""
    for unit, name in ((MIB, "MiB"), (KIB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size:,} bytes"


def without_url(text: str, url: str) -> str:
    """`text` without the URL, its path or its query, should a server or an error quote them."""
    parts = urlsplit(url)
    for secret in (url, parts.path if len(parts.path) > 1 else "", parts.query):
        if secret:
            text = text.replace(secret, "***")
    return text


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def excerpt(body: bytes, limit: int = 200) -> str:
    """A short, one-line account of an answer's body, whatever its shape.

    Testflinger answers errors in three shapes (a validation object, {"message": ...}, plain
    text or an HTML page); MAAS answers form errors as {"field": ["message"]}.
    """
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return "(empty body)"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and not nests_deeper(data, MAX_JSON_DEPTH):
        text = _describe_json_error(data)
    elif text.lstrip().startswith("<"):
        text = "an HTML page" + (f" ({title})" if (title := _html_title(text)) else "")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe_json_error(data: dict[str, Any]) -> str:
    message = data.get("message")
    detail = data.get("detail")
    parts: list[str] = []
    if message is not None:
        parts.append(str(message))
    if isinstance(detail, dict) and detail:
        parts.append(_flatten(detail))
    if not parts:
        parts.append(_flatten(data))
    return ": ".join(parts)


def _flatten(data: Any, prefix: str = "") -> str:
    if isinstance(data, dict):
        return "; ".join(
            _flatten(value, f"{prefix}{key}." if key not in ("json", "query") else prefix)
            for key, value in data.items()
        )
    if isinstance(data, list):
        return f"{prefix.rstrip('.')}: " + " ".join(str(item) for item in data)
    return f"{prefix.rstrip('.')}: {data}" if prefix else str(data)


def _html_title(text: str) -> str:
    lower = text.lower()
    start = lower.find("<title>")
    end = lower.find("</title>")
    if start == -1 or end <= start:
        return ""
    return text[start + len("<title>") : end].strip()


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
