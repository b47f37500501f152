"""What in a valid configuration deserves a warning: the rules, over settings and the file's mode.

`run-once` and the daemon log each line once at start, and `check-config` prints them. None of
them stops rackwatch: a lab may mean every one of them.
May import: `config`.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from rackwatch.config import CREDENTIALS, Settings

# The interfaces a listener binds when its host is one of these: all of them.
EVERY_INTERFACE = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - the addresses looked for


def config_warnings(settings: Settings, mode: int | None) -> list[str]:
    """One line per warning: the configuration file's secrets open to others (`mode`, its
    permission bits; None when the settings come from no file), a listener on every interface,
    MAAS's token secret or Testflinger's client secret sent in clear, and each deprecated
    setting in use."""
    found = [
        _exposed_secrets(settings, mode),
        _open_listener(settings),
        _maas_in_clear(settings.maas.url),
        _testflinger_login_in_clear(settings),
    ]
    return [line for line in found if line] + settings.deprecations()


def _exposed_secrets(settings: Settings, mode: int | None) -> str | None:
    secrets = settings.secrets_in_file
    if mode is None or not mode & 0o077 or not secrets:
        return None
    rights = [verb for verb, bits in (("read", 0o044), ("write", 0o022)) if mode & bits]
    can = " and ".join(rights) if rights else "open"
    credential = {".".join(setting): name for name, setting in CREDENTIALS.items()}
    loads = ", ".join(f"LoadCredential={credential[secret]}:PATH" for secret in secrets)
    return (
        f"{settings.config_path} holds {' and '.join(secrets)}, and its mode {mode:04o} lets"
        f" others than its owner {can} it: chmod 600 it, or better, give the secrets as systemd"
        f" credentials ({loads} in the unit)"
    )


def _open_listener(settings: Settings) -> str | None:
    listen = settings.listen
    if listen is None or listen[0] not in EVERY_INTERFACE:
        return None
    key = "web.listen" if settings.web.listen else "metrics.listen"
    port = listen[1]
    return (
        f"{key} binds every interface (port {port}): whoever can reach this host reads what the"
        f" listener serves; bind 127.0.0.1:{port}, or one interface's address, unless that is"
        " meant"
    )


def _maas_in_clear(url: str) -> str | None:
    if not _in_clear(url):
        return None
    return (
        "maas.url is http://, and rackwatch signs MAAS requests with OAuth PLAINTEXT: the token"
        " secret of maas.api_key crosses the network in clear with every request; use"
        " https:// where MAAS offers it"
    )


def _testflinger_login_in_clear(settings: Settings) -> str | None:
    if not settings.testflinger.client_id or not _in_clear(settings.testflinger.url):
        return None
    return (
        "testflinger.url is http://, and rackwatch logs in with testflinger.client_id and"
        " testflinger.secret: the secret crosses the network in clear at each login, and the"
        " token it gets with every request; use https:// where Testflinger offers it"
    )


def _in_clear(url: str) -> bool:
    """Whether what is sent to `url` crosses a network unencrypted: http:// to another machine."""
    parts = urlsplit(url)
    return parts.scheme == "http" and not _is_loopback(parts.hostname or "")


def _is_loopback(host: str) -> bool:
    """Whether `host` is this machine itself, where nothing crosses a network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
