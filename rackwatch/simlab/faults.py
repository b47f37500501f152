"""Faults the simulated lab can inject, and the middleware that counts requests and applies them.

A fault replaces the normal answer to matching requests (SLOW and LATE delay it instead) for a given
number of requests, or for a seeded random fraction of them. The answers imitate what sits in front
of the real services: a 503 with Retry-After, a framework's HTML error page, a body cut off mid-way.
LATE imitates a server that carries a request out after the client has given up on it. ENDLESS,
HUGE and DEEP are answers no client should read whole, and ECHO_HEADERS a debugging error page
that shows the request's credentials back to it. BARE_AGENTS imitates a Testflinger that applies
the output schema it declares for agent records, which lacks updated_at and provision_streak_*.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

SERVICES = ("maas", "testflinger")

# What ENDLESS and HUGE answers are made of: a list of agent- and machine-like records.
_FILLER_RECORD = (
    '{"name": "filler", "hostname": "filler", "system_id": "fi11er", "state": "waiting", '
    f'"comment": "{"x" * 900}"}}, '
)
_FILLER = (_FILLER_RECORD * (64 * 1024 // len(_FILLER_RECORD))).encode()
_HUGE_HEAD, _HUGE_TAIL = b"[", b"{}]"
# What Testflinger's declared output schema of an agent record lacks (BARE_AGENTS drops them).
_UNDECLARED_AGENT_FIELDS = (
    "updated_at",
    "identifier",
    "provision_streak_type",
    "provision_streak_count",
)


class FaultKind(StrEnum):
    UNAVAILABLE = "unavailable"  # 503 with Retry-After
    SERVER_ERROR = "server_error"  # 500 with the framework's HTML page
    SLOW = "slow"  # the normal answer, after `delay` seconds; nothing is done if the client leaves
    LATE = "late"  # carried out after `delay` seconds even if the client has left, then answered
    MALFORMED = "malformed"  # 200 application/json whose body is not JSON
    CONFLICT = "conflict"  # 409 with Retry-After (MAAS's database serialisation conflict)
    ENDLESS = "endless"  # 200 application/json, chunked: a JSON list that never ends
    HUGE = "huge"  # 200 application/json: a JSON list of `size` bytes, with its Content-Length
    DEEP = "deep"  # 200 application/json: lists nested `depth` deep
    ECHO_HEADERS = "echo_headers"  # `status`, text/plain: the request line and headers, echoed
    BARE_AGENTS = "bare_agents"  # the normal answer, its agent records cut to the declared schema


@dataclass
class Fault:
    """What to break, for which requests, how many times.

    `path` is a substring of the request path ("" matches all); `method` None matches every
    method; `times` None hits every matching request for as long as the fault is installed.
    `ratio` is the fraction of matching requests the fault hits, drawn from a `random.Random(seed)`
    of its own so that a run repeats; only hits count against `times`. With `serial`, a SLOW or
    LATE fault carries matching requests out one at a time: each waits for the one before it to
    finish, then for its own `delay`. `size` is the length of a HUGE body in bytes, `depth` the
    nesting of a DEEP one, and `status` the status of an ECHO_HEADERS page.
    """

    kind: FaultKind
    service: str
    path: str = ""
    method: str | None = None
    times: int | None = 1
    retry_after: float | None = 1.0
    delay: float = 0.0
    serial: bool = False
    ratio: float = 1.0
    seed: int = 0
    size: int = 400 * 1024 * 1024
    depth: int = 200_000
    status: int = 400
    _draws: random.Random = field(init=False, repr=False, compare=False)
    _turns: asyncio.Lock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.service not in SERVICES:
            raise ValueError(f"service must be one of {SERVICES}, not {self.service!r}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1, or None for every request")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be above 0 and at most 1, not {self.ratio!r}")
        if self.serial and self.kind not in (FaultKind.SLOW, FaultKind.LATE):
            raise ValueError("only SLOW and LATE faults can be serial")
        if self.size < len(_HUGE_HEAD + _HUGE_TAIL) or self.depth < 1:
            raise ValueError("a HUGE body needs at least 3 bytes, a DEEP one a depth of 1")
        self._draws = random.Random(self.seed)  # noqa: S311 - a repeatable simulation, no secret
        self._turns = asyncio.Lock()

    def matches(self, service: str, method: str, path: str) -> bool:
        return (
            self.service == service
            and self.path in path
            and (self.method is None or self.method.upper() == method)
        )

    def hits(self) -> bool:
        """Whether the fault hits a matching request: always, or with probability `ratio`."""
        return self.ratio >= 1.0 or self._draws.random() < self.ratio

    def turn(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """What a delayed request holds while it is carried out: the fault's lock when serial."""
        return self._turns if self.serial else contextlib.nullcontext()


def service_of(path: str) -> str | None:
    """Which simulated service a path belongs to, by prefix."""
    if path.startswith("/MAAS"):
        return "maas"
    if path.startswith("/v1"):
        return "testflinger"
    return None


def route_key(request: web.Request) -> str:
    """The key a request is counted under: its method and route template, not concrete ids."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    # Testflinger tolerates a trailing slash on every route; count both spellings as one.
    if path.startswith("/v1/") and len(path) > len("/v1/") and path.endswith("/"):
        path = path[:-1]
    return f"{request.method} {path}"


_WERKZEUG_500 = (
    "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
    "<h1>Internal Server Error</h1>\n<p>The server encountered an internal error and was unable "
    "to complete your request. Either the server is overloaded or there is an error in the "
    "application.</p>\n"
)
_DJANGO_500 = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Server Error (500)</title>\n</head>\n'
    "<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n"
)
# Valid JSON cut off mid-way, as a dropped proxy connection leaves it.
_TRUNCATED = {
    "maas": '[{"system_id": "x7k2pq", "hostname": "rack-00-m000", "status_name": "Depl',
    "testflinger": '{"job_state": "provision", "setup_status": 0, "device_info": {"agent_',
}


async def fault_response(fault: Fault, request: web.Request) -> web.StreamResponse | None:
    """The answer a fault gives instead of the normal one; None when it only delays (SLOW, LATE)."""
    match fault.kind:
        case FaultKind.ENDLESS | FaultKind.HUGE:
            return await _stream_filler(fault, request)
        case FaultKind.DEEP:
            body = b"[" * fault.depth + b"]" * fault.depth
            return web.Response(body=body, content_type="application/json")
        case FaultKind.ECHO_HEADERS:
            return _echo_headers(fault.status, request)
        case _:
            return _canned_response(fault)


def _canned_response(fault: Fault) -> web.Response | None:
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = f"{fault.retry_after:g}"
    match fault.kind:
        case FaultKind.UNAVAILABLE:
            return web.Response(
                status=503, text="503 Service Unavailable: try again later\n", headers=headers
            )
        case FaultKind.CONFLICT:
            return web.Response(
                status=409,
                text="Conflict: the database could not serialise the transaction; retry.\n",
                headers=headers,
            )
        case FaultKind.SERVER_ERROR:
            page = _DJANGO_500 if fault.service == "maas" else _WERKZEUG_500
            return web.Response(status=500, text=page, content_type="text/html")
        case FaultKind.MALFORMED:
            return web.Response(text=_TRUNCATED[fault.service], content_type="application/json")
        case _:
            return None


async def _stream_filler(fault: Fault, request: web.Request) -> web.StreamResponse:
    """A JSON list of filler records: `fault.size` bytes for HUGE, without end for ENDLESS.

    It is written a block at a time, as fast as the client reads, until the client leaves.
    """
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    left: int | None = None
    if fault.kind is FaultKind.HUGE:
        response.content_length = fault.size
        left = fault.size - len(_HUGE_HEAD) - len(_HUGE_TAIL)
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await response.write(_HUGE_HEAD)
        while left is None or left >= len(_FILLER):
            await response.write(_FILLER)
            if left is not None:
                left -= len(_FILLER)
        await response.write(b" " * left + _HUGE_TAIL)  # JSON allows the padding
        await response.write_eof()
    except ConnectionError:
        pass  # the client stopped reading and left
    return response


def _echo_headers(status: int, request: web.Request) -> web.Response:
    """A debugging error page that shows the request back, its Authorization header included.

    Its headers are sorted by name, as framework debug pages list them, so that Authorization
    comes near the top: within the head of the page that a client quotes.
    """
    lines = [
        f"{status} {HTTPStatus(status).phrase}",
        "The server could not handle this request:",
        f"{request.method} {request.path_qs} HTTP/{request.version.major}.{request.version.minor}",
        *(f"{name}: {value}" for name, value in sorted(request.headers.items())),
    ]
    return web.Response(status=status, text="\n".join(lines) + "\n")


def _bare_agents(response: web.StreamResponse) -> web.StreamResponse:
    """The JSON answer with each agent record in it cut to the fields the schema declares."""
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return response
    if not isinstance(response.body, bytes):
        return response
    data = json.loads(response.body)
    records = data if isinstance(data, list) else [data]
    for record in (record for record in records if isinstance(record, dict)):
        for name in _UNDECLARED_AGENT_FIELDS:
            record.pop(name, None)
    return web.json_response(data, status=response.status)


async def _delayed(fault: Fault, request: web.Request, handler: Handler) -> web.StreamResponse:
    async with fault.turn():
        await asyncio.sleep(fault.delay)
        return await handler(request)


def lab_middleware(
    requests: Counter[str],
    faults: list[Fault],
    background: set[asyncio.Task[web.StreamResponse]],
) -> Middleware:
    """A middleware that counts every request in `requests` and applies the first fault to hit it.

    The lab's server cancels a handler whose client disconnects, so a LATE request is carried out
    in a task of its own, kept in `background` until it ends; the lab cancels what is left there
    when it stops.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        requests[route_key(request)] += 1
        service = service_of(request.path)
        fault = next(
            (
                f
                for f in faults
                if service and f.matches(service, request.method, request.path) and f.hits()
            ),
            None,
        )
        if fault is None:
            return await handler(request)
        if fault.times is not None:
            fault.times -= 1
            if fault.times == 0:
                faults.remove(fault)
        response = await fault_response(fault, request)
        if response is not None:
            return response
        if fault.kind is FaultKind.BARE_AGENTS:
            return _bare_agents(await handler(request))
        if fault.kind is not FaultKind.LATE:
            return await _delayed(fault, request, handler)
        # Read the body now: once the client has gone, the request can no longer read it.
        await request.read()
        task = asyncio.create_task(_delayed(fault, request, handler))
        background.add(task)
        task.add_done_callback(background.discard)
        return await asyncio.shield(task)

    return middleware
