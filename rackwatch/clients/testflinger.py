"""Testflinger: agents, job submission and search, results and cancellation, with optional login.

Agent names and job ids go into request paths percent-encoded, one segment each, so that a name
with "?", "#", "%", a tab or a newline reaches the agent it names. The server takes an agent's
name from such a segment after decoding it, so no agent it serves has a name with "/" (or one
that is empty, "." or ".."): such a record is reported as a name Testflinger cannot serve.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Unpack
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from rackwatch.clients._http import Http, Pool, Reply, RequestOptions
from rackwatch.config import TestflingerSettings
from rackwatch.errors import UpstreamResponseError
from rackwatch.model import ActiveJob, Agent, JobDefinition, JobResult, detection_off

log = structlog.get_logger("rackwatch.testflinger")

# A token is renewed this long before Testflinger says it expires.
TOKEN_MARGIN_S = 30.0


class TestflingerClient:
    """Talks to one Testflinger server.

    With a client id, it logs in (POST /v1/oauth2/token) and sends `Authorization: Bearer`
    with the current token on every attempt; a 401 gets a fresh token, and the next attempt of
    the same request follows at once with it, as Testflinger's own CLI replays a request once.
    Without one, it is anonymous, which servers without OIDC allow.
    """

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, settings: TestflingerSettings, pool: Pool) -> None:
        secret = settings.secret.get_secret_value()
        self._http = Http(
            "testflinger", pool, timeout_s=settings.timeout.total_seconds(), secrets=[secret]
        )
        self._url = settings.url
        self._base = str(URL(settings.url))  # already escaped, so that paths can be appended
        client_id = settings.client_id
        self._login = aiohttp.encode_basic_auth(client_id, secret) if client_id else None
        self._token: str | None = None
        self._token_expires = 0.0  # time.monotonic() value
        self._login_lock = asyncio.Lock()
        self._lacking_told: set[str] = set()  # fields whose absence has been logged

    async def agents(self) -> list[Agent]:
        """Every agent the server knows. The first listing whose records lack a field that
        stale or quarantine detection needs logs a warning, once per field for this client."""
        reply = await self._call("GET", "v1/agents/data")
        agents = [parse_agent(item, reply.what) for item in _items(reply, "agents")]
        for field, line in detection_off(agents):
            if field not in self._lacking_told:
                self._lacking_told.add(field)
                log.warning("testflinger.records_lack", field=field, detail=line)
        return agents

    async def agent(self, name: str) -> Agent | None:
        """One agent, or None when the server does not know it.

        Raises:
            UpstreamResponseError: a name that no URL segment can carry, so no agent can have.
        """
        if (why := why_unservable(name)) is not None:
            raise UpstreamResponseError(
                "testflinger", f"{name!r} is an agent name Testflinger cannot serve ({why})"
            )
        url_path = encode_path("v1", "agents", "data", name)
        reply = await self._call("GET", url_path, expect=(200, 404))
        if reply.status == 404:
            return None
        return parse_agent(reply.json(), reply.what)

    async def submit(self, job: Mapping[str, Any]) -> str:
        """Submit a job that carries its own job_id; answer the id the server stored.

        The POST is never sent again blindly: a second one would store a second job under the
        same id. It is retried only after failures that leave the server untouched (no
        connection, 409, 429, 503, an expired token); after a timeout, a lost connection or a
        500, 502 or 504 it raises UpstreamOutcomeUnknown, and the caller looks the job up by its
        id to learn whether it was stored.
        """
        reply = await self._call("POST", "v1/job", json_body=dict(job), idempotent=False)
        data = reply.json()
        job_id = data.get("job_id") if isinstance(data, dict) else None
        if not isinstance(job_id, str) or not job_id:
            raise UpstreamResponseError("testflinger", f"{reply.what}: no job_id in the answer")
        return job_id

    async def active_jobs(self, tag: str) -> list[ActiveJob]:
        """The jobs tagged `tag` that have not ended: neither cancelled nor complete.

        A job cancelled while its agent still provisions reads "cancelled", so it is not listed,
        although the agent runs it until provisioning ends.
        """
        reply = await self._call(
            "GET", "v1/job/search", params={"tags": tag, "state": "active"}, expect=(200, 204)
        )
        if reply.status == 204:
            return []
        return [parse_active_job(item, reply.what) for item in _items(reply, "jobs")]

    async def job(self, job_id: str) -> JobDefinition | None:
        """What the job was submitted as, or None when the server has no such job."""
        reply = await self._call("GET", encode_path("v1", "job", job_id), expect=(200, 204))
        if reply.status == 204:
            return None
        data = _record(reply, "job_queue")
        tags = data.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise UpstreamResponseError("testflinger", f"{reply.what}: tags is not a list of text")
        return JobDefinition(job_id=job_id, queue=data["job_queue"], tags=tuple(tags))

    async def result(self, job_id: str) -> JobResult | None:
        """The job's state, phase statuses and provision output, or None when the server has
        no such job. A provision_output that is not text counts as none."""
        reply = await self._call("GET", encode_path("v1", "result", job_id), expect=(200, 204))
        if reply.status == 204:
            return None
        data = _record(reply, "job_state")
        output = data.get("provision_output")
        return JobResult(
            job_id=job_id,
            state=data["job_state"],
            provision_status=_int_or_none(data.get("provision_status")),
            setup_status=_int_or_none(data.get("setup_status")),
            provision_output=output if isinstance(output, str) else None,
        )

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job; False when it had already ended (or never existed)."""
        reply = await self._call(
            "POST",
            encode_path("v1", "job", job_id, "action"),
            json_body={"action": "cancel"},
            expect=(200, 400),
        )
        if reply.status == 400 and "already completed or cancelled" not in reply.message():
            raise UpstreamResponseError(
                "testflinger", f"{reply.what} answered 400: {reply.message()}", status=400
            )
        return reply.status == 200

    async def log_in(self) -> None:
        """Get a token now (check-config uses this to test the credentials)."""
        if self._login is not None:
            await self._fresh_token(stale=self._token)

    async def _call(self, method: str, path: str, **options: Unpack[RequestOptions]) -> Reply:
        """Call `path`, whose segments `encode_path` escaped, relative to the server's URL."""
        url = URL(self._base + path, encoded=True)
        if self._login is None:
            return await self._http.request(method, url, **options)
        sent: str | None = None  # the token of the latest attempt

        async def bearer() -> Mapping[str, str]:
            # A refused login raises from here and ends the call: logging in again cannot help.
            nonlocal sent
            sent = await self._current_token()
            return {"Authorization": f"Bearer {sent}"}

        async def renew() -> None:
            await self._fresh_token(stale=sent)

        return await self._http.request(method, url, headers=bearer, renew=renew, **options)

    async def _current_token(self) -> str:
        if self._token is None or time.monotonic() >= self._token_expires:
            return await self._fresh_token(stale=self._token)
        return self._token

    async def _fresh_token(self, *, stale: str | None) -> str:
        """Log in, unless another task already replaced the `stale` token meanwhile."""
        async with self._login_lock:
            if self._token is not None and self._token != stale:
                return self._token
            assert self._login is not None
            basic = {"Authorization": self._login}

            async def credentials() -> Mapping[str, str]:
                return basic

            reply = await self._http.request(
                "POST", self._url + "v1/oauth2/token", headers=credentials
            )
            data = reply.json()
            token = data.get("access_token") if isinstance(data, dict) else None
            if not isinstance(token, str) or not token:
                raise UpstreamResponseError("testflinger", f"{reply.what}: no access_token")
            expires_in = _int_or_none(data.get("expires_in")) or 600
            self._token = token
            self._token_expires = time.monotonic() + max(expires_in - TOKEN_MARGIN_S, 1.0)
            return token


def encode_path(*segments: str) -> str:
    """A request path of these segments, each percent-encoded whole, "/" included.

    A segment "." or ".." has its dots escaped too, so that it is never taken for a step up.
    """
    return "/".join(
        segment.replace(".", "%2E") if segment in (".", "..") else quote(segment, safe="")
        for segment in segments
    )


def why_unservable(name: str) -> str | None:
    """Why Testflinger cannot serve an agent of this name, or None when it can.

    The server routes on the decoded path and takes the name from one segment of it, so a "/"
    splits the name; clients and proxies resolve "." and ".." segments away.
    """
    if "/" in name:
        return "the name holds a '/', which ends a URL segment"
    if name in ("", ".", ".."):
        return "no URL segment can name it"
    return None


def _items(reply: Reply, noun: str) -> list[Any]:
    """The answer's list of records; anything else is an UpstreamResponseError."""
    data = reply.json()
    if not isinstance(data, list):
        raise UpstreamResponseError("testflinger", f"{reply.what}: expected a list of {noun}")
    return data


def _record(reply: Reply, key: str) -> dict[str, Any]:
    """The answer's object, which must hold text under `key`."""
    data = reply.json()
    if not isinstance(data, dict) or not isinstance(data.get(key), str):
        raise UpstreamResponseError("testflinger", f"{reply.what}: no {key} in the answer")
    return data


def parse_agent(item: Any, what: str) -> Agent:
    """An agent record, tolerant of the fields an older server or a new agent leaves out."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise UpstreamResponseError("testflinger", f"{what}: an agent record without a name")
    streak_type = item.get("provision_streak_type")
    return Agent(
        name=item["name"],
        state=str(item.get("state") or "unknown"),
        queues=tuple(str(q) for q in item.get("queues") or ()),
        location=str(item.get("location") or ""),
        updated_at=parse_timestamp(item.get("updated_at")),
        job_id=str(item.get("job_id") or ""),
        comment=str(item.get("comment") or ""),
        provision_streak_type=str(streak_type) if streak_type else None,
        provision_streak_count=_int_or_none(item.get("provision_streak_count")),
    )


def parse_active_job(item: Any, what: str) -> ActiveJob:
    """One job of a search answer: {job_id, created_at, job_state}, of which the id and state."""
    if not isinstance(item, dict) or not isinstance(item.get("job_id"), str) or not item["job_id"]:
        raise UpstreamResponseError("testflinger", f"{what}: a job without a job_id")
    if not isinstance(item.get("job_state"), str):
        raise UpstreamResponseError("testflinger", f"{what}: job {item['job_id']} has no job_state")
    return ActiveJob(item["job_id"], item["job_state"])


def parse_timestamp(value: Any) -> datetime | None:
    """Testflinger's ISO timestamps, including its "…+00:00Z" form; None when unreadable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1]
        if "+" not in text[10:] and "-" not in text[10:]:
            text += "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None
