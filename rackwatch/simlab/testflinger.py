"""The simulated lab's Testflinger server: /v1 agents, jobs, job search, results, cancel and login.

Errors come in the real server's three shapes: schema validation (422, {"message": "Validation
error", "detail": {"json": {field: [messages]}}}, or "query" for a query string), explicit aborts
({"message": ..., "detail": {}}) and plain text served as text/html; `schema` validates bodies. With
a `testflinger_login` in the lab's `Accounts` the server is "locked down": every endpoint but
GET /v1/ and the oauth2 ones wants `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from rackwatch.simlab.agents import AgentFleet
from rackwatch.simlab.schema import AGENT_FIELDS, JOB_FIELDS, Check, one_of, string, validate
from rackwatch.simlab.state import Accounts, SimJob, iso_time

READERS = ("admin", "manager", "contributor")
EVERYONE = ("admin", "manager", "contributor", "agent")
AGENT_WRITERS = ("admin", "manager", "agent")
# Fields the queue's agent listing keeps (its output schema is applied, unlike /agents/data).
_QUEUE_AGENT_FIELDS = frozenset(
    {"name", "state", "queues", "location", "provision_type", "job_id", "comment", "restricted_to"}
)
# The states GET /v1/job/search accepts: not "waiting", "running" nor "complete", which jobs have.
_SEARCH_STATES = (
    "setup",
    "provision",
    "firmware_update",
    "test",
    "allocate",
    "allocated",
    "reserve",
    "cleanup",
    "cancelled",
    "completed",
    "active",
)


def _abort(status: int, message: str) -> web.Response:
    return web.json_response({"message": message, "detail": {}}, status=status)


def _invalid(errors: dict[str, Any], location: str = "json") -> web.Response:
    return web.json_response(
        {"message": "Validation error", "detail": {location: errors}}, status=422
    )


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html")


def _agent_name(request: web.Request) -> str:
    """The agent name of the path's segment, decoded: "?", "#", "%", tabs and newlines included.

    The real server routes on the decoded path, where an escaped "/" splits the segment in two
    and no route matches, before any check of the caller: such a name is never served, nor
    stored by an agent's post (a record that the lab adds directly is listed all the same, as one
    written around the API would be).
    """
    name = request.match_info["agent_name"]
    if "/" in name:
        raise web.HTTPNotFound
    return name


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _valid_body(
    request: web.Request, fields: dict[str, Check], required: tuple[str, ...] = ()
) -> tuple[Any, web.Response | None]:
    """The body as the server sees it (ignored unless the request says it is JSON), checked
    against the schema `fields`; or the answer to a body that is not JSON or not valid."""
    if request.content_type != "application/json":
        body: Any = {}
    else:
        try:
            body = await request.json()
        except ValueError:
            return None, _abort(400, "Bad Request")
    errors = validate(body, fields, required)
    return (None, _invalid(errors)) if errors else (body, None)


@web.middleware
async def flask_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer unknown /v1 routes and wrong methods in the shapes the Flask server uses."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        if not request.path.startswith("/v1"):
            raise
        return _abort(405, "Method Not Allowed")
    except web.HTTPNotFound:
        if not request.path.startswith("/v1"):
            raise
        return _plain(404, f"Not found: {request.url}")


class TestflingerApi:
    """The Testflinger routes, over a lab's agents and jobs (`fleet`) and logins (`accounts`)."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, fleet: AgentFleet, accounts: Accounts) -> None:
        self._fleet = fleet
        self._accounts = accounts
        self._signing_key = secrets.token_bytes(32)

    def register(self, router: web.UrlDispatcher) -> None:
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.Response]]]] = [
            ("GET", "/v1/", self.root),
            ("POST", "/v1/oauth2/token", self.token),
            ("POST", "/v1/oauth2/refresh", self.refresh),
            ("GET", "/v1/agents/data", self.agents),
            ("GET", "/v1/agents/data/{agent_name}", self.agent),
            ("POST", "/v1/agents/data/{agent_name}", self.update_agent),
            ("GET", "/v1/queues/{queue}/agents", self.queue_agents),
            ("POST", "/v1/job", self.submit),
            # Before /v1/job/{job_id}, which would otherwise take "search" for a job id.
            ("GET", "/v1/job/search", self.search),
            ("GET", "/v1/job/{job_id}", self.job),
            ("GET", "/v1/result/{job_id}", self.result),
            ("POST", "/v1/job/{job_id}/action", self.action),
        ]
        for method, path, handler in routes:
            router.add_route(method, path, handler)
            if not path.endswith("/"):
                router.add_route(method, path + "/", handler)  # strict slashes are off

    # -- authentication -------------------------------------------------------------------------

    def _authorise(self, request: web.Request, roles: tuple[str, ...]) -> web.Response | None:
        """None when the caller may use an endpoint open to `roles`."""
        accounts = self._accounts
        header = request.headers.get("Authorization")
        if header is None:
            if accounts.testflinger_login is not None:
                return _abort(401, "Authentication is required for specified endpoint")
            role = "contributor"  # anonymous callers count as contributors
        elif not header.startswith("Bearer "):
            role = ""  # a raw token counts as no role at all
        else:
            issued = accounts.tokens.get(header.removeprefix("Bearer "))
            if issued is None:
                return _abort(403, "Unable to decode token")
            if time.monotonic() - issued > accounts.token_lifetime:
                return _abort(401, "Token has expired")
            role = accounts.testflinger_role
        if role in roles:
            return None
        return _abort(403, f"Specified action requires role: {', '.join(roles)}")

    def _access_token(self, client_id: str) -> dict[str, Any]:
        accounts = self._accounts
        now = time.time()
        claims = {
            "exp": int(now + accounts.token_lifetime),
            "iat": int(now),
            "jti": secrets.token_hex(8),
            "sub": "access_token",
            "permissions": {
                "client_id": client_id,
                "role": accounts.testflinger_role,
                "max_priority": {},
                "allowed_queues": [],
                "max_reservation_time": {},
            },
        }
        token = _jwt(claims, self._signing_key)
        accounts.tokens[token] = time.monotonic()
        lifetime = accounts.token_lifetime
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(lifetime) if float(lifetime).is_integer() else lifetime,
        }

    async def token(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization")
        if not header:
            return _plain(401, "No authorization header specified")
        credentials = _basic_credentials(header)
        if credentials is None:
            return _plain(401, "Client id and key must be specified in authorization header")
        client_id, secret = credentials
        login = self._accounts.testflinger_login
        if login is None or not (
            client_id == login[0] and hmac.compare_digest(secret.encode(), login[1].encode())
        ):
            return _plain(401, "Invalid client id or client key")
        self._accounts.logins += 1
        refresh_token = secrets.token_hex(32)
        self._accounts.refresh_tokens.add(refresh_token)
        return web.json_response({**self._access_token(client_id), "refresh_token": refresh_token})

    async def refresh(self, request: web.Request) -> web.Response:
        body, error = await _valid_body(request, {"refresh_token": string}, ("refresh_token",))
        if error is not None:
            return error
        if body["refresh_token"] not in self._accounts.refresh_tokens:
            return _abort(400, "Invalid refresh token.")
        login = self._accounts.testflinger_login
        return web.json_response(self._access_token(login[0] if login else ""))

    # -- agents ---------------------------------------------------------------------------------

    async def root(self, _request: web.Request) -> web.Response:
        return _plain(200, "Testflinger Server")

    async def agents(self, request: web.Request) -> web.Response:
        if (denied := self._authorise(request, READERS)) is not None:
            return denied
        return web.json_response([agent.record() for agent in self._fleet.agents.values()])

    async def agent(self, request: web.Request) -> web.Response:
        name = _agent_name(request)
        if (denied := self._authorise(request, EVERYONE)) is not None:
            return denied
        agent = self._fleet.agents.get(name)
        if agent is None:
            return web.json_response({}, status=404)
        return web.json_response(agent.record())

    async def update_agent(self, request: web.Request) -> web.Response:
        """What an agent (or an admin setting an agent offline) posts about an agent."""
        fleet, name = self._fleet, _agent_name(request)
        if (denied := self._authorise(request, AGENT_WRITERS)) is not None:
            return denied
        body, error = await _valid_body(request, AGENT_FIELDS)
        if error is not None:
            return error
        if name not in fleet.agents:
            fleet.add_agent(name, queues=body.get("queues", []), location=body.get("location", ""))
        agent = fleet.agent(name)
        if "queues" in body:
            fleet.set_queues(name, body["queues"])
        if "location" in body:
            agent.location = body["location"]
        if "job_id" in body:
            agent.job_id = body["job_id"]
        if "identifier" in body:
            agent.identifier = body["identifier"]
        if "provision_type" in body:
            agent.provision_type = body["provision_type"]
        if "state" in body or "comment" in body:
            fleet.set_agent_state(name, body.get("state", agent.state), body.get("comment", ""))
        fleet.touch(agent)
        response = web.json_response({"status": "OK"})
        response.set_cookie("agent_name", name)
        return response

    async def queue_agents(self, request: web.Request) -> web.Response:
        if (denied := self._authorise(request, READERS)) is not None:
            return denied
        queue = request.match_info["queue"]
        agents = self._fleet.agents_serving(queue)
        if not agents:
            return _abort(404, f"Queue '{queue}' does not exist.")
        return web.json_response(
            [
                {k: v for k, v in agent.record().items() if k in _QUEUE_AGENT_FIELDS}
                for agent in agents
            ]
        )

    # -- jobs -----------------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        if (denied := self._authorise(request, READERS)) is not None:
            return denied
        body, error = await _valid_body(request, JOB_FIELDS, ("job_queue",))
        if error is not None:
            return error
        job_id = body.get("job_id")
        if job_id is not None and not _is_uuid(job_id):
            return _abort(400, "Invalid job_id specified")
        queue, priority = body["job_queue"], body.get("job_priority", 0)
        if priority > 0:
            if "Authorization" not in request.headers:
                return _abort(401, f"Authentication required for setting priority: {priority}")
            return _abort(
                403, f"Not enough permissions to push to {queue} with priority {priority}"
            )
        excluded = body.get("exclude_agents") or []
        if excluded and all(a.name in excluded for a in self._fleet.agents_serving(queue)):
            return _abort(
                422, "There are no agents on the specified queue that are allowed to run this job"
            )
        return web.json_response({"job_id": self._fleet.submit_job(body, job_id)})

    async def search(self, request: web.Request) -> web.Response:
        """Jobs by tags (`match` any or all) and states, as {job_id, created_at, job_state}."""
        if (denied := self._authorise(request, READERS)) is not None:
            return denied
        tags, states = request.query.getall("tags", []), request.query.getall("state", [])
        match = request.query.get("match", "any")
        errors: dict[str, Any] = {}
        if (problem := one_of("any", "all")(match)) is not None:
            errors["match"] = problem
        for state in states:
            if (problem := one_of(*_SEARCH_STATES)(state)) is not None:
                errors["state"] = problem
        if errors:
            return _invalid(errors, "query")
        jobs = self._fleet.search_jobs(tags, every_tag=match == "all", states=states)
        return web.json_response(
            [
                {
                    "job_id": job.job_id,
                    "created_at": iso_time(job.created_at),
                    "job_state": job.state,
                }
                for job in jobs
            ]
        )

    def _stored_job(self, request: web.Request, roles: tuple[str, ...]) -> SimJob | web.Response:
        """The job the path names, or the answer when the caller may not look or there is none."""
        if (denied := self._authorise(request, roles)) is not None:
            return denied
        job_id = request.match_info["job_id"]
        if not _is_uuid(job_id):
            return _abort(400, "Invalid job_id specified")
        job = self._fleet.job(job_id)
        if job is None:
            return web.Response(status=204, content_type="application/json")
        return job

    async def job(self, request: web.Request) -> web.Response:
        """The job as it was submitted, with its job_id; no state."""
        job = self._stored_job(request, READERS)
        if isinstance(job, web.Response):
            return job
        return web.json_response({"exclude_agents": [], **job.body, "job_id": job.job_id})

    async def result(self, request: web.Request) -> web.Response:
        job = self._stored_job(request, EVERYONE)
        if isinstance(job, web.Response):
            return job
        return web.json_response(job.result())

    async def action(self, request: web.Request) -> web.Response:
        if (denied := self._authorise(request, READERS)) is not None:
            return denied
        _, error = await _valid_body(request, {"action": one_of("cancel")}, ("action",))
        if error is not None:
            return error
        job_id = request.match_info["job_id"]
        if not _is_uuid(job_id):
            return _plain(400, "Invalid job id\n")
        if not self._fleet.cancel_job(job_id):
            return _plain(400, "The job is already completed or cancelled")
        return _plain(200, "OK")


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """(client_id, secret) from an HTTP Basic Authorization header, None if it is not one."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    return (client_id, secret) if colon else None


def _jwt(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 JSON Web Token, shaped like the ones the real server issues."""

    def encode(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signed = ".".join(
        encode(json.dumps(part, separators=(",", ":")).encode())
        for part in ({"alg": "HS256", "typ": "JWT"}, claims)
    )
    signature = hmac.new(key, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{encode(signature)}"
