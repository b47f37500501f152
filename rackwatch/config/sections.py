"""The tables of the configuration file, one model each: [schedule], [maas], [testflinger], ...

May import: pydantic, `config.values`.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from rackwatch.config.values import Address, Duration, DurationOrZero, normalise_url


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScheduleSettings(_Section):
    """How often each rack is checked."""

    interval: Duration = timedelta(hours=6)
    jitter: DurationOrZero = timedelta(minutes=15)  # spreads racks out; 0 = none


class MaasSettings(_Section):
    """Where MAAS is and how to sign in to it."""

    url: str
    api_key: SecretStr
    timeout: Duration = timedelta(seconds=120)

    @field_validator("url")
    @classmethod
    def _normalise(cls, value: str) -> str:
        # A URL copied from the API docs often carries /api/2.0; the client adds it itself.
        return normalise_url(value, strip_suffix="/api/2.0")

    @field_validator("api_key")
    @classmethod
    def _check_shape(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value().strip()
        parts = key.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError("must look like <consumer_key>:<token_key>:<token_secret>")
        return SecretStr(key)


def job_url(web_base: str | None, job_id: str | None) -> str | None:
    """The job's page in Testflinger's web UI under `web_base` (which ends with "/"), without
    the user:password@ that `web_base` may carry; None without a base or a job."""
    if not web_base or not job_id:
        return None
    parts = urlsplit(web_base)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts._replace(netloc=host).geturl()}jobs/{job_id}"


class TestflingerLinks(_Section):
    """Where Testflinger's web UI shows a job: all of [testflinger] that `status` and `history`
    read, so that they need none of its secrets. Other keys of the section are ignored here."""

    __test__ = False  # not a pytest test class, despite the name
    model_config = ConfigDict(frozen=True, extra="ignore")

    url: str = "https://testflinger.canonical.com/"
    web_url: str = ""  # the web UI's base, when it is not `url`

    @field_validator("url")
    @classmethod
    def _normalise(cls, value: str) -> str:
        return normalise_url(value)

    @field_validator("web_url")
    @classmethod
    def _normalise_web(cls, value: str) -> str:
        return normalise_url(value) if value.strip() else ""

    @property
    def web_base(self) -> str:
        """The base of the job pages (see `job_url`): `web_url`, else `url`."""
        return self.web_url or self.url


class TestflingerSettings(TestflingerLinks):
    """Where Testflinger is; with client_id (and its secret) set, rackwatch logs in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = ""
    secret: SecretStr = SecretStr("")
    location: str = ""  # only agents whose location contains this text
    timeout: Duration = timedelta(seconds=30)

    @model_validator(mode="after")
    def _check_login(self) -> TestflingerSettings:
        # A secret alone is ignored: a unit may load the credential before login is turned on.
        if self.client_id and not self.secret.get_secret_value():
            raise ValueError("a secret is required when client_id is set")
        return self


class CheckSettings(_Section):
    """How a check cycle submits and follows jobs."""

    concurrency: int = Field(default=50, ge=1)
    poll_interval: Duration = timedelta(seconds=60)
    job_timeout: Duration = timedelta(hours=4)
    # A job whose submission had no clear answer is looked up by its id for this long before
    # it may be submitted again (and then only if no rackwatch job is active on its queue).
    submit_grace: Duration = timedelta(minutes=2)
    max_fail_streak: int = Field(default=20, ge=0)
    stale_after: Duration = timedelta(hours=26)


class HealthSettings(_Section):
    """When an agent counts as unhealthy, and a rack's failures as a rack incident."""

    failures_to_unhealthy: int = Field(default=2, ge=1)
    rack_incident_ratio: float = Field(default=0.5, gt=0, le=1)


class AlertsSettings(_Section):
    """Where health changes are announced: a Mattermost or Slack incoming webhook."""

    webhook_url: SecretStr = SecretStr("")  # the URL carries its own token: a secret

    @field_validator("webhook_url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        if url:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL with a host")
        return SecretStr(url)


class MetricsSettings(_Section):
    """The listener's former place: `metrics.listen` still works, with a deprecation warning."""

    listen: Address = ""


class WebSettings(_Section):
    """Where the daemon's listener serves the pages, /api, /metrics and /healthz; empty for none."""

    listen: Address = ""


class HistorySettings(_Section):
    """How long the state file keeps each check; beyond that, one summary per agent and day."""

    keep_checks: Duration = timedelta(days=90)

    @field_validator("keep_checks")
    @classmethod
    def _at_least_a_day(cls, value: timedelta) -> timedelta:
        if value < timedelta(days=1):
            raise ValueError("must be at least 1d")
        return value
