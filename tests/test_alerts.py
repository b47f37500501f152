"""Alerts: rendering, and delivery to a webhook of the test's own over real cycles and processes."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from rackwatch.alerts import MAX_LINES, deliver_pending, render, send_test
from rackwatch.clients import RetryPolicy, WebhookClient, make_session
from rackwatch.config import AlertsSettings
from rackwatch.errors import UpstreamError
from rackwatch.model import Alert, Health
from rackwatch.simlab import Behaviour, Lab, SimMachine, SimRack
from rackwatch.store import Store
from tests.harness import (
    FAST_RETRY,
    TOKEN,
    Daemon,
    Harness,
    LabFactory,
    Receiver,
    rack,
    rackwatch,
    until,
    write_config,
)

B = Behaviour
TF = "https://testflinger.example.com/"
FAST = replace(FAST_RETRY, attempts=2)  # the request counts below are two attempts per alert
NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


async def deliver(
    state_file: Path, hook: Receiver, retry: RetryPolicy = FAST, url: str | None = None
) -> tuple[int, int]:
    """One delivery run, as the daemon makes after a cycle, on a freshly opened state file."""
    with Store.open(state_file) as store:
        async with make_session() as session:
            webhook = WebhookClient(
                webhook_settings(hook.url if url is None else url), session, retry
            )
            return await deliver_pending(store, webhook, testflinger_url=TF)


def webhook_settings(url: str) -> AlertsSettings:
    return AlertsSettings(webhook_url=SecretStr(url))


def event(
    kind: str, agent: str | None = None, reason: str = "", job_id: str | None = None
) -> dict[str, Any]:
    before, after = {
        "unhealthy": ("healthy", "unhealthy"),
        "recovered": ("unhealthy", "healthy"),
    }.get(kind, (None, None))
    return {
        "kind": kind,
        "rack": "tor3-a",
        "agent": agent,
        "from": before,
        "to": after,
        "reason": reason,
        "job_id": job_id,
    }


def queue(store: Store, *events: dict[str, Any], rack_name: str = "tor3-a") -> int:
    """Queue one alert as a finished cycle of `rack_name` would; its cycle id."""
    cycle_id = store.start_cycle(rack_name, NOW)
    store.finish_cycle(cycle_id, NOW, "ok")
    store.record_health(
        store.cycle(cycle_id),
        changes=[],
        incident_opened=None,
        incident_closed=False,
        alert={"rack": rack_name, "cycle_id": cycle_id, "events": list(events)},
        at=NOW,
    )
    return cycle_id


def pending(state_file: Path) -> list[tuple[int, str | None]]:
    """The undelivered alerts as (cycle id, last error)."""
    with Store.open(state_file) as store:
        return [(a.cycle_id, a.last_error) for a in store.pending_alerts()]


def health_states(harness: Harness) -> dict[str, Health]:
    with Store.open(harness.state_file) as store:
        return {agent: health.state for agent, (_, health) in store.health().items()}


# Rendering

FAILED = "failed: provisioning exited 1 (device connector error)"
INCIDENT = (
    "6 of 8 checked agents failed (75%): suspected lab infrastructure failure "
    "(switch, power, MAAS images)"
)


@pytest.mark.parametrize(
    ("given", "summary", "line"),
    [
        (
            event("unhealthy", "tor3-a-m07", FAILED, "j-1"),
            "1 agent unhealthy",
            f"🔴 tor3-a-m07 unhealthy: {FAILED} — job {TF}jobs/j-1",
        ),
        (
            event("recovered", "tor3-a-m02", "passed", "j-2"),
            "1 agent recovered",
            f"🟢 tor3-a-m02 recovered — job {TF}jobs/j-2",
        ),
        (
            event("incident_opened", reason=INCIDENT),
            "rack incident opened",
            f"⚠️ rack incident opened: {INCIDENT}",
        ),
        (
            event("incident_closed", reason=f"over: {INCIDENT}"),
            "rack incident over",
            "✅ rack incident over",
        ),
        (
            event("drift", "tor3-a-m03", "MAAS marks the machine Broken"),
            "1 inventory problem",
            "🟡 tor3-a-m03: MAAS marks the machine Broken",
        ),
    ],
)
def test_each_event_kind_renders_as_a_summary_and_one_line(
    given: dict[str, Any], summary: str, line: str
) -> None:
    """A one-event alert is a summary line naming the rack, then the event's own line."""
    alert = Alert.from_json({"rack": "tor3-a", "cycle_id": 7, "events": [given]})
    payload = render(alert, testflinger_url=TF)
    assert payload["text"] == f"rackwatch · tor3-a: {summary}\n{line}"
    assert payload["rack"] == "tor3-a"
    assert payload["cycle_id"] == 7
    url = f"{TF}jobs/{given['job_id']}" if given["job_id"] else None
    assert payload["events"] == [{**given, "url": url}]


def test_the_summary_counts_each_kind_of_change() -> None:
    """Two agents falling ill and one recovering read as one sentence over three lines."""
    alert = Alert.from_json(
        {
            "rack": "tor3-a",
            "cycle_id": 1,
            "events": [
                event("unhealthy", "tor3-a-m07", FAILED, "j-1"),
                event("unhealthy", "tor3-a-m08", "timed_out: no answer", "j-2"),
                event("recovered", "tor3-a-m02", "passed", "j-3"),
            ],
        }
    )
    payload = render(alert, testflinger_url=TF)
    lines = payload["text"].splitlines()
    assert lines[0] == "rackwatch · tor3-a: 2 agents unhealthy, 1 recovered"
    assert [line.split()[1] for line in lines[1:]] == ["tor3-a-m07", "tor3-a-m08", "tor3-a-m02"]


def test_without_a_testflinger_url_the_job_id_is_shown_instead() -> None:
    """No URL to link: the event's url is None and the line names the job id."""
    body = {"rack": "r", "cycle_id": 1, "events": [event("unhealthy", "m1", FAILED, "j-9")]}
    payload = render(Alert.from_json(body), testflinger_url=None)
    assert payload["events"][0]["url"] is None
    assert payload["text"].endswith(f"m1 unhealthy: {FAILED} — job j-9")


def test_an_unhealthy_event_names_its_error_line_and_older_events_read_as_before() -> None:
    """error_line follows the reason and is sent as data; an event without one is unchanged."""
    line = '2026-12-01 20:14:40 ERROR: MAAS deployment of m1 failed: <curtin> & "grub"'
    with_line = {**event("unhealthy", "m1", FAILED, "j-1"), "error_line": line}
    older = event("unhealthy", "m2", FAILED, "j-2")
    body = {"rack": "r", "cycle_id": 1, "events": [with_line, older]}
    alert = Alert.from_json(body)
    payload = render(alert, testflinger_url="https://bot:pw@tf.example.com/")
    escaped = line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert payload["text"].splitlines()[1:] == [
        f"🔴 m1 unhealthy: {FAILED}: {escaped} — job https://tf.example.com/jobs/j-1",
        f"🔴 m2 unhealthy: {FAILED} — job https://tf.example.com/jobs/j-2",
    ]
    assert payload["events"][0]["error_line"] == line
    assert "error_line" not in payload["events"][1]
    assert json.dumps(alert.to_json()) == json.dumps(body)  # the outbox's text, byte for byte


def test_upstream_text_cannot_become_a_mention_or_a_link() -> None:
    """<, > and & in a reason are escaped, as Slack requires; Mattermost shows them as text."""
    reason = "failed: <!channel> see <http://evil.example|here> & more"
    body = {"rack": "r", "cycle_id": 1, "events": [event("unhealthy", "m1", reason)]}
    text = render(Alert.from_json(body), testflinger_url=TF)["text"]
    assert "<" not in text and ">" not in text
    assert "&lt;!channel&gt; see &lt;http://evil.example|here&gt; &amp; more" in text


ZWJ = "\u200d"
# An agent name, a reason and a provision log line as upstream could write them: mentions,
# Markdown links and images, Slack's link form, a newline, an escape sequence, a backslash.
HOSTILE_AGENT = "m1 @here"
HOSTILE_REASON = (
    "failed: @channel see [docs](http://evil.example) ![x](http://evil.example/x.png)"
    " <http://evil.example|here> & <!channel>\nsecond line \x1b[2J"
)
HOSTILE_LINE = "ERROR: @all \\[click](http://e) done"


def hostile_alert() -> dict[str, Any]:
    unhealthy = {
        **event("unhealthy", HOSTILE_AGENT, HOSTILE_REASON, "j-1"),
        "error_line": HOSTILE_LINE,
    }
    return {"rack": "r@ck", "cycle_id": 1, "events": [unhealthy]}


# The text of `hostile_alert()`, byte for byte: nothing in it mentions, links or splits a line,
# and rackwatch's own link to the job stays a link.
HOSTILE_TEXT = (
    f"rackwatch · r@{ZWJ}ck: 1 agent unhealthy\n"
    f"🔴 m1 @{ZWJ}here unhealthy: failed: @{ZWJ}channel see \\[docs\\](http://evil.example)"
    " !\\[x\\](http://evil.example/x.png) &lt;http://evil.example|here&gt; &amp; &lt;!channel&gt;"
    f"\\nsecond line \\x1b\\[2J: ERROR: @{ZWJ}all \\\\\\[click\\](http://e) done"
    f" — job {TF}jobs/j-1"
)


def test_upstream_text_is_plain_text_on_one_line_and_rackwatchs_links_stay_links() -> None:
    """Mentions get a zero-width joiner, Markdown's brackets a backslash, control characters
    an escape; the events as data keep every string exact."""
    body = hostile_alert()
    payload = render(Alert.from_json(body), testflinger_url=TF)
    assert payload["text"] == HOSTILE_TEXT
    assert len(payload["text"].splitlines()) == 2
    assert payload["events"] == [{**body["events"][0], "url": f"{TF}jobs/j-1"}]


async def test_the_webhook_receives_the_escaped_text_byte_for_byte(
    tmp_path: Path, receiver: Receiver
) -> None:
    """What reaches the webhook is the JSON of the text above and the exact events."""
    state_file = tmp_path / "state.db"
    with Store.open(state_file) as store:
        cycle_id = queue(store, *hostile_alert()["events"], rack_name="r@ck")
    assert await deliver(state_file, receiver) == (1, 0)
    [unhealthy] = hostile_alert()["events"]
    expected = {
        "text": HOSTILE_TEXT,
        "rack": "r@ck",
        "cycle_id": cycle_id,
        "events": [{**unhealthy, "url": f"{TF}jobs/j-1"}],
    }
    assert receiver.bodies == [json.dumps(expected).encode()]


def test_a_whole_rack_changing_at_once_is_cut_short_but_kept_whole_as_data() -> None:
    """The text stops after MAX_LINES events and says how many more; the events list keeps all."""
    events = [event("recovered", f"m{i:03d}", "passed") for i in range(MAX_LINES + 25)]
    alert = Alert.from_json({"rack": "big", "cycle_id": 1, "events": events})
    payload = render(alert, testflinger_url=TF)
    lines = payload["text"].splitlines()
    assert len(lines) == 1 + MAX_LINES + 1
    assert lines[0] == f"rackwatch · big: {MAX_LINES + 25} agents recovered"
    assert lines[-1] == "… and 25 more: see rackwatch status big"
    assert len(payload["events"]) == MAX_LINES + 25


def test_an_event_kind_of_a_later_rackwatch_is_shown_as_it_came() -> None:
    """A kind left in the outbox by a later rackwatch is counted as another change, kept as data."""
    later = event("silenced", "m1", "by an operator")
    body = {"rack": "r", "cycle_id": 1, "events": [event("unhealthy", "m1", FAILED), later]}
    alert = Alert.from_json(body)
    payload = render(alert, testflinger_url=TF)
    assert payload["text"].splitlines() == [
        "rackwatch · r: 1 agent unhealthy, 1 other change",
        f"🔴 m1 unhealthy: {FAILED}",
        "• m1 silenced: by an operator",
    ]
    assert payload["events"][1] == {**later, "url": None}
    assert alert.to_json() == body


# Delivery over real cycles


async def test_an_agent_failing_twice_is_announced_once_and_its_recovery_once(
    served: LabFactory, receiver: Receiver
) -> None:
    """Two failed cycles send one "unhealthy" alert with the job's page; a pass sends "recovered"."""
    harness = await served([rack("r1", B.PASS, B.PASS, B.PASS, B.PASS)])
    await harness.cycle()
    harness.lab.set_behaviour("r1-m1", B.FAIL)
    for _ in range(3):  # the second failure makes it unhealthy; the third changes nothing
        await harness.cycle()
        await deliver(harness.state_file, receiver)
    assert receiver.kinds() == [[("unhealthy", "r1-m1")]]
    [unhealthy] = receiver.messages[0]["events"]
    assert unhealthy["reason"].startswith("failed: ")
    assert unhealthy["url"] == f"{TF}jobs/{unhealthy['job_id']}"
    assert receiver.messages[0]["text"].startswith("rackwatch · r1: 1 agent unhealthy\n🔴 r1-m1")

    harness.lab.set_behaviour("r1-m1", B.PASS)
    await harness.cycle()
    assert await deliver(harness.state_file, receiver) == (1, 0)
    assert receiver.kinds() == [[("unhealthy", "r1-m1")], [("recovered", "r1-m1")]]
    assert pending(harness.state_file) == []


async def test_a_rack_incident_is_one_alert_and_its_end_another(
    served: LabFactory, receiver: Receiver
) -> None:
    """Most of a rack failing sends one incident alert, no agent alerts; a good cycle ends it."""
    harness = await served([rack("r1", B.PASS, B.PASS, B.PASS, B.PASS)])
    await harness.cycle()
    for name in ("r1-m1", "r1-m2", "r1-m3"):
        harness.lab.set_behaviour(name, B.FAIL)
    for _ in range(2):
        await harness.cycle()
        await deliver(harness.state_file, receiver)
    assert receiver.kinds() == [[("incident_opened", None)]]
    assert "3 of 4 checked agents failed" in receiver.messages[0]["text"]
    assert set(health_states(harness).values()) == {Health.HEALTHY}

    for name in ("r1-m1", "r1-m2", "r1-m3"):
        harness.lab.set_behaviour(name, B.PASS)
    await harness.cycle()
    await deliver(harness.state_file, receiver)
    assert receiver.kinds() == [[("incident_opened", None)], [("incident_closed", None)]]
    assert (
        receiver.messages[1]["text"] == "rackwatch · r1: rack incident over\n✅ rack incident over"
    )


# Delivery: failures, order, duplicates


async def test_a_failing_webhook_keeps_the_alert_for_the_next_run(
    tmp_path: Path, receiver: Receiver
) -> None:
    """500 through every retry leaves the alert queued with the error; the next run sends it once."""
    state_file = tmp_path / "state.db"
    with Store.open(state_file) as store:
        cycle_id = queue(store, event("unhealthy", "m1", FAILED, "j-1"))
    receiver.fail = [500, 500]
    assert await deliver(state_file, receiver) == (0, 1)
    assert receiver.requests == 2  # both attempts of FAST
    [(queued, error)] = pending(state_file)
    assert queued == cycle_id and error is not None and "answered 500" in error

    assert await deliver(state_file, receiver) == (1, 0)
    assert await deliver(state_file, receiver) == (0, 0)
    assert len(receiver.messages) == 1
    assert pending(state_file) == []


async def test_a_transient_failure_is_retried_within_the_run(
    tmp_path: Path, receiver: Receiver
) -> None:
    """One 503 is retried at once: the alert is delivered in the same run, one copy received."""
    state_file = tmp_path / "state.db"
    with Store.open(state_file) as store:
        queue(store, event("recovered", "m1", "passed"))
    receiver.fail = [503]
    assert await deliver(state_file, receiver) == (1, 0)
    assert (receiver.requests, len(receiver.messages)) == (2, 1)


async def test_a_webhook_that_is_down_stops_the_run_and_keeps_the_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The alerts behind a failed one are not tried; the next run sends all, oldest first."""
    state_file = tmp_path / "state.db"
    with Store.open(state_file) as store:
        first = queue(store, event("unhealthy", "m1", FAILED))
        second = queue(store, event("recovered", "m1", "passed"))
    receiver.fail = [503, 503]
    assert await deliver(state_file, receiver) == (0, 1)
    assert receiver.requests == 2  # the first alert's two attempts, nothing for the second
    assert [cycle for cycle, _ in pending(state_file)] == [first, second]

    assert await deliver(state_file, receiver) == (2, 0)
    assert receiver.kinds() == [[("unhealthy", "m1")], [("recovered", "m1")]]


async def test_a_refused_alert_does_not_hold_up_the_others(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A 400 for one message records it as failed and still delivers the alerts behind it."""
    state_file = tmp_path / "state.db"
    with Store.open(state_file) as store:
        refused = queue(store, event("unhealthy", "bad-one", FAILED))
        queue(store, event("unhealthy", "m2", FAILED))
    receiver.refuse = lambda payload: "bad-one" in payload["text"]
    assert await deliver(state_file, receiver) == (1, 1)
    assert receiver.kinds() == [[("unhealthy", "m2")]]
    [(cycle, error)] = pending(state_file)
    assert cycle == refused and error == "webhook POST answered 400: invalid payload"


async def test_delivered_alerts_are_never_sent_again_after_a_restart(
    served: LabFactory, receiver: Receiver
) -> None:
    """A second delivery run, on the state file opened anew, finds nothing to send."""
    harness = await served([rack("r1", B.PASS, B.PASS, B.PASS)])
    await harness.cycle()
    harness.lab.set_behaviour("r1-m1", B.FAIL)
    await harness.cycle()
    await harness.cycle()
    assert await deliver(harness.state_file, receiver) == (1, 0)
    assert await deliver(harness.state_file, receiver) == (0, 0)
    assert receiver.requests == 1


async def test_without_a_webhook_nothing_is_sent_and_alerts_stay_queued(tmp_path: Path) -> None:
    """An empty webhook_url sends nothing; the alert stays in the outbox, undelivered."""
    state_file = tmp_path / "state.db"
    with Store.open(state_file) as store:
        cycle_id = queue(store, event("unhealthy", "m1", FAILED))
    assert await deliver(state_file, Receiver(), url="") == (0, 0)
    assert pending(state_file) == [(cycle_id, None)]


async def test_the_webhook_url_never_reaches_a_log_line_or_an_error(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A 500 echoing the URL, retries and a refused connection leave no trace of its token."""
    state_file = tmp_path / "state.db"
    with Store.open(state_file) as store:
        queue(store, event("unhealthy", "m1", FAILED))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/hooks/{TOKEN}"
    receiver.fail = [500] * 4  # two attempts of the delivery, two of the test message
    with capture_logs() as logs:
        assert await deliver(state_file, receiver) == (0, 1)
        assert await deliver(state_file, receiver, url=closed) == (0, 1)
        async with make_session() as session:
            with pytest.raises(UpstreamError) as raised:
                await send_test(webhook_settings(receiver.url), session, retry=FAST)

    names = [entry["event"] for entry in logs]
    assert names.count("alert.failed") == 2
    assert "http.retry_scheduled" in names  # retries are logged, with their cause
    [(_, error)] = pending(state_file)
    assert error is not None and error.startswith("webhook POST: cannot connect")
    assert str(raised.value) == "webhook POST answered 500: failing on purpose: ***"
    for text in (repr(logs), str(raised.value), error):
        assert TOKEN not in text and "xoxb" not in text


# The command line and the daemon

TOML_WITHOUT_WEBHOOK = """
racks = ["r1"]
state_file = "{state_file}"
[maas]
url = "http://127.0.0.1:9/MAAS/"
api_key = "consumer:token:secret"
"""


async def test_alerts_test_sends_one_message(tmp_path: Path, receiver: Receiver) -> None:
    """`rackwatch alerts test` posts one message naming the host, prints "sent" and exits 0."""
    config = tmp_path / "rw.toml"
    toml = TOML_WITHOUT_WEBHOOK.format(state_file=tmp_path / "state.db")
    config.write_text(f'{toml}[alerts]\nwebhook_url = "{receiver.url}"\n')
    done = await rackwatch("alerts", "test", "--config", str(config))
    assert done.code == 0, done.err
    assert done.out == "sent\n"
    assert receiver.messages == [{"text": f"rackwatch: test message from {socket.gethostname()}"}]


async def test_alerts_test_with_a_failing_webhook_exits_69_without_the_url(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A webhook answering 503 to both attempts: exit 69 with the answer, and no token."""
    receiver.fail = [503, 503]
    config = tmp_path / "rw.toml"
    toml = TOML_WITHOUT_WEBHOOK.format(state_file=tmp_path / "state.db")
    config.write_text(f'{toml}[alerts]\nwebhook_url = "{receiver.url}"\n')
    done = await rackwatch("alerts", "test", "--config", str(config))
    assert done.code == 69
    assert "rackwatch: alerts test: webhook POST answered 503" in done.err
    assert TOKEN not in done.out + done.err and "xoxb" not in done.out + done.err
    assert receiver.messages == []


async def test_alerts_test_without_a_webhook_exits_78(tmp_path: Path) -> None:
    """No alerts.webhook_url: a configuration error, exit 78, nothing sent."""
    config = tmp_path / "rw.toml"
    config.write_text(TOML_WITHOUT_WEBHOOK.format(state_file=tmp_path / "state.db"))
    done = await rackwatch("alerts", "test", "--config", str(config))
    assert done.code == 78
    assert "alerts.webhook_url is not set" in done.err


def one_failing_agent() -> Lab:
    """A rack of two machines: r1-m1 fails its provisioning, r1-m2 passes."""
    return Lab(
        [SimRack("r1", [SimMachine("r1-m1", B.FAIL), SimMachine("r1-m2", B.PASS)])],
        provision_seconds=0.3,
        pickup_seconds=0.05,
    )


def alerting_at_once(receiver: Receiver) -> str:
    """Configuration that makes one failure unhealthy and announces it to `receiver`."""
    return f'[health]\nfailures_to_unhealthy = 1\n[alerts]\nwebhook_url = "{receiver.url}"'


async def test_run_once_delivers_the_alert_of_its_cycle(tmp_path: Path, receiver: Receiver) -> None:
    """run-once sends its cycle's alert before it exits; nothing is left in the outbox."""
    lab = one_failing_agent()
    async with lab.serve() as urls:
        state_file = tmp_path / "state.db"
        extra = alerting_at_once(receiver)
        config = write_config(tmp_path / "rw.toml", lab, urls, state_file, extra)
        done = await rackwatch("run-once", "--config", str(config), "--log-format", "json")
    assert done.code == 1, done.err  # r1-m1 failed its check
    assert receiver.kinds() == [[("unhealthy", "r1-m1")]]
    assert pending(state_file) == []
    assert TOKEN not in done.err and "xoxb" not in done.err


async def test_the_alert_of_a_failed_agent_names_why_and_links_under_web_url(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The unhealthy event carries its log's error line, and its job's page under web_url."""
    lab = one_failing_agent()
    async with lab.serve() as urls:
        state_file = tmp_path / "state.db"
        extra = alerting_at_once(receiver)
        web = 'web_url = "https://ui.example.com/tf"'
        config = write_config(tmp_path / "rw.toml", lab, urls, state_file, extra, testflinger=web)
        done = await rackwatch("run-once", "--config", str(config), "--log-format", "json")
    assert done.code == 1, done.err
    [message] = receiver.messages
    [unhealthy] = message["events"]
    with Store.open_readonly(state_file) as store:
        [check] = store.history("r1-m1")
    why = 'ERROR: MAAS deployment of r1-m1 failed: status "Failed deployment"'
    assert unhealthy["error_line"].endswith(f"{why} (curtin: grub-install failed)")
    assert unhealthy["url"] == f"https://ui.example.com/tf/jobs/{check.job_id}"
    assert f"🔴 r1-m1 unhealthy: {FAILED}: " in message["text"]
    assert why in message["text"]


def _with_alerts(daemon: Daemon, url: str) -> None:
    daemon.write_config(["r1"])
    text = daemon.config.read_text()
    daemon.config.write_text(
        f'{text}[health]\nfailures_to_unhealthy = 1\n[alerts]\nwebhook_url = "{url}"\n'
    )


async def test_the_daemon_announces_a_change_once(daemon: Daemon, receiver: Receiver) -> None:
    """The daemon sends an agent's fall after its cycle, and nothing more while it stays ill."""
    daemon.lab.set_behaviour("r1-m1", B.FAIL)
    _with_alerts(daemon, receiver.url)
    await daemon.start()
    await until(lambda: len(receiver.messages) >= 1 and daemon.cycles("r1") >= 3)
    code, events = await daemon.stop()
    assert code == 0
    assert receiver.kinds() == [[("unhealthy", "r1-m1")]]
    assert [e["event"] for e in events].count("alert.delivered") == 1
    assert TOKEN not in json.dumps(events) and "xoxb" not in json.dumps(events)


async def test_a_hanging_webhook_neither_holds_up_the_checks_nor_the_stop(
    daemon: Daemon, receiver: Receiver
) -> None:
    """Cycles go on while the webhook never answers; SIGTERM exits 0 and the alert stays queued."""
    daemon.lab.set_behaviour("r1-m1", B.FAIL)
    receiver.hang = True
    _with_alerts(daemon, receiver.url)
    await daemon.start()
    await until(lambda: receiver.requests >= 1)
    started = daemon.cycles("r1")
    await until(lambda: daemon.cycles("r1") >= started + 2)
    code, _ = await daemon.stop()
    assert code == 0
    assert receiver.messages == []
    with Store.open_readonly(daemon.state_file) as store:
        [alert] = store.pending_alerts()
    assert alert.body["events"][0]["kind"] == "unhealthy"
