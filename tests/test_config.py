"""Tests for rackwatch.config: TOML files in tmp_path, env overrides, credentials, and errors."""

from __future__ import annotations

import os
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from rackwatch.config import (
    CheckSettings,
    MaasSettings,
    ScheduleSettings,
    Settings,
    TestflingerSettings,
    default_config_path,
    job_url,
    load_settings,
    load_state_settings,
    parse_duration,
)
from rackwatch.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
SECRET = "Sup3rS3cretTokenValue"  # must never appear in an error message
API_KEY = f"consumer:token:{SECRET}"
MAAS = f'[maas]\nurl = "http://maas.test:5240/MAAS/"\napi_key = "{API_KEY}"\n'


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's shell (MAAS_URL, RACKWATCH_*, systemd credentials) out of every test."""
    for name in list(os.environ):
        if name.upper().startswith("RACKWATCH_") or name in (
            "MAAS_URL",
            "MAAS_API_KEY",
            "CREDENTIALS_DIRECTORY",
        ):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> Settings:
    return load_settings(write_config(tmp_path, text))


def config_error(tmp_path: Path, text: str) -> str:
    """Load `text` expecting a ConfigError; return its message after the checks every error meets."""
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert SECRET not in message
    return message


# --- defaults and the example file ------------------------------------------------------------


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    """A file with only [maas] url and api_key gets every other default."""
    settings = load_text(tmp_path, MAAS)
    assert settings.racks == []
    assert settings.state_file == Path("/var/lib/rackwatch/state.db")
    assert settings.schedule == ScheduleSettings(
        interval=timedelta(hours=6), jitter=timedelta(0, 900)
    )
    assert settings.maas.url == "http://maas.test:5240/MAAS/"
    assert settings.maas.api_key.get_secret_value() == API_KEY
    assert settings.maas.timeout == timedelta(seconds=120)
    assert settings.testflinger == TestflingerSettings(
        url="https://testflinger.canonical.com/",
        client_id="",
        location="",
        timeout=timedelta(seconds=30),
    )
    assert settings.testflinger.secret.get_secret_value() == ""
    assert settings.check == CheckSettings(
        concurrency=50,
        poll_interval=timedelta(seconds=60),
        job_timeout=timedelta(hours=4),
        max_fail_streak=20,
        stale_after=timedelta(hours=26),
    )
    assert settings.job == {"provision_data": {"distro": "noble"}, "tags": ["rackwatch"]}
    assert settings.config_path == tmp_path / "config.toml"


def test_example_file_loads_and_shows_the_defaults(tmp_path: Path) -> None:
    """config.example.toml is accepted and every value it shows is the default."""
    example = load_settings(EXAMPLE)
    defaults = load_text(tmp_path, MAAS)
    assert example.config_path == EXAMPLE
    assert example.model_dump(exclude={"maas"}) == defaults.model_dump(exclude={"maas"})
    assert example.maas.timeout == defaults.maas.timeout


def test_example_file_lists_every_key() -> None:
    """Every setting appears in config.example.toml, so the example documents all of them."""
    data = tomllib.loads(EXAMPLE.read_text())
    assert set(data) == set(Settings.model_fields) - {"metrics"}  # deprecated: web.listen
    for section in (ScheduleSettings, MaasSettings, TestflingerSettings, CheckSettings):
        name = {v.annotation: k for k, v in Settings.model_fields.items()}[section]
        assert set(data[name]) == set(section.model_fields), name


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, timedelta(seconds=30)),
        (0.2, timedelta(milliseconds=200)),
        ("30", timedelta(seconds=30)),
        ("0.5", timedelta(milliseconds=500)),
        ("500ms", timedelta(milliseconds=500)),
        ("0.2s", timedelta(milliseconds=200)),
        ("15m", timedelta(minutes=15)),
        ("6h", timedelta(hours=6)),
        ("1.5h", timedelta(minutes=90)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
        (" 6h ", timedelta(hours=6)),
        ("0", timedelta(0)),
        (0, timedelta(0)),
    ],
)
def test_parse_duration_accepts_seconds_and_units(value: str | float, expected: timedelta) -> None:
    """Numbers are seconds; strings may carry units, alone or compounded."""
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        *(
            "",
            "h",
            "6x",
            "6 h",
            "1h30",
            "h6",
            "-5",
            "-5s",
            "1e3",
            "inf",
            "nan",
            "6H",
            "99999999999d",
        ),
        *(-1, -0.5, float("inf"), float("nan"), True, None, [1]),
    ],
)
def test_parse_duration_rejects_bad_values(value: object) -> None:
    """Unknown units, signs, exponents, non-finite numbers and non-numbers are refused."""
    with pytest.raises(ValueError, match=r"duration|negative|finite|too long"):
        parse_duration(value)  # type: ignore[arg-type]


def test_durations_in_the_file_accept_numbers_and_strings(tmp_path: Path) -> None:
    """Duration keys take seconds as numbers and unit strings alike."""
    settings = load_text(
        tmp_path,
        MAAS + 'timeout = 0.2\n[check]\npoll_interval = "500ms"\njob_timeout = "1h30m"\n',
    )
    assert settings.maas.timeout == timedelta(milliseconds=200)
    assert settings.check.poll_interval == timedelta(milliseconds=500)
    assert settings.check.job_timeout == timedelta(minutes=90)


@pytest.mark.parametrize("jitter", ['"0"', "0", '"0s"'])
def test_zero_jitter_means_no_jitter(tmp_path: Path, jitter: str) -> None:
    """schedule.jitter, alone among durations, may be zero."""
    settings = load_text(tmp_path, MAAS + f"[schedule]\njitter = {jitter}\n")
    assert settings.schedule.jitter == timedelta(0)


# --- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://h:5240/MAAS",
        "http://h:5240/MAAS/",
        "http://h:5240/MAAS///",
        "http://h:5240/MAAS/api/2.0",
        "http://h:5240/MAAS/api/2.0/",
        " http://h:5240/MAAS/ ",
    ],
)
def test_maas_url_is_normalised(tmp_path: Path, url: str) -> None:
    """Trailing slashes and a pasted /api/2.0 collapse to one base URL ending in "/"."""
    settings = load_text(tmp_path, f'[maas]\nurl = "{url}"\napi_key = "{API_KEY}"\n')
    assert settings.maas.url == "http://h:5240/MAAS/"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://tf.test", "https://tf.test/"),
        ("https://tf.test//", "https://tf.test/"),
        ("http://127.0.0.1:8000/base/", "http://127.0.0.1:8000/base/"),
    ],
)
def test_testflinger_url_is_normalised(tmp_path: Path, url: str, expected: str) -> None:
    """The Testflinger URL ends with exactly one "/"."""
    settings = load_text(tmp_path, MAAS + f'[testflinger]\nurl = "{url}"\n')
    assert settings.testflinger.url == expected


def test_job_links_go_under_web_url_when_set_and_never_carry_a_password(tmp_path: Path) -> None:
    """web_url is normalised like url and, when set, is the base of the job links, minus userinfo."""
    plain = load_text(tmp_path, MAAS + '[testflinger]\nurl = "https://ci:pw@tf.test:8443/api"\n')
    assert plain.testflinger.web_url == ""
    assert job_url(plain.testflinger.web_base, "j-1") == "https://tf.test:8443/api/jobs/j-1"
    web = load_text(
        tmp_path, MAAS + '[testflinger]\nurl = "https://tf.test/"\nweb_url = "https://ui.test//"\n'
    )
    assert web.testflinger.web_url == "https://ui.test/"
    assert job_url(web.testflinger.web_base, "j-1") == "https://ui.test/jobs/j-1"
    assert job_url(web.testflinger.web_base, None) is None


def test_status_settings_read_the_job_links_without_any_secret(tmp_path: Path) -> None:
    """status and history read testflinger.url and web_url; a login without its secret is no error."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[testflinger]\nurl = "https://tf.test"\nweb_url = "https://ui.test"\nclient_id = "me"\n'
    )
    settings = load_state_settings(path)
    assert (settings.testflinger.url, settings.testflinger.web_base) == (
        "https://tf.test/",
        "https://ui.test/",
    )
    path.write_text('[testflinger]\nweb_url = "ui.test"\n')
    with pytest.raises(ConfigError, match=r"testflinger\.web_url: must be an http://"):
        load_state_settings(path)


# --- bad input --------------------------------------------------------------------------------

MAAS_URL_ONLY = '[maas]\nurl = "http://maas.test:5240/MAAS/"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # unknown keys, at every level
        (MAAS + "urll = 1\n", "maas.urll: unknown key"),
        ("rack = []\n" + MAAS, "rack: unknown key"),
        (MAAS + "[chek]\nconcurrency = 1\n", "chek: unknown key"),
        (MAAS + "[check]\nconcurency = 1\n", "check.concurency: unknown key"),
        (MAAS + "[schedule]\nintervall = 1\n", "schedule.intervall: unknown key"),
        # missing MAAS settings
        ('[maas]\napi_key = "a:b:c"\n', "maas.url: required"),
        (MAAS_URL_ONLY, "maas.api_key: required"),
        ("racks = []\n", "maas.url: required"),
        ("racks = []\n", "maas.api_key: required"),
        # the MAAS key's shape, with the secret in the bad value
        (MAAS_URL_ONLY + f'api_key = "{SECRET}"\n', "maas.api_key: must look like <consumer_key>"),
        (MAAS_URL_ONLY + f'api_key = "a:{SECRET}"\n', "maas.api_key: must look like"),
        (MAAS_URL_ONLY + f'api_key = "a::{SECRET}"\n', "maas.api_key: must look like"),
        (MAAS_URL_ONLY + f'api_key = "a:b:c:{SECRET}"\n', "maas.api_key: must look like"),
        (MAAS_URL_ONLY + f"api_key = {len(SECRET)}\n", "maas.api_key: Input should be"),
        # durations
        (MAAS + "timeout = 0\n", "maas.timeout: must be greater than 0"),
        (MAAS + 'timeout = "0s"\n', "maas.timeout: must be greater than 0"),
        (MAAS + "timeout = -1\n", "maas.timeout: must not be negative"),
        (MAAS + 'timeout = "6x"\n', "maas.timeout: invalid duration '6x'"),
        (MAAS + '[schedule]\ninterval = "0"\n', "schedule.interval: must be greater than 0"),
        (MAAS + "[schedule]\njitter = -1\n", "schedule.jitter: must not be negative"),
        (MAAS + '[check]\njob_timeout = ""\n', "check.job_timeout: invalid duration"),
        (MAAS + "[check]\nstale_after = true\n", "check.stale_after: must be a duration"),
        (MAAS + '[testflinger]\ntimeout = "-1s"\n', "testflinger.timeout: invalid duration"),
        # racks
        ('racks = [""]\n' + MAAS, "racks[0]: rack name must not be empty"),
        ('racks = ["a", "  "]\n' + MAAS, "racks[1]: rack name must not be blank"),
        ('racks = ["tor 3"]\n' + MAAS, "racks[0]: rack name 'tor 3' must be a MAAS tag"),
        ('racks = ["a", "b", "a"]\n' + MAAS, "racks: listed more than once: a"),
        ('racks = "tor3-a"\n' + MAAS, "racks: Input should be a valid list"),
        # numbers
        (MAAS + "[check]\nconcurrency = 0\n", "check.concurrency: Input should be greater than"),
        (MAAS + "[check]\nmax_fail_streak = -1\n", "check.max_fail_streak: Input should be"),
        # URLs
        ('[maas]\nurl = "ftp://m/"\napi_key = "a:b:c"\n', "maas.url: must be an http://"),
        ('[maas]\nurl = "maas.test"\napi_key = "a:b:c"\n', "maas.url: must be an http://"),
        ('[maas]\nurl = "http://"\napi_key = "a:b:c"\n', "maas.url: must be an http://"),
        ('[maas]\nurl = "http://m:99999/"\napi_key = "a:b:c"\n', "maas.url: is not a valid URL"),
        (MAAS + '[testflinger]\nurl = "tf.test"\n', "testflinger.url: must be an http://"),
        (MAAS + '[testflinger]\nweb_url = "ftp://ui"\n', "testflinger.web_url: must be an http"),
        (MAAS + '[testflinger]\nweb_ur = ""\n', "testflinger.web_ur: unknown key"),
        # Testflinger login
        (MAAS + '[testflinger]\nclient_id = "me"\n', "testflinger: a secret is required"),
        # the job template
        (MAAS + '[job]\njob_queue = "q"\n', "job.job_queue: rackwatch sets job_queue itself"),
        (MAAS + '[job]\njob_id = "x"\n', "job.job_id: rackwatch sets job_id itself"),
        (MAAS + "[job]\nprovison_data = {}\n", "job.provison_data: unknown key"),
        # the state file
        ('state_file = ""\n' + MAAS, "state_file: must not be empty"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    """Each kind of bad input is a one-line ConfigError naming the file and the key."""
    assert expected in config_error(tmp_path, text)


def test_all_problems_are_reported_on_one_line(tmp_path: Path) -> None:
    """Several problems are joined with "; " so an operator fixes them in one go."""
    message = config_error(
        tmp_path, f'racks = [""]\n[maas]\nurl = "ftp://x"\napi_key = "{SECRET}"\nurll = 1\n'
    )
    assert message.count("; ") == 3
    for key in ("racks[0]:", "maas.url:", "maas.api_key:", "maas.urll:"):
        assert key in message


def test_invalid_toml_reports_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error says where it is."""
    message = config_error(tmp_path, MAAS + "[check\nconcurrency = 1\n")
    assert "invalid TOML" in message
    assert "line 4" in message
    assert "column" in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist says so."""
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file$"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MAAS + "[check]\nconcurency = 1\n",
            "check.concurency: unknown key (did you mean 'concurrency'?)",
        ),
        ("concurency = 1\n" + MAAS, "concurency: unknown key (did you mean 'check.concurrency'?)"),
        ("rack = []\n" + MAAS, "rack: unknown key (did you mean 'racks'?)"),
        (MAAS + "[chek]\nconcurrency = 1\n", "chek: unknown key (did you mean 'check'?)"),
        (
            MAAS + "[check]\nfailures_to_unhealthy = 3\n",
            "check.failures_to_unhealthy: unknown key (did you mean 'health.failures_to_unhealthy'?)",
        ),
        (
            MAAS + "[job]\nprovison_data = {}\n",
            "job.provison_data: unknown key (not a Testflinger job field; did you mean"
            " 'provision_data'?)",
        ),
        (MAAS + "[check]\nzzz = 1\n", "check.zzz: unknown key"),
        # The tables added last are searched too, and web before the deprecated metrics.
        (MAAS + "[check]\nlisten = 1\n", "check.listen: unknown key (did you mean 'web.listen'?)"),
        (
            MAAS + "[check]\nkeep_check = 1\n",
            "check.keep_check: unknown key (did you mean 'history.keep_checks'?)",
        ),
    ],
)
def test_an_unknown_key_names_the_known_key_close_to_it(
    tmp_path: Path, text: str, expected: str
) -> None:
    """A mistyped key, or one in the wrong table, gets "did you mean"; a key close to none
    gets nothing more."""
    assert config_error(tmp_path, text) == f"{tmp_path / 'config.toml'}: {expected}"


@pytest.mark.skipif(
    Path("/etc/rackwatch/config.toml").exists(), reason="a configuration is at the default path"
)
def test_no_file_at_the_default_path_says_how_to_give_one() -> None:
    """Without --config or RACKWATCH_CONFIG: --config PATH, RACKWATCH_CONFIG or the example."""
    with pytest.raises(ConfigError) as raised:
        load_state_settings()
    assert str(raised.value) == (
        "/etc/rackwatch/config.toml: no such file; name a configuration file with --config PATH"
        " or RACKWATCH_CONFIG, or copy config.example.toml, from rackwatch's source, to"
        " /etc/rackwatch/config.toml"
    )


def test_no_file_where_rackwatch_config_points_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file RACKWATCH_CONFIG names, missing, is named as that."""
    monkeypatch.setenv("RACKWATCH_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone\.toml: no such file \(the file RACKWATCH_CONFIG"):
        load_settings()


def test_directory_instead_of_file_is_a_config_error(tmp_path: Path) -> None:
    """A path that cannot be read as a file is a ConfigError, not an OSError."""
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read: "):
        load_settings(tmp_path)


def test_unreadable_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file we may not read is a ConfigError (simulated: the tests may run as root)."""
    path = write_config(tmp_path, MAAS)
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(ConfigError, match=r"config\.toml: cannot read: Permission denied$"):
        load_settings(path)


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 give a ConfigError rather than a UnicodeDecodeError."""
    path = tmp_path / "config.toml"
    path.write_bytes(b'racks = ["\xff"]\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path)


# --- environment and credentials --------------------------------------------------------------


def test_default_config_path_follows_rackwatch_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """RACKWATCH_CONFIG chooses the file; without it, /etc/rackwatch/config.toml."""
    assert default_config_path() == Path("/etc/rackwatch/config.toml")
    monkeypatch.setenv("RACKWATCH_CONFIG", "/srv/rw.toml")
    assert default_config_path() == Path("/srv/rw.toml")


def test_rackwatch_config_is_a_path_not_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_settings() reads the file RACKWATCH_CONFIG names and does not call it an unknown key."""
    path = write_config(tmp_path, MAAS + "[check]\nconcurrency = 7\n")
    monkeypatch.setenv("RACKWATCH_CONFIG", str(path))
    settings = load_settings()
    assert settings.check.concurrency == 7
    assert settings.config_path == path


def test_bare_maas_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAAS_URL and MAAS_API_KEY, as the lab already uses them, beat the file."""
    monkeypatch.setenv("MAAS_URL", "http://other:5240/MAAS/api/2.0/")
    monkeypatch.setenv("MAAS_API_KEY", "x:y:z")
    settings = load_text(tmp_path, MAAS)
    assert settings.maas.url == "http://other:5240/MAAS/"
    assert settings.maas.api_key.get_secret_value() == "x:y:z"


def test_maas_env_alone_is_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With MAAS_URL and MAAS_API_KEY set, the file needs no [maas] table."""
    monkeypatch.setenv("MAAS_URL", "http://other:5240/MAAS")
    monkeypatch.setenv("MAAS_API_KEY", "x:y:z")
    assert load_text(tmp_path, 'racks = ["r1"]\n').maas.url == "http://other:5240/MAAS/"


def test_rackwatch_env_overrides_nested_and_top_level_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RACKWATCH_<SECTION>__<KEY> and RACKWATCH_<KEY> beat the file."""
    monkeypatch.setenv("RACKWATCH_CHECK__CONCURRENCY", "10")
    monkeypatch.setenv("RACKWATCH_SCHEDULE__INTERVAL", "1h30m")
    monkeypatch.setenv("RACKWATCH_STATE_FILE", "/srv/rw.db")
    monkeypatch.setenv("RACKWATCH_RACKS", '["r1", "r2"]')
    settings = load_text(tmp_path, MAAS + '[check]\nconcurrency = 3\nstale_after = "1d"\n')
    assert settings.check.concurrency == 10
    assert settings.check.stale_after == timedelta(days=1)  # the file still fills the rest
    assert settings.schedule.interval == timedelta(minutes=90)
    assert settings.state_file == Path("/srv/rw.db")
    assert settings.racks == ["r1", "r2"]


def test_prefixed_env_beats_bare_maas_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RACKWATCH_MAAS__URL is more specific than MAAS_URL, so it wins."""
    monkeypatch.setenv("MAAS_URL", "http://bare/")
    monkeypatch.setenv("RACKWATCH_MAAS__URL", "http://prefixed/")
    assert load_text(tmp_path, MAAS).maas.url == "http://prefixed/"


def test_empty_env_variables_count_as_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exported but empty variable does not blank out the file's value."""
    monkeypatch.setenv("MAAS_URL", "")
    monkeypatch.setenv("RACKWATCH_CHECK__CONCURRENCY", "")
    settings = load_text(tmp_path, MAAS + "[check]\nconcurrency = 3\n")
    assert settings.maas.url == "http://maas.test:5240/MAAS/"
    assert settings.check.concurrency == 3


def test_bad_env_value_names_the_variable_not_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in a value from the environment names the variable it came from."""
    monkeypatch.setenv("MAAS_API_KEY", SECRET)
    monkeypatch.setenv("RACKWATCH_CHECK__CONCURRENCY", "0")
    message = config_error(tmp_path, MAAS)
    assert "maas.api_key (from MAAS_API_KEY): must look like" in message
    assert "check.concurrency (from RACKWATCH_CHECK__CONCURRENCY): " in message


def test_a_bad_listener_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RACKWATCH_WEB__LISTEN is named as the origin of web.listen, like any section's variable."""
    monkeypatch.setenv("RACKWATCH_WEB__LISTEN", "nowhere")
    assert "web.listen (from RACKWATCH_WEB__LISTEN): must be host:port" in config_error(
        tmp_path, MAAS
    )


def test_unknown_env_key_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo inside a section's env name is an unknown key, like a typo in the file."""
    monkeypatch.setenv("RACKWATCH_MAAS__URLL", "http://x/")
    assert "maas.urll (from RACKWATCH_MAAS__URLL): unknown key" in config_error(tmp_path, MAAS)


def test_env_value_that_is_not_json_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list setting from the environment must be JSON; anything else is a ConfigError."""
    monkeypatch.setenv("RACKWATCH_RACKS", "tor3-a,tor3-b")
    assert 'field "racks"' in config_error(tmp_path, MAAS)


def write_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **files: str) -> Path:
    folder = tmp_path / "credentials"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_text(content)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(folder))
    return folder


def test_systemd_credentials_fill_the_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$CREDENTIALS_DIRECTORY/maas_api_key and testflinger_secret fill the secrets, newline stripped."""
    write_credentials(tmp_path, monkeypatch, maas_api_key="c:t:s\n", testflinger_secret="tfs\n")
    settings = load_text(tmp_path, '[maas]\nurl = "http://m/"\n[testflinger]\nclient_id = "me"\n')
    assert settings.maas.api_key.get_secret_value() == "c:t:s"
    assert settings.testflinger.secret.get_secret_value() == "tfs"
    assert "tfs" not in repr(settings)
    assert "c:t:s" not in repr(settings)


def test_precedence_is_env_then_credentials_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Environment beats credentials, credentials beat the file, the file beats defaults."""
    write_credentials(tmp_path, monkeypatch, maas_api_key="cred:cred:cred", testflinger_secret="c")
    monkeypatch.setenv("RACKWATCH_TESTFLINGER__SECRET", "env")
    settings = load_text(
        tmp_path, MAAS + '[testflinger]\nclient_id = "me"\nsecret = "file"\ntimeout = "5s"\n'
    )
    assert settings.maas.api_key.get_secret_value() == "cred:cred:cred"  # credentials > file
    assert settings.testflinger.secret.get_secret_value() == "env"  # env > credentials
    assert settings.testflinger.timeout == timedelta(seconds=5)  # file > default
    monkeypatch.setenv("MAAS_API_KEY", "env:env:env")
    assert load_text(tmp_path, MAAS).maas.api_key.get_secret_value() == "env:env:env"


def test_an_empty_credential_file_sets_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LoadCredential= needs a file even when unused; an empty one leaves the file's value."""
    write_credentials(tmp_path, monkeypatch, testflinger_secret="\n")
    settings = load_text(tmp_path, MAAS + '[testflinger]\nclient_id = "me"\nsecret = "file"\n')
    assert settings.testflinger.secret.get_secret_value() == "file"


def test_secret_without_client_id_is_ignored(tmp_path: Path) -> None:
    """A secret alone does not turn login on, and is not an error either."""
    settings = load_text(tmp_path, MAAS + '[testflinger]\nsecret = "s"\n')
    assert settings.testflinger.client_id == ""


def test_bad_credential_names_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed credential is reported with the credential file, never its content."""
    folder = write_credentials(tmp_path, monkeypatch, maas_api_key=SECRET)
    message = config_error(tmp_path, MAAS)
    assert f"maas.api_key (from {folder / 'maas_api_key'}): must look like" in message


def test_unreadable_credential_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A credential that cannot be read is a ConfigError naming it."""
    folder = write_credentials(tmp_path, monkeypatch)
    (folder / "maas_api_key").mkdir()
    with pytest.raises(ConfigError, match=r"maas_api_key: cannot read: "):
        load_text(tmp_path, MAAS)


# --- settings built in code -------------------------------------------------------------------


def test_from_mapping_ignores_env_and_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings built in code use only what they are given, so a shell cannot redirect them."""
    monkeypatch.setenv("MAAS_URL", "http://real-lab/")
    monkeypatch.setenv("RACKWATCH_CHECK__CONCURRENCY", "99")
    write_credentials(tmp_path, monkeypatch, maas_api_key="real:real:real")
    settings = Settings.from_mapping(
        {
            "maas": {"url": "http://127.0.0.1:1/MAAS", "api_key": "a:b:c"},
            "check": {"job_timeout": 1},
        }
    )
    assert settings.maas.url == "http://127.0.0.1:1/MAAS/"
    assert settings.maas.api_key.get_secret_value() == "a:b:c"
    assert settings.check.concurrency == 50
    assert settings.check.job_timeout == timedelta(seconds=1)
    assert settings.config_path is None


def test_from_mapping_accepts_timedeltas() -> None:
    """Code may pass timedelta objects where the file has duration strings."""
    settings = Settings.from_mapping(
        {"maas": {"url": "http://m/", "api_key": "a:b:c"}, "schedule": {"interval": timedelta(1)}}
    )
    assert settings.schedule.interval == timedelta(days=1)


def test_from_mapping_raises_config_error_naming_the_source() -> None:
    """Bad data built in code is a ConfigError too, named after its source."""
    with pytest.raises(ConfigError, match=r"^the demo: maas.api_key: must look like") as caught:
        Settings.from_mapping({"maas": {"url": "http://m/", "api_key": SECRET}}, source="the demo")
    assert SECRET not in str(caught.value)


def test_settings_are_frozen(tmp_path: Path) -> None:
    """Settings cannot be changed after loading, so every component sees the same values."""
    settings = load_text(tmp_path, MAAS)
    with pytest.raises(ValidationError):
        settings.check.concurrency = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.racks = ["x"]  # type: ignore[misc]


def test_the_listener_is_web_listen_and_metrics_listen_is_deprecated(tmp_path: Path) -> None:
    """web.listen names the listener; metrics.listen still works and says it is deprecated."""
    assert load_text(tmp_path, MAAS).listen is None
    assert load_text(tmp_path, MAAS).deprecations() == []
    web = load_text(tmp_path, MAAS + '[web]\nlisten = "127.0.0.1:9464"\n')
    assert web.listen == ("127.0.0.1", 9464)
    assert web.deprecations() == []
    old = load_text(tmp_path, MAAS + '[metrics]\nlisten = "[::1]:9100"\n')
    assert old.listen == ("::1", 9100)
    assert old.deprecations() == [
        "metrics.listen is deprecated: name the listener web.listen instead"
    ]
    both = load_text(
        tmp_path, MAAS + '[web]\nlisten = "127.0.0.1:1"\n[metrics]\nlisten = "127.0.0.1:2"\n'
    )
    assert both.listen == ("127.0.0.1", 1)
    assert both.deprecations() == ["metrics.listen is deprecated and ignored: web.listen is set"]


def test_history_keeps_checks_at_least_a_day(tmp_path: Path) -> None:
    """history.keep_checks defaults to 90 days and refuses less than a day, naming the key."""
    assert load_text(tmp_path, MAAS).history.keep_checks == timedelta(days=90)
    assert load_text(tmp_path, MAAS + '[history]\nkeep_checks = "30d"\n').history.keep_checks == (
        timedelta(days=30)
    )
    with pytest.raises(ConfigError, match=r"history.keep_checks.*at least 1d"):
        load_text(tmp_path, MAAS + '[history]\nkeep_checks = "2h"\n')


def test_loaded_settings_know_their_file_mode_and_the_secrets_it_holds(tmp_path: Path) -> None:
    """What the warnings need of the file: its permission bits and which secrets it gives."""
    path = write_config(tmp_path, MAAS + '[alerts]\nwebhook_url = "https://chat/hooks/x"\n')
    path.chmod(0o640)
    settings = load_settings(path)
    assert settings.config_mode == 0o640
    assert settings.secrets_in_file == ("maas.api_key", "alerts.webhook_url")
    built = Settings.from_mapping({"maas": {"url": "http://m/", "api_key": API_KEY}})
    assert (built.config_mode, built.secrets_in_file) == (None, ())


def test_every_name_of_the_configuration_is_importable_from_rackwatch_config() -> None:
    """The package's parts stay its own business: the rest of rackwatch imports `config`."""
    import rackwatch.config as config

    used = {"Settings", "StateSettings", "load_settings", "load_state_settings"}
    used |= {"default_config_path", "DEFAULT_CONFIG_PATH", "CREDENTIALS", "JOB_KEYS"}
    used |= {"parse_duration", "Duration", "DurationOrZero", "job_url"}
    used |= {f"{table}Settings" for table in ("Schedule", "Maas", "Testflinger", "Check")}
    used |= {f"{table}Settings" for table in ("Health", "Alerts", "Metrics", "Web", "History")}
    used |= {"TestflingerLinks"}
    assert used <= set(config.__all__)
    for name in config.__all__:
        assert hasattr(config, name), name
