"""Alerts: each rack cycle's health changes, announced to a Mattermost or Slack incoming webhook.

`ledger` queues one alert per rack cycle in the state file's outbox, in the same transaction as
the changes it announces. This module turns an alert into a message (`render`, pure) and sends
the outbox (`deliver_pending`), oldest first, marking an alert delivered only once the webhook
answered 2xx. Delivery is at least once: an alert is never dropped, and is sent twice only if
the process dies between the webhook's answer and the mark.

With no webhook configured nothing is sent: alerts stay in the outbox, undelivered.

The webhook URL carries its own token and is a secret: no message, log line or recorded error
names it or its path, which holds the token. That is why this module posts on its own rather
than through `clients._http.Http`, whose messages (and stamina's retry log lines) name the path.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import stamina
import structlog

from rackwatch.clients._http import (
    RETRYABLE_STATUSES,
    USER_AGENT,
    RetryPolicy,
    describe_client_error,
    excerpt,
    make_session,
    parse_retry_after,
)
from rackwatch.config import Settings
from rackwatch.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamResponseError,
    UpstreamUnavailable,
)
from rackwatch.model import utc_now
from rackwatch.store import Store

log = structlog.get_logger("rackwatch.alerts")

SERVICE = "webhook"
REQUEST_TIMEOUT_S = 10.0
# A failing webhook must never hold up the checks: the daemon gives each delivery run this long,
# run-once waits this long after its cycle, and what is left stays queued for the next run.
DAEMON_DELIVERY_TIMEOUT_S = 60.0
RUN_ONCE_DELIVERY_TIMEOUT_S = 30.0
DELIVERY_RETRY = RetryPolicy(attempts=3, timeout_s=30.0, wait_initial_s=1.0, wait_max_s=10.0)
# `rackwatch alerts test`: enough to tell a flaky webhook from a wrong one, without a long wait.
TEST_RETRY = RetryPolicy(attempts=2, timeout_s=10.0, wait_initial_s=0.5, wait_max_s=2.0)
# Mattermost cuts a message at 16,383 characters; a whole rack recovering at once must still fit.
MAX_LINES = 40
# Answers that say the webhook itself is unusable (a wrong or revoked URL, an archived channel),
# rather than refusing one message: no use trying the alerts behind.
_UNUSABLE_STATUSES = frozenset({401, 403, 404, 410})

_ICONS = {
    "unhealthy": "🔴",
    "recovered": "🟢",
    "incident_opened": "⚠️",
    "incident_closed": "✅",
    "drift": "🟡",
}


def render(body: Mapping[str, Any], *, testflinger_url: str | None) -> dict[str, Any]:
    """The webhook payload for one alert's body: Markdown `text`, plus the events as data.

    `text` reads the same in Mattermost and Slack: a summary line, then one line per event.
    Each event gains `url`, its job's page on Testflinger (None without a job or a URL).
    """
    rack = str(body.get("rack", ""))
    events = [_with_url(event, testflinger_url) for event in body.get("events", [])]
    lines = [f"rackwatch · {_escape(rack)}: {_summary(events)}"]
    lines += [_line(event) for event in events[:MAX_LINES]]
    if len(events) > MAX_LINES:
        more = len(events) - MAX_LINES
        lines.append(f"… and {more} more: see rackwatch status {_escape(rack)}")
    return {
        "text": "\n".join(lines),
        "rack": rack,
        "cycle_id": body.get("cycle_id"),
        "events": events,
    }


def job_url(testflinger_url: str | None, job_id: str | None) -> str | None:
    """The job's page in Testflinger's web UI; `testflinger_url` ends with "/" (config does that)."""
    if not testflinger_url or not job_id:
        return None
    return f"{testflinger_url}jobs/{job_id}"


def _with_url(event: Mapping[str, Any], testflinger_url: str | None) -> dict[str, Any]:
    fields = ("kind", "rack", "agent", "from", "to", "reason", "job_id")
    data = {name: event.get(name) for name in fields}
    data["url"] = job_url(testflinger_url, event.get("job_id"))
    return data


def _summary(events: list[dict[str, Any]]) -> str:
    kinds = Counter(str(event["kind"]) for event in events)
    parts = []
    if kinds["incident_opened"]:
        parts.append("rack incident opened")
    if kinds["unhealthy"]:
        parts.append(f"{_agents(kinds['unhealthy'])} unhealthy")
    if kinds["recovered"]:
        count = kinds["recovered"]
        parts.append(f"{count if kinds['unhealthy'] else _agents(count)} recovered")
    if kinds["incident_closed"]:
        parts.append("rack incident over")
    if kinds["drift"]:
        parts.append(f"{kinds['drift']} inventory problem{'s' if kinds['drift'] != 1 else ''}")
    others = len(events) - sum(kinds[kind] for kind in _ICONS)
    if others:
        parts.append(f"{others} other change{'s' if others != 1 else ''}")
    return ", ".join(parts) or "no changes"


def _agents(count: int) -> str:
    return f"{count} agent{'s' if count != 1 else ''}"


def _line(event: dict[str, Any]) -> str:
    kind = str(event["kind"])
    agent = _escape(str(event["agent"] or ""))
    reason = _escape(str(event["reason"] or ""))
    if kind == "unhealthy":
        text = f"{agent} unhealthy" + (f": {reason}" if reason else "")
    elif kind == "recovered":
        text = f"{agent} recovered"
    elif kind == "incident_opened":
        text = "rack incident opened" + (f": {reason}" if reason else "")
    elif kind == "incident_closed":
        text = "rack incident over"
    elif kind == "drift":
        text = f"{agent}: {reason}"
    else:  # an event kind of a later rackwatch, read from an outbox it left behind
        text = f"{agent or _escape(str(event['rack'] or ''))} {_escape(kind)}: {reason}"
    if event["url"]:
        text += f" — job {event['url']}"
    elif event["job_id"]:
        text += f" — job {_escape(str(event['job_id']))}"
    return f"{_ICONS.get(kind, '•')} {text}"


def _escape(text: str) -> str:
    """Keep Slack from reading <...> as a link or a mention; Mattermost shows the entities as text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


async def deliver_pending(
    store: Store,
    *,
    webhook_url: str,
    testflinger_url: str | None,
    session: aiohttp.ClientSession,
    retry: RetryPolicy = DELIVERY_RETRY,
    now: Callable[[], datetime] = utc_now,
) -> tuple[int, int]:
    """Send the outbox's undelivered alerts, oldest first; (delivered, failed).

    Each alert is retried on transient failures. When the webhook is down or unusable (no
    answer, 429, 5xx, 401/403/404/410) the run stops at that alert, so that the alerts stay in
    order for the next run. An alert the webhook refuses otherwise (400, 413, ...) is recorded
    as failed and skipped, so that one bad message cannot hold up the others; it is tried
    again on later runs. With no `webhook_url`, nothing is sent: (0, 0).
    """
    if not webhook_url:
        return 0, 0
    delivered = failed = 0
    for alert in store.pending_alerts():
        payload = render(alert.body, testflinger_url=testflinger_url)
        try:
            await post(session, webhook_url, payload, retry=retry)
        except UpstreamError as exc:
            failed += 1
            store.alert_failed(alert.id, str(exc))
            log.warning(
                "alert.failed",
                alert_id=alert.id,
                rack=alert.rack,
                cycle_id=alert.cycle_id,
                attempts=alert.attempts + 1,
                error=str(exc),
            )
            if isinstance(exc, UpstreamUnavailable) or exc.status in _UNUSABLE_STATUSES:
                break
            continue
        delivered += 1
        store.alert_delivered(alert.id, now())
        log.info(
            "alert.delivered",
            alert_id=alert.id,
            rack=alert.rack,
            cycle_id=alert.cycle_id,
            events=len(payload["events"]),
        )
    return delivered, failed


async def deliver_outbox(
    store: Store,
    settings: Settings,
    *,
    timeout_s: float,
    retry: RetryPolicy = DELIVERY_RETRY,
    now: Callable[[], datetime] = utc_now,
) -> tuple[int, int] | None:
    """`deliver_pending` on a session of its own, for at most `timeout_s`; never raises.

    None when no webhook is configured, the run timed out or failed; what was not delivered
    stays in the outbox for the next run.
    """
    webhook_url = settings.alerts.webhook_url.get_secret_value()
    if not webhook_url:
        return None
    try:
        async with asyncio.timeout(timeout_s), make_session() as session:
            return await deliver_pending(
                store,
                webhook_url=webhook_url,
                testflinger_url=settings.testflinger.url,
                session=session,
                retry=retry,
                now=now,
            )
    except TimeoutError:
        log.warning("alerts.delivery_timed_out", timeout_s=timeout_s)
    except Exception as exc:
        # Delivery must never take the checks down. No traceback: its frames could quote the URL.
        log.error(
            "alerts.delivery_crashed", error=_redact(f"{type(exc).__name__}: {exc}", webhook_url)
        )
    return None


async def send_test(
    webhook_url: str,
    session: aiohttp.ClientSession,
    *,
    retry: RetryPolicy = TEST_RETRY,
    hostname: str | None = None,
) -> None:
    """Post one test message naming this host. Raises UpstreamError if the webhook fails."""
    host = hostname or socket.gethostname()
    await post(
        session, webhook_url, {"text": f"rackwatch: test message from {_escape(host)}"}, retry=retry
    )


async def post(
    session: aiohttp.ClientSession,
    webhook_url: str,
    payload: Mapping[str, Any],
    *,
    retry: RetryPolicy,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> None:
    """POST `payload` as JSON, retried on transient failures; raises UpstreamError unless 2xx.

    Messages say "webhook POST" and never the URL.
    """
    retrying = stamina.retry_context(
        on=lambda exc: _backoff(exc, retry),
        attempts=retry.attempts,
        timeout=retry.timeout_s,
        wait_initial=retry.wait_initial_s,
        wait_max=retry.wait_max_s,
    )
    async for attempt in retrying:
        with attempt:
            await _post_once(session, webhook_url, payload, timeout_s)


async def _post_once(
    session: aiohttp.ClientSession,
    webhook_url: str,
    payload: Mapping[str, Any],
    timeout_s: float,
) -> None:
    try:
        async with session.post(
            webhook_url,
            json=payload,
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            # A redirect would turn the POST into a GET: better to say the URL needs fixing.
            allow_redirects=False,
        ) as response:
            body = await response.read()
            status = response.status
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
    except TimeoutError:
        raise UpstreamUnavailable(
            SERVICE, f"webhook POST: no answer within {timeout_s:g} s"
        ) from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(SERVICE, f"webhook POST: {describe_client_error(exc)}") from None
    if 200 <= status < 300:
        return
    said = _redact(excerpt(body), webhook_url)
    if status in (401, 403):
        raise UpstreamAuthError(SERVICE, f"webhook POST refused ({status}): {said}", status=status)
    message = f"webhook POST answered {status}: {said}"
    if status in RETRYABLE_STATUSES:
        raise UpstreamUnavailable(SERVICE, message, status=status, retry_after=retry_after)
    raise UpstreamResponseError(SERVICE, message, status=status)


def _backoff(exc: Exception, retry: RetryPolicy) -> bool | float:
    if not isinstance(exc, UpstreamUnavailable):
        return False
    if exc.retry_after is not None:
        return min(exc.retry_after, retry.wait_max_s)
    return True


def _redact(text: str, webhook_url: str) -> str:
    """`text` without the URL, its path (the token) or its query, should a server echo them."""
    parts = urlsplit(webhook_url)
    for secret in (webhook_url, parts.path if len(parts.path) > 1 else "", parts.query):
        if secret:
            text = text.replace(secret, "***")
    return text
