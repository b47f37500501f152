"""HTTP for both clients: one place where answers and aiohttp errors become rackwatch errors.

`Http` sends one request with a bound on requests in flight, a per-request timeout and retries
(stamina) on transient failures, honouring Retry-After. It returns the statuses the caller
expects as a `Reply` and raises an `UpstreamError` for everything else. No aiohttp exception
leaves this module.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import stamina
from yarl import URL

from rackwatch import __version__
from rackwatch.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamResponseError,
    UpstreamUnavailable,
)

USER_AGENT = f"rackwatch/{__version__}"

# MAAS answers 409 when a database transaction conflicts and asks the client to try again.
RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})

HeaderFactory = Callable[[], Awaitable[Mapping[str, str]]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try before a transient failure becomes an error."""

    attempts: int = 5
    timeout_s: float = 300.0  # no attempt starts after this many seconds
    wait_initial_s: float = 1.0
    wait_max_s: float = 30.0  # also caps a server's Retry-After


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer whose status the caller asked for."""

    status: int
    body: bytes
    what: str  # "testflinger GET /v1/result/<id>", for messages

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise UpstreamResponseError(
                self.what.split(" ", 1)[0],
                f"{self.what} answered {self.status} with a body that is not JSON: "
                f"{excerpt(self.body)}",
                status=self.status,
            ) from None

    def message(self) -> str:
        """The server's own words, from any of the error body shapes."""
        return excerpt(self.body)


class Http:
    """Requests to one service.

    All `Http` objects of a process share one session and one semaphore, so `limiter` bounds
    the requests in flight across MAAS and Testflinger together. The per-request timeout
    starts once a slot is free: waiting for a slot is not the server being slow.
    """

    def __init__(
        self,
        service: str,
        session: aiohttp.ClientSession,
        *,
        timeout_s: float,
        limiter: asyncio.Semaphore,
        retry: RetryPolicy,
        quote_refusals: bool = True,
        secrets: Sequence[str] = (),
    ) -> None:
        self.service = service
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._limiter = limiter
        self._retry = retry
        # MAAS echoes the token secret in some 401 bodies: those are never quoted.
        self._quote_refusals = quote_refusals
        self._secrets = [s for s in secrets if s]

    async def request(
        self,
        method: str,
        url: str,
        *,
        expect: Collection[int] = (200,),
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: HeaderFactory | None = None,
    ) -> Reply:
        """Send one request, retried on transient failures; answer a status in `expect`.

        `headers` is called again for every attempt, so each attempt can be signed anew.
        """
        what = f"{self.service} {method} {URL(url).path}"
        # Most requests succeed at once, and a retry context costs more than the request: the
        # first attempt goes out bare, and its failure becomes the retry loop's first attempt.
        try:
            return await self._once(method, url, what, expect, params, json_body, headers)
        except UpstreamUnavailable as exc:
            failed: UpstreamUnavailable | None = exc
        retrying = stamina.retry_context(
            on=self._backoff,
            attempts=self._retry.attempts,
            timeout=self._retry.timeout_s,
            wait_initial=self._retry.wait_initial_s,
            wait_max=self._retry.wait_max_s,
        )
        async for attempt in retrying:
            with attempt:
                if failed is not None:
                    first, failed = failed, None
                    raise first
                return await self._once(method, url, what, expect, params, json_body, headers)
        raise AssertionError("unreachable: stamina raises once attempts run out")

    async def _once(
        self,
        method: str,
        url: str,
        what: str,
        expect: Collection[int],
        params: Mapping[str, str] | None,
        json_body: Any,
        headers: HeaderFactory | None,
    ) -> Reply:
        sent_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if headers is not None:
            sent_headers.update(await headers())
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
                    allow_redirects=True,
                ) as response,
            ):
                body = await response.read()
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            raise UpstreamUnavailable(
                self.service, f"{what}: no answer within {self._timeout.total:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                self.service, f"{what}: {describe_client_error(exc)}"
            ) from None

        if status in expect:
            return Reply(status, body, what)
        raise self._error(what, status, body, retry_after)

    def _error(
        self, what: str, status: int, body: bytes, retry_after: float | None
    ) -> UpstreamError:
        if status in (401, 403):
            said = f": {self._redact(excerpt(body))}" if self._quote_refusals else ""
            return UpstreamAuthError(
                self.service, f"{what} refused the credentials ({status}){said}", status=status
            )
        message = f"{what} answered {status}: {self._redact(excerpt(body))}"
        if status in RETRYABLE_STATUSES:
            return UpstreamUnavailable(
                self.service, message, status=status, retry_after=retry_after
            )
        return UpstreamResponseError(self.service, message, status=status)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _backoff(self, exc: Exception) -> bool | float:
        if not isinstance(exc, UpstreamUnavailable):
            return False
        if exc.retry_after is not None:
            return min(exc.retry_after, self._retry.wait_max_s)
        return True


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
    except ValueError:
        data = None
    if isinstance(data, dict):
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
