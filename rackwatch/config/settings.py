"""The whole configuration (`Settings`), and the part of it that the state file's readers need
(`StateSettings`).

May import: pydantic, pydantic_settings, `config.sections`, `config.sources`, `config.messages`,
`config.values`, `safe_text` (for the passwords in URLs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from rackwatch.config.messages import config_error
from rackwatch.config.sections import (
    AlertsSettings,
    CheckSettings,
    HealthSettings,
    HistorySettings,
    MaasSettings,
    MetricsSettings,
    ScheduleSettings,
    TestflingerLinks,
    TestflingerSettings,
    WebSettings,
)
from rackwatch.config.sources import FILE_DATA, bare_maas_env, read_credentials
from rackwatch.config.values import Rack, StateFile, address, check_job_key
from rackwatch.safe_text import userinfo_secrets


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
        file_data = FILE_DATA.get()
        if file_data is None:
            return (init_settings,)
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, init_kwargs=bare_maas_env()),
            InitSettingsSource(settings_cls, init_kwargs=read_credentials()),
            InitSettingsSource(settings_cls, init_kwargs=file_data),
        )


class Settings(_FromFile):
    """All of rackwatch's configuration. Build it with `load_settings` or `from_mapping`."""

    model_config = SettingsConfigDict(
        env_prefix="RACKWATCH_",
        env_nested_delimiter="__",
        env_ignore_empty=True,  # like MAAS_URL: an empty variable counts as unset
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
    web: WebSettings = WebSettings()
    metrics: MetricsSettings = MetricsSettings()  # after web: "did you mean" names web first
    history: HistorySettings = HistorySettings()
    job: dict[Annotated[str, AfterValidator(check_job_key)], Any] = Field(
        default_factory=lambda: {"provision_data": {"distro": "noble"}, "tags": ["rackwatch"]}
    )
    _config_path: Path | None = PrivateAttr(default=None)
    _config_mode: int | None = PrivateAttr(default=None)
    _secrets_in_file: tuple[str, ...] = PrivateAttr(default=())

    @property
    def config_path(self) -> Path | None:
        """The file these settings were loaded from; None when built in code."""
        return self._config_path

    @property
    def config_mode(self) -> int | None:
        """The permission bits of that file when it was read; None when built in code."""
        return self._config_mode

    @property
    def secrets_in_file(self) -> tuple[str, ...]:
        """The secret settings that file gives a value, e.g. ("maas.api_key",), whether or not
        the environment or a credential overrides them."""
        return self._secrets_in_file

    @property
    def listen(self) -> tuple[str, int] | None:
        """The daemon's listener (`web.listen`, else the deprecated `metrics.listen`); or None."""
        return address(self.web.listen or self.metrics.listen)

    def deprecations(self) -> list[str]:
        """One line for each deprecated setting in use."""
        if self.metrics.listen and not self.web.listen:
            return ["metrics.listen is deprecated: name the listener web.listen instead"]
        if self.metrics.listen:
            return ["metrics.listen is deprecated and ignored: web.listen is set"]
        return []

    def secret_values(self) -> list[str]:
        """The secret strings that must never reach a log line: the log scrubber's list.

        The MAAS key and each of its parts, the Testflinger secret and its Basic credential
        (client_id:secret), the webhook URL, and the password of any URL's user:password@;
        `safe_text.Redactor` also removes their percent-encoded and base64 forms.
        """
        api_key = self.maas.api_key.get_secret_value()
        secret = self.testflinger.secret.get_secret_value()
        webhook_url = self.alerts.webhook_url.get_secret_value()
        values = [api_key, *api_key.split(":"), secret, webhook_url]
        if self.testflinger.client_id and secret:
            values.append(f"{self.testflinger.client_id}:{secret}")
        for url in (self.maas.url, self.testflinger.url, self.testflinger.web_url, webhook_url):
            values += userinfo_secrets(url)
        return [value for value in values if value]

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "<settings>") -> Settings:
        """Build settings from a TOML-shaped dict, with no file, environment or credentials."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(exc, source, cls) from None

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
        return address(self.web.listen or self.metrics.listen)
