"""The log lines of retried requests: one at debug per retry, one when the request is done.

stamina's own hook would log `stamina.retry_scheduled` with `callable='<context block>'`, which
names no request. `log_retries` puts `retry_scheduled` in its place: it names the request
`Http.request` is retrying (`naming` says which, for the task that retries it) by service,
method and path, never its query or userinfo. `Retried` then says in one line what was retried,
how many times and for how long: at info when the request was answered in the end, at warning
when it gave up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import stamina.instrumentation
import structlog
from stamina.instrumentation import RetryDetails

log = structlog.get_logger("rackwatch.http")

# The request being retried in this task: "testflinger GET /v1/agents/data".
_REQUEST: ContextVar[str] = ContextVar("rackwatch_retried_request", default="")


def retry_scheduled(details: RetryDetails) -> None:
    """stamina's hook: one debug line per retry, naming the request and why it is retried."""
    log.debug(
        "http.retry_scheduled",
        request=_REQUEST.get() or details.name,
        retry_num=details.retry_num,
        caused_by=str(details.caused_by),
        wait_for=round(details.wait_for, 2),
        waited_so_far=round(details.waited_so_far, 2),
    )


def log_retries() -> None:
    """Make `retry_scheduled` stamina's only retry hook, in place of its own log line.

    Set without asking stamina for its hooks first: that would build its default ones, and
    import prometheus_client for them.
    """
    stamina.instrumentation.set_on_retry_hooks([retry_scheduled])


@contextmanager
def naming(what: str) -> Iterator[None]:
    """Within the block, stamina's retries are those of the request `what`."""
    token = _REQUEST.set(what)
    try:
        yield
    finally:
        _REQUEST.reset(token)


@dataclass(slots=True)
class Retried:
    """The attempts of one request: `done` logs their line once it has been retried."""

    what: str
    attempts: int = 1
    started: float = field(default_factory=time.monotonic)

    def done(self, *, status: int | None = None, error: Exception | None = None) -> None:
        """Log what was retried: answered with `status`, or given up on with `error`."""
        if self.attempts < 2:
            return
        fields = {
            "request": self.what,
            "attempts": self.attempts,
            "seconds": round(time.monotonic() - self.started, 2),
        }
        if error is None:
            log.info("http.retried", answered=status, **fields)
        else:
            log.warning("http.retried", gave_up=str(error), **fields)
