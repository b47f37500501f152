"""The configuration's warnings: the rules on settings read from real files, then each command
that gives them (check-config prints them; run-once and the daemon log each once at start)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rackwatch.config import Settings, load_settings
from rackwatch.config_warnings import config_warnings
from tests.harness import Daemon, Harness, LabFactory, rack, rackwatch, until, write_config

SECRET_KEY = "consumer:token:Sup3rS3cretTokenValue"
MAAS = f'[maas]\nurl = "https://maas.lab:5240/MAAS/"\napi_key = "{SECRET_KEY}"\n'


def loaded(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_settings(path)


def exposed(path: Path, secrets: str, mode: str, can: str, loads: str) -> str:
    """The warning for a configuration file whose secrets others may read or write."""
    return (
        f"{path} holds {secrets}, and its mode {mode} lets others than its owner {can} it:"
        " chmod 600 it, or better, give the secrets as systemd credentials"
        f" ({loads} in the unit)"
    )


LISTENER = (
    "{key} binds every interface (port {port}): whoever can reach this host reads what the"
    " listener serves; bind 127.0.0.1:{port}, or one interface's address, unless that is meant"
)
IN_CLEAR = (
    "maas.url is http://, and rackwatch signs MAAS requests with OAuth PLAINTEXT: the token"
    " secret of maas.api_key crosses the network in clear with every request; use https://"
    " where MAAS offers it"
)
LOGIN_IN_CLEAR = (
    "testflinger.url is http://, and rackwatch logs in with testflinger.client_id and"
    " testflinger.secret: the secret crosses the network in clear at each login, and the token"
    " it gets with every request; use https:// where Testflinger offers it"
)
DEPRECATED = "metrics.listen is deprecated: name the listener web.listen instead"


# --- the rules ---------------------------------------------------------------------------------


def test_a_private_file_over_https_with_a_local_listener_gets_no_warning(tmp_path: Path) -> None:
    """Mode 0600, MAAS over https and web.listen on 127.0.0.1: nothing to say."""
    settings = loaded(tmp_path, f'{MAAS}[web]\nlisten = "127.0.0.1:9464"\n')
    assert settings.config_mode is not None
    assert config_warnings(settings, 0o600) == []
    assert config_warnings(settings, 0o700) == []  # the owner's own bits are its business


@pytest.mark.parametrize(
    ("mode", "can"),
    [
        (0o644, "read"),
        (0o640, "read"),
        (0o620, "write"),
        (0o666, "read and write"),
        (0o601, "open"),
    ],
)
def test_a_file_with_a_secret_open_to_others_is_named_with_what_to_do(
    tmp_path: Path, mode: int, can: str
) -> None:
    """Its path, the secrets it holds, its mode, and the systemd credentials to use instead."""
    settings = loaded(tmp_path, MAAS)
    assert config_warnings(settings, mode) == [
        exposed(
            tmp_path / "config.toml",
            "maas.api_key",
            f"{mode:04o}",
            can,
            "LoadCredential=maas_api_key:PATH",
        )
    ]


def test_every_secret_the_file_holds_is_named(tmp_path: Path) -> None:
    """The Testflinger secret and the webhook's URL count as secrets too."""
    settings = loaded(
        tmp_path,
        f'{MAAS}[testflinger]\nclient_id = "ci"\nsecret = "s3cret-s3cret"\n'
        '[alerts]\nwebhook_url = "https://chat.lab/hooks/T0K3N"\n',
    )
    [line] = config_warnings(settings, 0o644)
    assert line == exposed(
        tmp_path / "config.toml",
        "maas.api_key and testflinger.secret and alerts.webhook_url",
        "0644",
        "read",
        "LoadCredential=maas_api_key:PATH, LoadCredential=testflinger_secret:PATH,"
        " LoadCredential=alerts_webhook_url:PATH",
    )
    for secret in ("Sup3rS3cretTokenValue", "s3cret-s3cret", "T0K3N"):
        assert secret not in line


def test_a_file_whose_secrets_come_from_elsewhere_may_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the key in a systemd credential, a world-readable file holds nothing to hide."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "maas_api_key").write_text(SECRET_KEY + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = loaded(tmp_path, '[maas]\nurl = "https://maas.lab:5240/MAAS/"\n')
    assert settings.secrets_in_file == ()
    assert config_warnings(settings, 0o644) == []


def test_settings_built_in_code_have_no_file_to_warn_of() -> None:
    """No file, no mode: only the rules on the values apply."""
    settings = Settings.from_mapping({"maas": {"url": "https://maas/", "api_key": SECRET_KEY}})
    assert settings.config_mode is None
    assert config_warnings(settings, settings.config_mode) == []


@pytest.mark.parametrize(
    ("table", "key", "port", "also"),
    [
        ('[web]\nlisten = "0.0.0.0:9464"\n', "web.listen", 9464, []),
        ('[web]\nlisten = "[::]:9100"\n', "web.listen", 9100, []),
        ('[metrics]\nlisten = "0.0.0.0:9464"\n', "metrics.listen", 9464, [DEPRECATED]),
    ],
    ids=["ipv4", "ipv6", "deprecated"],
)
def test_a_listener_on_every_interface_is_named(
    tmp_path: Path, table: str, key: str, port: int, also: list[str]
) -> None:
    """0.0.0.0 and :: bind every interface, under web.listen or the deprecated metrics.listen."""
    settings = loaded(tmp_path, MAAS + table)
    assert config_warnings(settings, 0o600) == [LISTENER.format(key=key, port=port), *also]


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "[::1]:9464", "10.0.0.5:9464"])
def test_a_listener_on_one_address_is_fine(tmp_path: Path, listen: str) -> None:
    settings = loaded(tmp_path, f'{MAAS}[web]\nlisten = "{listen}"\n')
    assert config_warnings(settings, 0o600) == []


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://maas.lab:5240/MAAS/", True),
        ("http://10.20.0.2:5240/MAAS/", True),
        ("https://maas.lab:5240/MAAS/", False),
        ("http://127.0.0.1:5240/MAAS/", False),
        ("http://localhost:5240/MAAS/", False),
        ("http://[::1]:5240/MAAS/", False),
    ],
)
def test_maas_over_http_sends_the_token_secret_in_clear(
    tmp_path: Path, url: str, warned: bool
) -> None:
    """PLAINTEXT signing over http:// is a warning, unless MAAS is this very machine."""
    settings = loaded(tmp_path, f'[maas]\nurl = "{url}"\napi_key = "{SECRET_KEY}"\n')
    assert config_warnings(settings, 0o600) == ([IN_CLEAR] if warned else [])


@pytest.mark.parametrize(
    ("url", "client_id", "warned"),
    [
        ("http://testflinger.lab/", "rackwatch-bot", True),
        ("https://testflinger.lab/", "rackwatch-bot", False),
        ("http://testflinger.lab/", "", False),  # no login: nothing secret is sent
        ("http://127.0.0.1:5000/", "rackwatch-bot", False),
    ],
)
def test_a_testflinger_login_over_http_sends_its_secret_in_clear(
    tmp_path: Path, url: str, client_id: str, warned: bool
) -> None:
    """Logging in over http:// is a warning, unless Testflinger is this very machine."""
    login = f'client_id = "{client_id}"\nsecret = "tf-secret"\n' if client_id else ""
    settings = loaded(tmp_path, f'{MAAS}[testflinger]\nurl = "{url}"\n{login}')
    assert config_warnings(settings, 0o600) == ([LOGIN_IN_CLEAR] if warned else [])


# --- the commands that give them -----------------------------------------------------------------


def open_config(harness: Harness, path: Path, table: str) -> Path:
    """The harness's configuration of the lab with `table` added, readable by everyone."""
    config = write_config(path, harness.lab, harness.urls, harness.state_file)
    config.write_text(config.read_text() + table)
    config.chmod(0o644)
    return config


async def test_check_config_prints_the_warnings(served: LabFactory, tmp_path: Path) -> None:
    """Each warning on a line of its own after the file's; exit 0 all the same."""
    harness = await served([rack("r1")])
    config = open_config(harness, tmp_path / "rw.toml", '[web]\nlisten = "0.0.0.0:9464"\n')

    done = await rackwatch("check-config", "--config", str(config))

    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert lines[1:3] == [
        "warning: "
        + exposed(config, "maas.api_key", "0644", "read", "LoadCredential=maas_api_key:PATH"),
        "warning: " + LISTENER.format(key="web.listen", port=9464),
    ]
    assert lines[3].startswith("state file: ")


async def test_run_once_logs_each_warning_once(served: LabFactory, tmp_path: Path) -> None:
    """One config.warning event per warning, before the cycle, however many racks."""
    harness = await served([rack("r1"), rack("r2")])
    config = open_config(harness, tmp_path / "rw.toml", '[metrics]\nlisten = "0.0.0.0:9464"\n')

    done = await rackwatch("run-once", "--config", str(config), "--log-format", "json")

    assert done.code == 0, done.err
    events = [json.loads(line) for line in done.err.splitlines()]
    warned = [(e["level"], e["detail"]) for e in events if e["event"] == "config.warning"]
    assert warned == [
        (
            "warning",
            exposed(config, "maas.api_key", "0644", "read", "LoadCredential=maas_api_key:PATH"),
        ),
        ("warning", LISTENER.format(key="metrics.listen", port=9464)),
        ("warning", DEPRECATED),
    ]


async def test_the_daemon_logs_the_warnings_once_at_start(daemon: Daemon) -> None:
    """At start, then never again for as long as it runs its cycles."""
    daemon.config.chmod(0o644)
    await daemon.start()
    await until(lambda: daemon.cycles("r1") >= 2)

    code, events = await daemon.stop()

    assert code == 0
    warned = [(e["level"], e["detail"]) for e in events if e["event"] == "config.warning"]
    expected = exposed(
        daemon.config, "maas.api_key", "0644", "read", "LoadCredential=maas_api_key:PATH"
    )
    assert warned == [("warning", expected)]
    names = [e["event"] for e in events]
    assert names.index("config.warning") == names.index("daemon.started") + 1
