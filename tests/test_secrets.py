"""No credential leaves rackwatch: under every fault of the simulated lab, every output, log line,
webhook payload and byte of the state file is searched for every secret, plain and base64.

The lab has a Testflinger login, rackwatch a MAAS key, a webhook URL with a token, and userinfo
in each URL; an error page that echoes the request headers (ECHO_HEADERS) shows the Basic
credential, the Bearer token and MAAS's OAuth signature back to it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sqlite3
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from rackwatch.simlab import DEFAULT_MAAS_API_KEY, Behaviour, Fault, FaultKind, Lab, SimRack
from tests.harness import TOKEN, Done, Receiver, rack, rackwatch, start

B = Behaviour
CLIENT_ID = "rackwatch-bot"
TF_SECRET = "tf-Secret-8f3a9c2e71d04b5a"
TF_URL_USER, TF_URL_PASSWORD = "tfproxy", "tfProxyPassw0rd-5521"
MAAS_URL_USER, MAAS_URL_PASSWORD = "maasproxy", "maasProxyPassw0rd-7730"
HOOK_USER, HOOK_PASSWORD = "hookproxy", "hookPassw0rd-9184"
CONSUMER_KEY, TOKEN_KEY, TOKEN_SECRET = DEFAULT_MAAS_API_KEY.split(":")

SECRETS = [
    TF_SECRET,
    f"{CLIENT_ID}:{TF_SECRET}",  # the Basic credential of the login
    DEFAULT_MAAS_API_KEY,
    CONSUMER_KEY,
    TOKEN_KEY,
    TOKEN_SECRET,
    TOKEN,  # the webhook's
    TF_URL_PASSWORD,
    f"{TF_URL_USER}:{TF_URL_PASSWORD}",
    MAAS_URL_PASSWORD,
    f"{MAAS_URL_USER}:{MAAS_URL_PASSWORD}",
    HOOK_PASSWORD,
    f"{HOOK_USER}:{HOOK_PASSWORD}",
]


def forms(secret: str) -> list[bytes]:
    """A secret plain, percent-encoded and base64: standard and urlsafe, padded and not."""
    raw = secret.encode()
    encoded = [base64.b64encode(raw), base64.urlsafe_b64encode(raw)]
    return [raw, quote(secret, safe="").encode(), *encoded, *(e.rstrip(b"=") for e in encoded)]


# A message cut short can leave the head of a credential at its end: any this long is a leak.
FRAGMENT = 16


def leaks(haystack: bytes, issued: Collection[str] = ()) -> list[str]:
    """Each form of a secret, or of a token the lab `issued`, found in `haystack` whole or as a
    fragment of FRAGMENT bytes."""
    found = []
    for secret in [*SECRETS, *issued]:
        for form in forms(secret):
            pieces = {form[i : i + FRAGMENT] for i in range(max(1, len(form) - FRAGMENT + 1))}
            found += [f"{secret!r} as {piece!r}" for piece in pieces if piece in haystack]
    return found


@dataclass(frozen=True)
class Scenario:
    """Faults installed on both services for the whole scenario."""

    name: str
    faults: tuple[Fault, ...]


def everywhere(kind: FaultKind, **options: object) -> tuple[Fault, ...]:
    """The fault on about half of each service's requests, from a seed of its own."""
    return tuple(
        Fault(kind, service, times=None, ratio=0.5, seed=seed, **options)  # type: ignore[arg-type]
        for seed, service in enumerate(("maas", "testflinger"))
    )


def echoing(status: int, path: str = "", ratio: float = 1.0) -> tuple[Fault, ...]:
    return tuple(
        Fault(FaultKind.ECHO_HEADERS, service, path=path, times=None, ratio=ratio, status=status)
        for service in ("maas", "testflinger")
    )


OPTIONS: dict[FaultKind, dict[str, object]] = {
    FaultKind.SLOW: {"delay": 0.05},
    FaultKind.LATE: {"delay": 0.05},
    FaultKind.UNAVAILABLE: {"retry_after": 0.01},
    FaultKind.CONFLICT: {"retry_after": 0.01},
}
SCENARIOS = [
    *(Scenario(kind.value, everywhere(kind, **OPTIONS.get(kind, {}))) for kind in FaultKind),
    # Every request echoed back: the login's Basic credential, the Bearer tokens, MAAS's OAuth.
    Scenario("echo_headers_401", echoing(401, ratio=0.5)),
    Scenario("echo_headers_at_login", echoing(403, path="/v1/oauth2/token")),
]


def without_retry_waits(tmp_path: Path) -> dict[str, str]:
    """The environment of a rackwatch process whose retries do not wait (stamina's test mode),
    so that a fault on every other request costs no backoff; the attempts stay real."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import stamina\nstamina.set_testing(True, attempts=3, cap=True)\n"
    )
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def config_text(lab_urls_maas: str, lab_urls_tf: str, hook_url: str, state_file: Path) -> str:
    """A configuration with every credential, and userinfo in every URL."""

    def with_userinfo(url: str, user: str, password: str) -> str:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{user}:{password}@{rest}"

    return f"""
racks = ["r1"]
state_file = "{state_file}"
[schedule]
interval = "1s"
jitter = 0
[maas]
url = "{with_userinfo(lab_urls_maas, MAAS_URL_USER, MAAS_URL_PASSWORD)}"
api_key = "{DEFAULT_MAAS_API_KEY}"
[testflinger]
url = "{with_userinfo(lab_urls_tf, TF_URL_USER, TF_URL_PASSWORD)}"
client_id = "{CLIENT_ID}"
secret = "{TF_SECRET}"
[check]
poll_interval = 0.1
job_timeout = 3
submit_grace = "1s"
[health]
failures_to_unhealthy = 1
[alerts]
webhook_url = "{with_userinfo(hook_url, HOOK_USER, HOOK_PASSWORD)}"
"""


def the_lab() -> Lab:
    """A rack of a passing, a failing and an offline agent. The failing one's provision output
    holds the credentials as a device connector that logs its requests shows them."""
    racks: list[SimRack] = [rack("r1", B.PASS, B.FAIL, B.OFFLINE)]
    lab = Lab(
        racks,
        provision_seconds=0.2,
        pickup_seconds=0.05,
        testflinger_login=(CLIENT_ID, TF_SECRET),
    )
    basic = base64.b64encode(f"{CLIENT_ID}:{TF_SECRET}".encode()).decode()
    lab.failure_echo = "\n".join(
        [
            f"POST https://{MAAS_URL_USER}:{MAAS_URL_PASSWORD}@maas.lab/MAAS/api/2.0/machines/",
            f'Authorization: OAuth oauth_consumer_key="{CONSUMER_KEY}",'
            f' oauth_token="{TOKEN_KEY}", oauth_signature="&{TOKEN_SECRET}"',
            f"login with {basic} refused",
            f"retrying with api_key={quote(DEFAULT_MAAS_API_KEY, safe='')}",
            f"secret {TF_SECRET} and {TOKEN_SECRET} in clear",
        ]
    )
    return lab


async def daemon_cycles(
    config: Path, state_file: Path, env: dict[str, str], cycles: int = 2
) -> Done:
    """`rackwatch run` until the state file holds `cycles` more cycles, then SIGTERM."""
    before = cycles_of(state_file)
    process = await start(
        "run", "--config", str(config), "--log-format", "console", "--log-level", "debug", env=env
    )
    try:
        # Longer than `until` allows: the daemon starts beside other rackwatch processes.
        async with asyncio.timeout(60):
            while cycles_of(state_file) < before + cycles:  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    return Done(process.returncode, out.decode(), err.decode())


def cycles_of(state_file: Path) -> int:
    """How many cycles the state file holds as finished (0 while it is being created)."""
    try:
        with sqlite3.connect(f"file:{state_file}?mode=ro", uri=True) as db:
            query = "SELECT count(*) FROM cycles WHERE finished_at IS NOT NULL"
            return int(db.execute(query).fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_no_secret_reaches_any_output_under_a_fault(
    scenario: Scenario, tmp_path: Path, receiver: Receiver
) -> None:
    """run-once, the daemon (their tables and both kinds of log line), check-config, status and
    history --json, and alerts test."""
    lab = the_lab()
    state_file = tmp_path / "state.db"
    env = without_retry_waits(tmp_path)
    async with lab.serve() as urls:
        config = tmp_path / "rackwatch.toml"
        config.write_text(config_text(urls.maas, urls.testflinger, receiver.url, state_file))
        lab.faults.extend(scenario.faults)
        given = ("--config", str(config))
        debug = ("--log-level", "debug")
        # The state file first, while check-config and alerts test try the services; then
        # the daemon on it, while status and history read it.
        done = list(
            await asyncio.gather(
                rackwatch("run-once", *given, "--log-format", "json", *debug, env=env),
                rackwatch("check-config", *given, env=env),
                rackwatch("alerts", "test", *given, env=env),
            )
        )
        done += await asyncio.gather(
            daemon_cycles(config, state_file, env),
            rackwatch("status", "--json", *given),
            rackwatch("history", "r1-m2", "--json", *given),
        )
    assert lab.requests, "the lab was never asked"
    outputs = b"\n".join(f"{d.out}\n{d.err}".encode() for d in done)
    payloads = json.dumps(receiver.messages).encode()
    state = b"".join(
        path.read_bytes()
        for path in (state_file, state_file.with_name(state_file.name + "-wal"))
        if path.exists()
    )
    assert state, "no state file was written"
    # The access and refresh tokens of the Testflinger logins are credentials too.
    issued = [*lab.tokens, *lab.refresh_tokens]
    assert leaks(outputs, issued) == []
    assert leaks(payloads, issued) == []
    assert leaks(state, issued) == []
    # What was checked was shown: the searches above looked at real output.
    assert b"r1" in outputs


async def test_credentials_in_a_provision_log_are_kept_scrubbed(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The failed job's provision log is kept, and its alert sent, with each credential that the
    device connector logged (plain, base64, percent-encoded, in a URL, in a header) shown as
    ***."""
    lab = the_lab()
    state_file = tmp_path / "state.db"
    async with lab.serve() as urls:
        config = tmp_path / "rackwatch.toml"
        config.write_text(config_text(urls.maas, urls.testflinger, receiver.url, state_file))
        given = ("--config", str(config))
        checked = await rackwatch("run-once", *given)
        history = await rackwatch("history", "r1-m2", "--json", *given)
    assert checked.code == 1, checked.err  # a check failed
    [failed] = json.loads(history.out)["checks"]
    kept = failed["provision_log"]
    assert "DEBUG: POST https://***@maas.lab/MAAS/api/2.0/machines/" in kept
    assert "DEBUG: Authorization: ***" in kept
    assert "DEBUG: login with *** refused" in kept
    assert "DEBUG: retrying with api_key=***\n" in kept
    assert "DEBUG: secret *** and *** in clear\n" in kept
    outputs = f"{checked.out}{checked.err}{history.out}{history.err}".encode()
    assert leaks(outputs) == []
    assert leaks(json.dumps(receiver.messages).encode()) == []
    with sqlite3.connect(state_file) as db:
        [(stored,)] = db.execute(
            "SELECT provision_log FROM check_rows WHERE provision_log IS NOT NULL"
        )
    assert leaks(zlib.decompress(stored) if isinstance(stored, bytes) else stored.encode()) == []


def test_every_fault_kind_has_a_scenario() -> None:
    """A fault kind added to the lab is searched under too."""
    kinds = {fault.kind for scenario in SCENARIOS for fault in scenario.faults}
    assert kinds == set(FaultKind)


def test_the_search_finds_each_form_it_looks_for() -> None:
    """The search itself finds a secret in each of its forms, so that its silence means something."""
    for secret in SECRETS:
        for form in forms(secret):
            assert leaks(b"x" + form + b"y")
            assert leaks(b"x" + form[:FRAGMENT] + b"\xe2\x80\xa6")  # cut short after it
    assert leaks(b"nothing secret here") == []
