"""The errors rackwatch raises on purpose, grouped by what the caller should do about them.

    RackwatchError
    ├── ConfigError             the configuration is invalid             → exit 78
    ├── UsageError              the command line asks for something bad   → exit 2
    ├── UpstreamError           a MAAS or Testflinger call failed         → exit 69 when a rack is lost
    │   ├── UpstreamUnavailable   no answer, a timeout, 409, 429 or 5xx: retried
    │   │   └── UpstreamOutcomeUnknown  a request that must not be repeated may have been carried out
    │   ├── UpstreamAuthError     401/403: the credentials need fixing, never retried
    │   ├── UpstreamResponseError another 4xx or an answer we cannot read: a bug or API drift
    │   └── UnknownRackError      MAAS has no tag of that name
    ├── StoreError              the state file cannot be opened or written
    │   └── StateFileUnreadable   the state file cannot be read (permissions) → exit 66
    └── RackHeldError           another rackwatch process is checking the rack → exit 75

Messages never carry a secret: upstream bodies are quoted only after `redact`, and the bodies
of MAAS 401 answers (which echo the token secret) are never quoted at all.
"""

from __future__ import annotations


class RackwatchError(Exception):
    """Base class of every error rackwatch raises on purpose."""


class ConfigError(RackwatchError):
    """The configuration file or environment is invalid."""


class UsageError(RackwatchError):
    """The command line asks for something that cannot be done."""


class StoreError(RackwatchError):
    """The state file cannot be opened, migrated or written."""


class StateFileUnreadable(StoreError):
    """The state file, or the directory it is in, may not be read by this user."""


class UpstreamError(RackwatchError):
    """A call to MAAS or Testflinger failed.

    `service` is "maas" or "testflinger"; `status` is the HTTP status, None when no answer came.
    """

    def __init__(self, service: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.status = status


class UpstreamUnavailable(UpstreamError):
    """The service did not answer, timed out, or answered 409, 429 or 5xx. Worth retrying."""

    def __init__(
        self,
        service: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(service, message, status=status)
        self.retry_after = retry_after


class UpstreamOutcomeUnknown(UpstreamUnavailable):
    """A request that must not be sent twice (a job submission) may or may not have been carried out.

    Raised instead of retrying after a timeout, a dropped connection or a 500/502/504: the server
    may have acted on the request before the answer was lost. The caller finds out by looking.
    """


class UpstreamAuthError(UpstreamError):
    """The service refused our credentials (401/403). Retrying will not help."""


class UpstreamResponseError(UpstreamError):
    """The service answered something we did not ask for or cannot read."""


class UnknownRackError(UpstreamError):
    """MAAS has no tag with the rack's name."""

    def __init__(self, rack: str) -> None:
        super().__init__("maas", f"unknown rack {rack!r}: MAAS has no tag of that name", status=400)
        self.rack = rack


class RackHeldError(RackwatchError):
    """Another rackwatch process is checking the rack; `holder` says who, and since when."""

    def __init__(self, rack: str, holder: str) -> None:
        super().__init__(f"rack {rack!r} is being checked by another rackwatch ({holder})")
        self.rack = rack
        self.holder = holder
