"""The configuration: one TOML file, overridden by the environment and systemd credentials.

`load_settings(path)` reads, in order of precedence:
    1. `RACKWATCH_<SECTION>__<KEY>` environment variables, then the bare `MAAS_URL`/`MAAS_API_KEY`;
    2. systemd credentials `$CREDENTIALS_DIRECTORY/maas_api_key` and `.../testflinger_secret`;
    3. the TOML file (`--config`, else `$RACKWATCH_CONFIG`, else /etc/rackwatch/config.toml);
    4. the defaults below.
Settings built in code (`Settings(...)`, `Settings.from_mapping(...)`) see only what they are given
plus the defaults, so tests and the demo never pick up a developer's shell or a real lab.
Every problem becomes one `ConfigError` line naming the file and the key, never a secret; an
unknown key also names the known key closest to it ("did you mean 'concurrency'?"), and a missing
default file says how to give one.
May import: pydantic, pydantic_settings, errors.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from rackwatch.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/rackwatch/config.toml")
# Credential file name → the setting it fills (systemd LoadCredential=<name>:...).
_SECTIONS = ("schedule", "maas", "testflinger", "check", "health", "alerts", "metrics")
CREDENTIALS = {
    "maas_api_key": ("maas", "api_key"),
    "testflinger_secret": ("testflinger", "secret"),
    "alerts_webhook_url": ("alerts", "webhook_url"),
}
# Top-level keys of Testflinger's job schema that a template may set; job_queue and job_id are ours.
JOB_KEYS = frozenset(
    {"provision_data", "test_data", "reserve_data", "allocate_data", "firmware_update_data"}
    | {"global_timeout", "output_timeout", "allocation_timeout", "job_priority", "tags", "name"}
    | {"exclude_agents", "job_status_webhook", "parent_job_id", "debug"}
)

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_DURATION = re.compile(rf"{_NUMBER}|(?:{_NUMBER}(?:ms|s|m|h|d))+")
_DURATION_HELP = "use seconds or a number with a unit ms, s, m, h or d, e.g. 500ms, 15m, 1h30m"


def parse_duration(value: str | int | float) -> timedelta:
    """Turn seconds (30, 0.2, "30") or a string with units ("500ms", "6h", "1h30m") into a timedelta.

    Raises ValueError for anything else and for negative values; zero is allowed here.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be a duration: {_DURATION_HELP}")
    if isinstance(value, str):
        text = value.strip()
        if not _DURATION.fullmatch(text):
            raise ValueError(f"invalid duration {value!r}: {_DURATION_HELP}")
        parts = _PART.findall(text) or [(text, "s")]
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError("must be a finite number of seconds")
    if seconds < 0:
        raise ValueError("must not be negative")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError("duration is too long") from None


def _to_duration(value: object) -> object:
    return value if isinstance(value, timedelta) else parse_duration(value)  # type: ignore[arg-type]


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be greater than 0")
    return value


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative")
    return value


Duration = Annotated[timedelta, BeforeValidator(_to_duration), AfterValidator(_positive)]
DurationOrZero = Annotated[timedelta, BeforeValidator(_to_duration), AfterValidator(_not_negative)]


def _normalise_url(value: str, *, strip_suffix: str = "") -> str:
    """Check an http(s) base URL and make it end with exactly one "/"."""
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    url = parts.geturl().rstrip("/")
    if strip_suffix and url.endswith(strip_suffix):
        url = url.removesuffix(strip_suffix).rstrip("/")
    return url + "/"


def _check_rack(name: str) -> str:
    if not name:
        raise ValueError("rack name must not be empty")
    if not name.strip():
        raise ValueError("rack name must not be blank")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(
            f"rack name {name!r} must be a MAAS tag: letters, digits, '-' and '_' only"
        )
    return name


def _check_job_key(key: str) -> str:
    if key in ("job_queue", "job_id"):
        raise ValueError(f"rackwatch sets {key} itself; remove it from [job]")
    if key not in JOB_KEYS:
        close = _close_to(key, JOB_KEYS)
        also = f"; did you mean {close!r}?" if close else ""
        raise ValueError(f"unknown key (not a Testflinger job field{also})")
    return key


def _not_empty(value: object) -> object:
    if value == "":
        raise ValueError("must not be empty")
    return value


StateFile = Annotated[Path, BeforeValidator(_not_empty)]
Rack = Annotated[str, AfterValidator(_check_rack)]


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
        return _normalise_url(value, strip_suffix="/api/2.0")

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
        return _normalise_url(value)

    @field_validator("web_url")
    @classmethod
    def _normalise_web(cls, value: str) -> str:
        return _normalise_url(value) if value.strip() else ""

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


def _check_address(value: str) -> str:
    value = value.strip()
    if value:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9464")
    return value


def _address(listen: str) -> tuple[str, int] | None:
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsSettings(_Section):
    """The listener's former place: `metrics.listen` still works, with a deprecation warning."""

    listen: Annotated[str, AfterValidator(_check_address)] = ""


class WebSettings(_Section):
    """Where the daemon's listener serves the pages, /api, /metrics and /healthz; empty for none."""

    listen: Annotated[str, AfterValidator(_check_address)] = ""


class HistorySettings(_Section):
    """How long the state file keeps each check; beyond that, one summary per agent and day."""

    keep_checks: Duration = timedelta(days=90)

    @field_validator("keep_checks")
    @classmethod
    def _at_least_a_day(cls, value: timedelta) -> timedelta:
        if value < timedelta(days=1):
            raise ValueError("must be at least 1d")
        return value


# The TOML table load_settings is reading; None while Settings are built in code.
_FILE_DATA: ContextVar[dict[str, Any] | None] = ContextVar("rackwatch_config_file", default=None)


class _FromFile(BaseSettings):
    """Settings read by `load_settings` from the file, the environment and credentials."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_data = _FILE_DATA.get()
        if file_data is None:
            return (init_settings,)
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, init_kwargs=_bare_maas_env()),
            InitSettingsSource(settings_cls, init_kwargs=_read_credentials()),
            InitSettingsSource(settings_cls, init_kwargs=file_data),
        )


class Settings(_FromFile):
    """All of rackwatch's configuration. Build it with `load_settings` or `from_mapping`."""

    model_config = SettingsConfigDict(
        env_prefix="RACKWATCH_",
        env_nested_delimiter="__",
        env_ignore_empty=True,  # like MAAS_URL below: an empty variable counts as unset
        extra="forbid",
        frozen=True,
    )

    racks: list[Rack] = []
    state_file: StateFile = Path("/var/lib/rackwatch/state.db")
    schedule: ScheduleSettings = ScheduleSettings()
    maas: MaasSettings
    testflinger: TestflingerSettings = TestflingerSettings()
    check: CheckSettings = CheckSettings()
    health: HealthSettings = HealthSettings()
    alerts: AlertsSettings = AlertsSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    history: HistorySettings = HistorySettings()
    job: dict[Annotated[str, AfterValidator(_check_job_key)], Any] = Field(
        default_factory=lambda: {"provision_data": {"distro": "noble"}, "tags": ["rackwatch"]}
    )
    _config_path: Path | None = PrivateAttr(default=None)

    @property
    def config_path(self) -> Path | None:
        """The file these settings were loaded from; None when built in code."""
        return self._config_path

    @property
    def listen(self) -> tuple[str, int] | None:
        """The daemon's listener (`web.listen`, else the deprecated `metrics.listen`); or None."""
        return _address(self.web.listen or self.metrics.listen)

    def deprecations(self) -> list[str]:
        """One line for each deprecated setting in use."""
        if self.metrics.listen and not self.web.listen:
            return ["metrics.listen is deprecated: name the listener web.listen instead"]
        if self.metrics.listen:
            return ["metrics.listen is deprecated and ignored: web.listen is set"]
        return []

    def secret_values(self) -> list[str]:
        """The secret strings that must never reach a log line: the log scrubber's list."""
        values = [
            self.maas.api_key.get_secret_value().rsplit(":", 1)[-1],
            self.testflinger.secret.get_secret_value(),
            self.alerts.webhook_url.get_secret_value(),
        ]
        return [value for value in values if value]

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "<settings>") -> Settings:
        """Build settings from a TOML-shaped dict, with no file, environment or credentials."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _config_error(exc, source) from None

    @model_validator(mode="before")
    @classmethod
    def _expect_maas(cls, data: Any) -> Any:
        # Without [maas] at all, report maas.url and maas.api_key rather than just "maas".
        if isinstance(data, dict) and "maas" not in data:
            return {**data, "maas": {}}
        return data

    @field_validator("racks")
    @classmethod
    def _no_duplicates(cls, racks: list[str]) -> list[str]:
        twice = sorted({rack for rack in racks if racks.count(rack) > 1})
        if twice:
            raise ValueError(f"listed more than once: {', '.join(twice)}")
        return racks


class StateSettings(_FromFile):
    """What the commands that only read the state file need: no upstream, no secret.

    `status` and `history` run as root outside the service, where the systemd credentials are
    not to be had; they must work without the MAAS key and the Testflinger secret. Other keys
    are not checked here.
    """

    model_config = SettingsConfigDict(
        env_prefix="RACKWATCH_",
        env_nested_delimiter="__",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    racks: list[Rack] = []
    state_file: StateFile = Path("/var/lib/rackwatch/state.db")
    schedule: ScheduleSettings = ScheduleSettings()
    testflinger: TestflingerLinks = TestflingerLinks()  # for the job links only
    metrics: MetricsSettings = MetricsSettings()  # `rackwatch web` listens where the daemon does
    web: WebSettings = WebSettings()

    @property
    def listen(self) -> tuple[str, int] | None:
        """Where the daemon listens (`web.listen`, else `metrics.listen`); or None."""
        return _address(self.web.listen or self.metrics.listen)


_Model = TypeVar("_Model", bound=BaseSettings)


def default_config_path() -> Path:
    """$RACKWATCH_CONFIG, else /etc/rackwatch/config.toml."""
    return Path(os.environ.get("RACKWATCH_CONFIG") or DEFAULT_CONFIG_PATH)


def load_settings(path: Path | None = None) -> Settings:
    """Read the TOML file at `path` (default: `default_config_path()`) with its overrides.

    Raises ConfigError, with a one-line message naming the file and the key, for any bad input.
    """
    settings, path = _load(Settings, path)
    settings._config_path = path
    return settings


def load_state_settings(path: Path | None = None) -> StateSettings:
    """The part of the configuration that `status` and `history` need, as `load_settings` reads it."""
    return _load(StateSettings, path)[0]


def _load(model: type[_Model], path: Path | None) -> tuple[_Model, Path]:
    missing = ""  # what to add when the file does not exist
    if path is None and os.environ.get("RACKWATCH_CONFIG"):
        missing = " (the file RACKWATCH_CONFIG names)"
    elif path is None:
        missing = (
            "; name a configuration file with --config PATH or RACKWATCH_CONFIG, or copy"
            f" config.example.toml, from rackwatch's source, to {DEFAULT_CONFIG_PATH}"
        )
    path = default_config_path() if path is None else path
    token = _FILE_DATA.set(_read_toml(path, missing))
    try:
        return model(), path
    except ValidationError as exc:
        raise _config_error(exc, str(path)) from None
    except SettingsError as exc:  # an env value that should be JSON (e.g. RACKWATCH_RACKS) is not
        raise ConfigError(f"{path}: environment: {exc}") from None
    finally:
        _FILE_DATA.reset(token)


def _read_toml(path: Path, missing: str = "") -> dict[str, Any]:
    """The TOML table in the file; a ConfigError for a file that cannot be read as one, with
    `missing` after "no such file" for one that does not exist."""
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file{missing}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _bare_maas_env() -> dict[str, Any]:
    """MAAS_URL and MAAS_API_KEY, the names the lab's other tools already use."""
    maas = {key: os.environ.get(f"MAAS_{key.upper()}") for key in ("url", "api_key")}
    maas = {key: value for key, value in maas.items() if value}
    return {"maas": maas} if maas else {}


def _read_credentials() -> dict[str, Any]:
    """The secrets systemd passed with LoadCredential=, trailing newline stripped."""
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    found: dict[str, Any] = {}
    for name, (section, key) in CREDENTIALS.items():
        if folder is None or not (Path(folder) / name).exists():
            continue
        try:
            value = (Path(folder) / name).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{Path(folder) / name}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:  # its message would quote a byte of the secret
            raise ConfigError(f"{Path(folder) / name}: not UTF-8 text") from None
        if value:  # an empty credential (LoadCredential= needs a file) sets nothing
            found.setdefault(section, {})[key] = value
    return found


def _origin(loc: tuple[str | int, ...]) -> str:
    """Which override set the value at `loc`, as " (from X)", or "" when it came from the file."""
    if not loc:
        return ""
    if loc[0] in _SECTIONS and len(loc) > 1:
        names = [f"RACKWATCH_{loc[0]}__{loc[1]}".upper(), f"RACKWATCH_{loc[0]}".upper()]
        names += [f"MAAS_{loc[1]}".upper()] if loc[0] == "maas" else []
    else:
        names = [f"RACKWATCH_{loc[0]}".upper()]
    for name in names:
        if os.environ.get(name):
            return f" (from {name})"
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    for name, section_key in CREDENTIALS.items():
        if folder and loc[:2] == section_key and (Path(folder) / name).exists():
            return f" (from {Path(folder) / name})"
    return ""


def _config_error(exc: ValidationError, where: str) -> ConfigError:
    """One line for all problems; include_input=False keeps secret values out of it."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(part for part in error["loc"] if part != "[key]")
        key = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc)
        key = key.replace(".[", "[")
        if error["type"] == "extra_forbidden":
            message = "unknown key" + _did_you_mean(loc)
        elif error["type"] == "missing":
            message = "required but not set"
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{key}{_origin(loc)}: {' '.join(message.split())}")
    return ConfigError(f"{where}: " + "; ".join(problems))


def _did_you_mean(loc: tuple[str | int, ...]) -> str:
    """ " (did you mean 'concurrency'?)" for the unknown key at `loc`: the key of its own table
    closest to it, else the closest of another table ('check.concurrency'); "" when none is."""
    key, table = str(loc[-1]), loc[:-1]
    if close := _close_to(key, _keys_of(table)):
        return f" (did you mean {close!r}?)"
    elsewhere: dict[str, str] = {}  # key → its full name, in its first table that has it
    for other in [(), *((section,) for section in _SECTIONS)]:
        if other != table:
            for name in _keys_of(other):
                elsewhere.setdefault(name, ".".join([*other, name]))
    close = _close_to(key, elsewhere)
    return f" (did you mean {elsewhere[close]!r}?)" if close else ""


def _keys_of(table: tuple[str | int, ...]) -> list[str]:
    """The keys that the table at `table` (() for the top) may hold; none for a list or a
    free-form table."""
    model: Any = Settings
    for part in table:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def _close_to(key: str, known: Iterable[str]) -> str | None:
    """The one of `known` closest to `key` by difflib's measure, if any is close enough."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return close[0] if close else None
