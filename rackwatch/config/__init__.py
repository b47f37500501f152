"""The configuration: one TOML file, overridden by the environment and systemd credentials.

`load_settings(path)` reads, in order of precedence:
    1. `RACKWATCH_<SECTION>__<KEY>` environment variables, then the bare `MAAS_URL`/`MAAS_API_KEY`;
    2. systemd credentials `$CREDENTIALS_DIRECTORY/maas_api_key` and `.../testflinger_secret`;
    3. the TOML file (`--config`, else `$RACKWATCH_CONFIG`, else /etc/rackwatch/config.toml);
    4. the defaults of the models.
Settings built in code (`Settings(...)`, `Settings.from_mapping(...)`) see only what they are given
plus the defaults, so tests and the demo never pick up a developer's shell or a real lab.
Every problem becomes one `ConfigError` line naming the file and the key, never a secret; an
unknown key also names the known key closest to it ("did you mean 'concurrency'?"), and a missing
default file says how to give one.

The parts: `values` (durations, URLs, names), `sections` (a model per table), `settings` (the
whole), `sources` (the file, the environment, the credentials) and `messages` (the error line).
Every name the rest of rackwatch uses is importable from here.
May import: pydantic, pydantic_settings, errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

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
    job_url,
)
from rackwatch.config.settings import Settings, StateSettings
from rackwatch.config.sources import (
    CREDENTIALS,
    DEFAULT_CONFIG_PATH,
    FILE_DATA,
    default_config_path,
    read_toml,
    secrets_in,
)
from rackwatch.config.values import (
    JOB_KEYS,
    Duration,
    DurationOrZero,
    check_rack_name,
    parse_duration,
    split_address,
)
from rackwatch.errors import ConfigError

__all__ = [
    "load_settings",
    "load_state_settings",
    "default_config_path",
    "DEFAULT_CONFIG_PATH",
    "CREDENTIALS",
    "Settings",
    "StateSettings",
    "ScheduleSettings",
    "MaasSettings",
    "TestflingerLinks",
    "TestflingerSettings",
    "CheckSettings",
    "HealthSettings",
    "AlertsSettings",
    "MetricsSettings",
    "WebSettings",
    "HistorySettings",
    "job_url",
    "JOB_KEYS",
    "Duration",
    "DurationOrZero",
    "parse_duration",
    "check_rack_name",
    "split_address",
]

_Model = TypeVar("_Model", bound=BaseSettings)


def load_settings(path: Path | None = None) -> Settings:
    """Read the TOML file at `path` (default: `default_config_path()`) with its overrides.

    Raises ConfigError, with a one-line message naming the file and the key, for any bad input.
    """
    settings, path, mode, secrets = _load(Settings, path)
    settings._config_path = path
    settings._config_mode = mode
    settings._secrets_in_file = secrets
    return settings


def load_state_settings(path: Path | None = None) -> StateSettings:
    """The part of the configuration that `status` and `history` need, as `load_settings` reads it."""
    return _load(StateSettings, path)[0]


def _load(model: type[_Model], path: Path | None) -> tuple[_Model, Path, int, tuple[str, ...]]:
    """The settings, the file read, its permission bits and the secrets it gives a value."""
    missing = ""  # what to add when the file does not exist
    if path is None and os.environ.get("RACKWATCH_CONFIG"):
        missing = " (the file RACKWATCH_CONFIG names)"
    elif path is None:
        missing = (
            "; name a configuration file with --config PATH or RACKWATCH_CONFIG, or copy"
            f" config.example.toml, from rackwatch's source, to {DEFAULT_CONFIG_PATH}"
        )
    path = default_config_path() if path is None else path
    data, mode = read_toml(path, missing)
    token = FILE_DATA.set(data)
    try:
        return model(), path, mode, secrets_in(data)
    except ValidationError as exc:
        raise config_error(exc, str(path), model) from None
    except SettingsError as exc:  # an env value that should be JSON (e.g. RACKWATCH_RACKS) is not
        raise ConfigError(f"{path}: environment: {exc}") from None
    finally:
        FILE_DATA.reset(token)
