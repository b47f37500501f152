"""Where the configuration's values come from besides the code: the TOML file, the bare MAAS_*
environment variables and systemd's credentials. (The RACKWATCH_* variables are read by
pydantic-settings itself.)

May import: `errors`.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from rackwatch.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/rackwatch/config.toml")
# Credential file name → the setting it fills (systemd LoadCredential=<name>:...).
CREDENTIALS = {
    "maas_api_key": ("maas", "api_key"),
    "testflinger_secret": ("testflinger", "secret"),
    "alerts_webhook_url": ("alerts", "webhook_url"),
}

# The TOML table load_settings is reading; None while Settings are built in code.
FILE_DATA: ContextVar[dict[str, Any] | None] = ContextVar("rackwatch_config_file", default=None)


def default_config_path() -> Path:
    """$RACKWATCH_CONFIG, else /etc/rackwatch/config.toml."""
    return Path(os.environ.get("RACKWATCH_CONFIG") or DEFAULT_CONFIG_PATH)


def read_toml(path: Path, missing: str = "") -> tuple[dict[str, Any], int]:
    """The TOML table in the file, and the file's permission bits; a ConfigError for a file that
    cannot be read as one, with `missing` after "no such file" for one that does not exist."""
    try:
        text = path.read_bytes().decode("utf-8")
        mode = path.stat().st_mode & 0o7777
        return tomllib.loads(text), mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file{missing}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def secrets_in(data: dict[str, Any]) -> tuple[str, ...]:
    """The secret settings that the TOML table `data` gives a value ("maas.api_key", ...)."""
    held = []
    for section, key in CREDENTIALS.values():
        table = data.get(section)
        if isinstance(table, dict) and table.get(key):
            held.append(f"{section}.{key}")
    return tuple(held)


def bare_maas_env() -> dict[str, Any]:
    """MAAS_URL and MAAS_API_KEY, the names the lab's other tools already use."""
    maas = {key: os.environ.get(f"MAAS_{key.upper()}") for key in ("url", "api_key")}
    maas = {key: value for key, value in maas.items() if value}
    return {"maas": maas} if maas else {}


def read_credentials() -> dict[str, Any]:
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
