"""Alerts: each rack cycle's health changes, announced to a Mattermost or Slack incoming webhook.

`ledger` queues one alert per rack cycle in the state file's outbox, in the same transaction as
the changes it announces. This module turns an alert into a message (`render`, pure) and sends
the outbox (`deliver_pending`), oldest first, marking an alert delivered only once the webhook
answered 2xx. Delivery is at least once: an alert is never dropped, and is sent twice only if
the process dies between the webhook's answer and the mark.

With no webhook configured nothing is sent: alerts stay in the outbox, undelivered.

The webhook URL carries its own token and is a secret: no message, log line or recorded error
names it or its path, which holds the token (`rackwatch.clients.WebhookClient` sees to that).

Text from upstream (agent and rack names, reasons, provision log lines) is shown as plain text
in the message (`_escape`): it cannot mention anyone, make a link or an image, or split a line.
The links rackwatch adds itself, to its jobs' pages, stay links.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import datetime
from typing import Any

import aiohttp
import structlog

from rackwatch.clients import RetryPolicy, WebhookClient, make_session
from rackwatch.config import AlertsSettings, job_url
from rackwatch.errors import UpstreamError, UpstreamUnavailable
from rackwatch.model import Alert, AlertEvent, EventKind, utc_now
from rackwatch.safe_text import visible
from rackwatch.store import Store

log = structlog.get_logger("rackwatch.alerts")

# A failing webhook must never hold up the checks: the daemon gives each delivery run this long,
# run-once waits this long after its cycle, and what is left stays queued for the next run.
DAEMON_DELIVERY_TIMEOUT_S = 60.0
RUN_ONCE_DELIVERY_TIMEOUT_S = 30.0
# Mattermost cuts a message at 16,383 characters; a whole rack recovering at once must still fit.
MAX_LINES = 40
# Answers that say the webhook itself is unusable (a wrong or revoked URL, an archived channel),
# rather than refusing one message: no use trying the alerts behind.
_UNUSABLE_STATUSES = frozenset({401, 403, 404, 410})
# Markdown's link and image brackets ([x](y), ![x](y), [x][y]), and the backslash that escapes.
_MARKDOWN = re.compile(r"([\\\[\]])")
# An "@" that begins a mention: @channel, @here, @all, @alice.
_MENTION = re.compile(r"@(?=\w)")
ZERO_WIDTH_JOINER = "\u200d"

_ICONS: dict[str, str] = {
    EventKind.UNHEALTHY: "🔴",
    EventKind.RECOVERED: "🟢",
    EventKind.INCIDENT_OPENED: "⚠️",
    EventKind.INCIDENT_CLOSED: "✅",
    EventKind.DRIFT: "🟡",
}


def render(alert: Alert, *, testflinger_url: str | None) -> dict[str, Any]:
    """The webhook payload for one alert: Markdown `text`, plus the events as data.

    `text` reads the same in Mattermost and Slack: a summary line, then one line per event.
    Each event gains `url`, its job's page in Testflinger's web UI under `testflinger_url`
    (`TestflingerLinks.web_base`; None without a job or a URL).
    """
    rack = _escape(alert.rack)
    lines = [f"rackwatch · {rack}: {_summary(alert.events)}"]
    lines += [_line(event, testflinger_url) for event in alert.events[:MAX_LINES]]
    if len(alert.events) > MAX_LINES:
        lines.append(f"… and {len(alert.events) - MAX_LINES} more: see rackwatch status {rack}")
    return {
        "text": "\n".join(lines),
        "rack": alert.rack,
        "cycle_id": alert.cycle_id,
        "events": [
            {**event.to_json(), "url": job_url(testflinger_url, event.job_id)}
            for event in alert.events
        ],
    }


def _summary(events: Sequence[AlertEvent]) -> str:
    kinds = Counter(str(event.kind) for event in events)
    parts = []
    if kinds[EventKind.INCIDENT_OPENED]:
        parts.append("rack incident opened")
    if kinds[EventKind.UNHEALTHY]:
        parts.append(f"{_agents(kinds[EventKind.UNHEALTHY])} unhealthy")
    if recovered := kinds[EventKind.RECOVERED]:
        parts.append(f"{recovered if kinds[EventKind.UNHEALTHY] else _agents(recovered)} recovered")
    if kinds[EventKind.INCIDENT_CLOSED]:
        parts.append("rack incident over")
    if drift := kinds[EventKind.DRIFT]:
        parts.append(f"{drift} inventory problem{'s' if drift != 1 else ''}")
    others = len(events) - sum(kinds[kind] for kind in EventKind)
    if others:
        parts.append(f"{others} other change{'s' if others != 1 else ''}")
    return ", ".join(parts) or "no changes"


def _agents(count: int) -> str:
    return f"{count} agent{'s' if count != 1 else ''}"


def _line(event: AlertEvent, testflinger_url: str | None) -> str:
    agent = _escape(event.agent or "")
    reason = _escape(event.reason)
    match event.kind:
        case EventKind.UNHEALTHY:
            text = f"{agent} unhealthy" + (f": {reason}" if reason else "")
            if event.error_line:
                text += f": {_escape(event.error_line)}"
        case EventKind.RECOVERED:
            text = f"{agent} recovered"
        case EventKind.INCIDENT_OPENED:
            text = "rack incident opened" + (f": {reason}" if reason else "")
        case EventKind.INCIDENT_CLOSED:
            text = "rack incident over"
        case EventKind.DRIFT:
            text = f"{agent}: {reason}"
        case _:  # an event kind of a later rackwatch, read from an outbox it left behind
            text = f"{agent or _escape(event.rack)} {_escape(str(event.kind))}: {reason}"
    if url := job_url(testflinger_url, event.job_id):
        text += f" — job {url}"
    elif event.job_id:
        text += f" — job {_escape(event.job_id)}"
    return f"{_ICONS.get(event.kind, '•')} {text}"


def _escape(text: str) -> str:
    """Upstream text as plain text in Mattermost and Slack, on one line.

    `&`, `<` and `>` become entities, so that Slack reads no `<url|text>` link or `<!channel>`
    mention (Mattermost shows the entities as text); `[`, `]` and `\\` are escaped with a
    backslash, so that Mattermost reads no Markdown link or image; an `@` that would begin a
    mention is followed by a zero-width joiner; control characters show as escapes (`\\n`).
    """
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MENTION.sub("@" + ZERO_WIDTH_JOINER, _MARKDOWN.sub(r"\\\1", text))
    return visible(text)


async def deliver_pending(
    store: Store,
    webhook: WebhookClient,
    *,
    testflinger_url: str | None,
    now: Callable[[], datetime] = utc_now,
) -> tuple[int, int]:
    """Send the outbox's undelivered alerts, oldest first; (delivered, failed).

    Each alert is retried on transient failures. When the webhook is down or unusable (no
    answer, 429, 5xx, 401/403/404/410) the run stops at that alert, so that the alerts stay in
    order for the next run. An alert the webhook refuses otherwise (400, 413, ...) is recorded
    as failed and skipped, so that one bad message cannot hold up the others; it is tried
    again on later runs. With no webhook configured, nothing is sent: (0, 0).
    """
    if not webhook.is_configured:
        return 0, 0
    delivered = failed = 0
    for record in store.pending_alerts():
        alert = Alert.from_json(record.body)
        try:
            await webhook.post(render(alert, testflinger_url=testflinger_url))
        except UpstreamError as exc:
            failed += 1
            store.alert_failed(record.id, str(exc))
            log.warning(
                "alert.failed",
                alert_id=record.id,
                rack=record.rack,
                cycle_id=record.cycle_id,
                attempts=record.attempts + 1,
                error=str(exc),
            )
            if isinstance(exc, UpstreamUnavailable) or exc.status in _UNUSABLE_STATUSES:
                break
            continue
        delivered += 1
        store.alert_delivered(record.id, now())
        log.info(
            "alert.delivered",
            alert_id=record.id,
            rack=record.rack,
            cycle_id=record.cycle_id,
            events=len(alert.events),
        )
    return delivered, failed


async def deliver_outbox(
    store: Store,
    settings: AlertsSettings,
    *,
    testflinger_url: str | None,
    timeout_s: float,
    session: aiohttp.ClientSession | None = None,
    retry: RetryPolicy = RetryPolicy.DELIVERY,
    now: Callable[[], datetime] = utc_now,
) -> tuple[int, int] | None:
    """`deliver_pending` for at most `timeout_s`, on `session` or one of its own; never raises.

    None when no webhook is configured, the run timed out or failed; what was not delivered
    stays in the outbox for the next run.
    """
    if not settings.webhook_url.get_secret_value():
        return None
    async with _session_or_own(session) as open_session:
        webhook = WebhookClient(settings, open_session, retry)
        try:
            async with asyncio.timeout(timeout_s):
                return await deliver_pending(
                    store, webhook, testflinger_url=testflinger_url, now=now
                )
        except TimeoutError:
            log.warning("alerts.delivery_timed_out", timeout_s=timeout_s)
        except Exception as exc:
            # Delivery must never take the checks down.
            # No traceback: its frames could quote the URL.
            log.error(
                "alerts.delivery_crashed", error=webhook.redact(f"{type(exc).__name__}: {exc}")
            )
    return None


def _session_or_own(
    session: aiohttp.ClientSession | None,
) -> AbstractAsyncContextManager[aiohttp.ClientSession]:
    """`session` as it is, or a session of its own that closes after use."""
    return nullcontext(session) if session is not None else make_session()


async def send_test(
    settings: AlertsSettings,
    session: aiohttp.ClientSession,
    *,
    retry: RetryPolicy = RetryPolicy.PROBE,
    hostname: str | None = None,
) -> None:
    """Post one test message naming this host. Raises UpstreamError if the webhook fails."""
    host = hostname or socket.gethostname()
    webhook = WebhookClient(settings, session, retry)
    await webhook.post({"text": f"rackwatch: test message from {_escape(host)}"})
