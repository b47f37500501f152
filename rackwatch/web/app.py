"""The pages as an aiohttp application: the routes, the handlers that read the state file for
each request, and the Jinja2 templates (autoescaped) that lay out what `views` and `charts` make
of it.

    /                    the lab: each rack a grid of its agents, coloured by health;
                         ?rack=NAME (again for more) and ?person=1 filter it
    /racks/<rack>        one rack: its agents with pass rate and provisioning time
    /agents/<agent>      one agent: health, since when and why, its checks, two pictures
    /api/status          the JSON of `rackwatch status --json`
    /api/agents/<agent>  the JSON of `rackwatch history AGENT --json` (?limit=N, default 20)
    /static/...          the style sheet and the script that keeps the scroll position

Only GET and HEAD are served: another method on a route is answered 405 with Allow, and any
other path 404. Every page reads the state file within one read transaction and writes
nothing. May import: aiohttp, jinja2, `status`, `render`, `store`, `config`, `silences`,
`health`, `model`, `errors` and the package's `views` and `charts`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

from rackwatch import silences
from rackwatch.config import Settings, StateSettings
from rackwatch.errors import StoreError, UsageError
from rackwatch.model import UNKNOWN, utc_now
from rackwatch.render.history import history_json
from rackwatch.render.status import status_json
from rackwatch.render.table import utc
from rackwatch.status import RackStatus, build_status, needing_a_person
from rackwatch.store import Store
from rackwatch.store import exists as store_exists
from rackwatch.web import charts, views

log = structlog.get_logger("rackwatch.web")

REFRESH_S = 30  # how often a page reloads itself
HISTORY_LIMIT = 20  # /api/agents/<agent>, as history's --limit
MAX_LIMIT = 10_000

Configured = Callable[[], Settings | StateSettings]

_ENV = Environment(
    loader=PackageLoader("rackwatch.web", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_STATIC = {
    "rackwatch.css": "text/css",
    "refresh.js": "text/javascript",
}
# No script, style or picture from anywhere but here, and none written into the page: should an
# upstream text ever slip past the escaping, it still could not run.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self';"
        " form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class StateSource:
    """Where the pages read the state file: through the daemon's Store, held open, or else by
    opening the file read-only for each page (also a copy, also while a daemon writes it)."""

    path: Path
    store: Store | None = None

    @contextmanager
    def open(self) -> Iterator[Store | None]:
        """The Store inside one read transaction; None when there is no state file yet."""
        if self.store is not None:
            with self.store.reading():
                yield self.store
            return
        if not store_exists(self.path):
            yield None
            return
        with Store.open_readonly(self.path) as store, store.reading():
            yield store

    def version(self) -> tuple[int, ...]:
        """What changes whenever the file does: every commit writes its -wal file, and every
        checkpoint the file itself."""
        found: list[int] = []
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                stat = path.stat()
            except OSError:
                found += [0, 0, 0]
            else:
                found += [stat.st_ino, stat.st_size, stat.st_mtime_ns]
        return tuple(found)


class _RecentStatus:
    """The status read-model as last read, kept until the state file changes or it is
    `max_age_s` old: reading it takes about 150 ms of CPU for 2,000 agents, and several people
    may look at the lab at once. Within that age a silence that ends, or a rack that falls
    due, shows late; the ages on the pages are computed from the time of each page."""

    def __init__(self, max_age_s: float, entries: int = 8) -> None:
        self._max_age_s = max_age_s
        self._entries = entries
        self._kept: dict[tuple[Any, ...], tuple[float, list[RackStatus]]] = {}

    def get(self, key: tuple[Any, ...], read: Callable[[], list[RackStatus]]) -> list[RackStatus]:
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is not None and now - kept[0] < self._max_age_s:
            return kept[1]
        racks = read()
        self._kept = {k: v for k, v in self._kept.items() if now - v[0] < self._max_age_s}
        if len(self._kept) >= self._entries:
            self._kept.pop(next(iter(self._kept)))
        self._kept[key] = (now, racks)
        return racks


def add_pages(
    app: web.Application,
    source: StateSource,
    configured: Configured,
    *,
    refresh_s: float = REFRESH_S,
) -> web.Application:
    """Add the pages, /api and /static to `app` (the daemon's has /metrics and /healthz); the
    pages reload themselves every `refresh_s` seconds."""
    pages = _Pages(source, configured, refresh_s)
    app.router.add_get("/", pages.lab)
    app.router.add_get("/racks/{rack}", pages.rack)
    app.router.add_get("/agents/{agent:.+}", pages.agent)
    app.router.add_get("/api/status", pages.api_status)
    app.router.add_get("/api/agents/{agent:.+}", pages.api_agent)
    for name, content_type in _STATIC.items():
        app.router.add_get(f"/static/{name}", _static(name, content_type))
    app.middlewares.append(_error_pages)
    app.on_response_prepare.append(_add_headers)
    return app


def pages_app(
    source: StateSource, configured: Configured, *, refresh_s: float = REFRESH_S
) -> web.Application:
    return add_pages(web.Application(), source, configured, refresh_s=refresh_s)


class _Pages:
    def __init__(self, source: StateSource, configured: Configured, refresh_s: float) -> None:
        self._source = source
        self._read = source.open
        self._configured = configured
        self._refresh_s = refresh_s
        self._recent = _RecentStatus(max_age_s=REFRESH_S)
        self._status_json: tuple[list[RackStatus], str] | None = None

    def _statuses(
        self, store: Store | None, now: datetime, named: Sequence[str] = ()
    ) -> list[RackStatus]:
        settings = self._configured()

        def read() -> list[RackStatus]:
            try:
                return build_status(store, settings.racks, settings.schedule, now, named=named)
            except UsageError as exc:
                raise _not_found(str(exc)) from None

        key = (self._source.version(), tuple(settings.racks), settings.schedule, tuple(named))
        return self._recent.get(key, read)

    async def lab(self, request: web.Request) -> web.Response:
        chosen = [rack for rack in request.query.getall("rack", []) if rack]
        person = request.query.get("person") == "1"
        now = utc_now()
        with self._read() as store:
            racks = self._statuses(store, now, chosen)
            known = list(self._configured().racks)
            known += [rack for rack in (store.racks() if store else []) if rack not in known]
            boxes = [views.rack_box(status, now) for status in racks]
            summary = views.lab_summary(racks, boxes)
            if person:
                boxes = [views.rack_box(status, now) for status in needing_a_person(racks)]
        notice = None
        if store is None:
            notice = f"no checks recorded yet: {self._configured().state_file} does not exist"
        empty = "nothing needs a person" if person else "no racks: none configured, none recorded"
        return self._page(
            "lab.html",
            now,
            boxes=boxes,
            summary=summary,
            rack_names=known,
            chosen=chosen,
            person=person,
            notice=notice,
            empty=empty,
        )

    async def rack(self, request: web.Request) -> web.Response:
        name = request.match_info["rack"]
        now = utc_now()
        with self._read() as store:
            [status] = self._statuses(store, now, [name])
        rows = [views.machine_row(status, state, now) for state in status.agents]
        longest = max((row.provision_s for row in rows if row.provision_s), default=0.0)
        return self._page(
            "rack.html",
            now,
            header=views.rack_header(status, now),
            rows=rows,
            longest=longest,
        )

    async def agent(self, request: web.Request) -> web.Response:
        agent = request.match_info["agent"]
        now = utc_now()
        web_base = self._configured().testflinger.web_base
        with self._read() as store:
            checks = store.history(agent, limit=views.CHART_CHECKS) if store else []
            if not checks or store is None:
                raise _not_found(f"no checks of agent {agent!r} recorded")
            latest = checks[0]
            _, known = store.health(latest.rack).get(agent, (latest.rack, UNKNOWN))
            silence = silences.covering(
                store.silences_in_force(now), agent=agent, rack=latest.rack, at=now
            )
            trend = store.trends([agent]).get(agent)
            made_unhealthy = store.checks_of_jobs({known.job_id} if known.job_id else set())
        unhealthy_check = made_unhealthy.get(known.job_id or "")
        summary = views.agent_summary(
            agent,
            latest,
            known,
            silence=silence,
            maas_status=trend.maas_status if trend else None,
            unhealthy_log=unhealthy_check.provision_log if unhealthy_check else None,
            now=now,
            web_base=web_base,
        )
        return self._page(
            "agent.html",
            now,
            summary=summary,
            strip=charts.outcome_strip(checks),
            chart=charts.duration_chart(checks),
            rows=views.check_rows(checks[: views.TABLE_CHECKS], web_base),
            shown=min(len(checks), views.TABLE_CHECKS),
        )

    def _page(self, template: str, now: datetime, **context: Any) -> web.Response:
        html = _ENV.get_template(template).render(
            now=utc(now), refresh_s=self._refresh_s, **context
        )
        return web.Response(text=html, content_type="text/html")

    async def api_status(self, request: web.Request) -> web.Response:
        with self._read() as store:
            racks = self._statuses(store, utc_now())
        # The JSON is the racks' alone: made again only for racks read again.
        if self._status_json is None or self._status_json[0] is not racks:
            self._status_json = (racks, status_json(racks) + "\n")
        return web.Response(text=self._status_json[1], content_type="application/json")

    async def api_agent(self, request: web.Request) -> web.Response:
        agent = request.match_info["agent"]
        limit = _limit(request.query.get("limit"))
        with self._read() as store:
            checks = store.history(agent, limit=limit) if store else []
            if not checks or store is None:
                raise _not_found(f"no checks of agent {agent!r} recorded")
            days = store.days(agent)
            now = utc_now()
            in_force = store.silences_in_force(now)
        # Silenced as an agent of the rack of its latest check, as `history` says it.
        silence = silences.covering(in_force, agent=agent, rack=checks[0].rack, at=now)
        web_base = self._configured().testflinger.web_base
        text = history_json(agent, checks, web_base=web_base, silence=silence, days=days)
        return web.Response(text=text + "\n", content_type="application/json")


def _limit(text: str | None) -> int:
    if text is None:
        return HISTORY_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise web.HTTPBadRequest(text=f"limit must be a whole number from 1 to {MAX_LIMIT}\n")
    return int(text)


def _not_found(reason: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(reason="Not Found", text=reason)


def _static(name: str, content_type: str) -> Callable[[web.Request], Any]:
    body = files("rackwatch.web").joinpath("static", name).read_bytes()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(
            body=body, content_type=content_type, headers={"Cache-Control": "max-age=3600"}
        )

    return serve


@web.middleware
async def _error_pages(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """404, 405 and an unreadable state file as a page (as JSON under /api/)."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status not in (400, 404, 405):
            raise
        status, reason, headers = exc.status, exc.text or exc.reason, exc.headers
    except StoreError as exc:
        log.error("web.read_failed", path=request.path, error=str(exc))
        status, reason, headers = 503, f"cannot read the state file: {exc}", None
    if status == 405:
        reason = f"{request.method} is not served here: the pages are read-only"
    response = _error_response(request.path, status, reason.strip())
    if headers is not None and "Allow" in headers:
        response.headers["Allow"] = headers["Allow"]
    return response


def _error_response(path: str, status: int, reason: str) -> web.Response:
    """The error as JSON under /api/, else as a page."""
    if path.startswith("/api/"):
        body = json.dumps({"error": reason})
        return web.Response(status=status, text=body + "\n", content_type="application/json")
    html = _ENV.get_template("error.html").render(
        now=utc(utc_now()), refresh_s=0, status=status, reason=reason
    )
    return web.Response(status=status, text=html, content_type="text/html")


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
