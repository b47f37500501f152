"""The alerts webhook: JSON messages posted to a Mattermost or Slack incoming webhook.

The webhook URL carries its own token and is a secret. Its requests go through `Http` with
`redact_url`: messages and the retry log lines say "webhook POST" and never the path, and the
URL, its path, its query and its userinfo are redacted from any answer quoted. `redact` does the
same for any other text that could hold the URL. A `user:password@` in the URL is sent as HTTP
Basic, never in the URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp

from rackwatch.clients._http import Http, Pool, RetryPolicy, without_url
from rackwatch.config import AlertsSettings
from rackwatch.safe_text import Redactor, userinfo_secrets

SERVICE = "webhook"
REQUEST_TIMEOUT_S = 10.0
# Any 2xx is the webhook taking the message (Slack answers 200 "ok", others 201 or 204).
ACCEPTED = range(200, 300)


class WebhookClient:
    """Posts to the one webhook of `alerts.webhook_url`; none is configured when it is empty.

    Its requests have a limiter of their own: a slow webhook never holds a slot of the checks.
    """

    def __init__(
        self,
        settings: AlertsSettings,
        session: aiohttp.ClientSession,
        retry: RetryPolicy = RetryPolicy.DELIVERY,
    ) -> None:
        self._url = settings.webhook_url.get_secret_value()
        self._redactor = Redactor([self._url, *userinfo_secrets(self._url)])
        self._http = Http(
            SERVICE,
            Pool(session, asyncio.Semaphore(1), retry, self._redactor),
            timeout_s=REQUEST_TIMEOUT_S,
            redact_url=True,
            # A redirect would turn the POST into a GET: better to say the URL needs fixing.
            follow_redirects=False,
            # Only the status says whether the message was taken: a long answer is cut, not an
            # error that would post the message again.
            needs_body=False,
        )

    @property
    def is_configured(self) -> bool:
        return bool(self._url)

    async def post(self, payload: Mapping[str, Any]) -> None:
        """POST `payload` as JSON, retried on transient failures; raises UpstreamError unless 2xx.

        A post is retried after a timeout or a 500 too: a message shown twice is better than an
        alert lost.
        """
        await self._http.request("POST", self._url, expect=ACCEPTED, json_body=dict(payload))

    def redact(self, text: str) -> str:
        """`text` without the webhook URL, its path (the token), its query or its userinfo."""
        return without_url(self._redactor(text), self._url)
