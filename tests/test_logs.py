"""Logging: the journald wire format, a journal socket of the test's own, output choice, scrubbing."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import structlog

from rackwatch import journald, logs

SECRET = "s3cr3t-value"


@dataclass
class Journal:
    """A datagram socket standing in for /run/systemd/journal/socket."""

    path: Path
    sock: socket.socket

    def datagrams(self) -> list[bytes]:
        # Sending is synchronous, so whatever was logged is already queued here.
        received = []
        while True:
            try:
                received.append(self.sock.recv(1 << 20))
            except BlockingIOError:
                return received

    def entries(self) -> list[dict[str, str]]:
        return [decode(datagram) for datagram in self.datagrams()]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """A bound AF_UNIX datagram socket in tmp_path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = tmp_path / "journal.sock"
        sock.bind(os.fspath(path))
        sock.setblocking(False)
        yield Journal(path, sock)


def decode(datagram: bytes) -> dict[str, str]:
    """Parse the native journal protocol, both the KEY=value and the binary form."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            rest = after
        else:
            key = line
            (size,) = struct.unpack("<Q", after[:8])
            value = after[8 : 8 + size]
            assert after[8 + size : 9 + size] == b"\n"
            rest = after[9 + size :]
        fields[key.decode()] = value.decode()
    return fields


def test_encode_writes_plain_fields_as_key_equals_value() -> None:
    """Values without a newline go as KEY=value lines."""
    assert journald.encode({"RACK": "tor3-a", "PRIORITY": 6}) == b"RACK=tor3-a\nPRIORITY=6\n"


def test_encode_writes_values_with_newlines_in_binary_form() -> None:
    """A value holding a newline goes as KEY, newline, its length as u64 LE, the bytes, newline."""
    value = "Traceback:\n  boom"
    expected = b"MESSAGE\n" + struct.pack("<Q", len(value)) + value.encode() + b"\n"
    assert journald.encode({"MESSAGE": value}) == expected
    assert decode(journald.encode({"A": "x", "MESSAGE": value, "B": "y"})) == {
        "A": "x",
        "MESSAGE": value,
        "B": "y",
    }


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("maas-status", "MAAS_STATUS"),
        ("_private", "PRIVATE"),
        ("job_id", "JOB_ID"),
        ("a.b c", "A_B_C"),
        ("2fa", "FIELD_2FA"),
        ("x" * 80, "X" * 64),
    ],
)
def test_field_names_are_reduced_to_what_journald_accepts(key: str, field: str) -> None:
    """Keys are upper-cased, reduced to [A-Z0-9_], start with a letter and are at most 64 long."""
    assert journald.field_name(key) == field


def test_info_event_arrives_with_searchable_fields(journal: Journal) -> None:
    """An info event becomes one entry with MESSAGE, PRIORITY 6, the identifier, EVENT and its fields."""
    logs.configure("info", "journald", journal_socket=journal.path)
    structlog.get_logger("rackwatch.check").info(
        "check.finished", rack="tor3-a", agent="tor3-a-01", outcome="failed", duration_s=12.5
    )
    [entry] = journal.entries()
    assert entry == {
        "RACK": "tor3-a",
        "AGENT": "tor3-a-01",
        "OUTCOME": "failed",
        "DURATION_S": "12.5",
        "MESSAGE": "check.finished rack=tor3-a agent=tor3-a-01 outcome=failed duration_s=12.5",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "rackwatch",
        "EVENT": "check.finished",
    }


@pytest.mark.parametrize(
    ("method", "priority"),
    [("debug", "7"), ("info", "6"), ("warning", "4"), ("error", "3"), ("critical", "2")],
)
def test_priority_follows_the_level(journal: Journal, method: str, priority: str) -> None:
    """Each level maps to its syslog priority, so `journalctl -p warning` works."""
    logs.configure("debug", "journald", journal_socket=journal.path)
    getattr(structlog.get_logger(), method)("check.cancel_failed", rack="tor3-a")
    [entry] = journal.entries()
    assert entry["PRIORITY"] == priority


def test_message_quotes_values_with_spaces_and_leaves_out_none(journal: Journal) -> None:
    """MESSAGE stays one parseable line: spaced values are quoted, absent ones left out."""
    logs.configure("info", "journald", journal_socket=journal.path)
    structlog.get_logger().info("check.finished", detail="job failed: exit 1", duration_s=None)
    [entry] = journal.entries()
    assert entry["MESSAGE"] == 'check.finished detail="job failed: exit 1"'
    assert "DURATION_S" not in entry


def test_exception_traceback_arrives_intact_in_message(journal: Journal) -> None:
    """log.exception sends the whole traceback inside MESSAGE, in the binary form."""
    logs.configure("info", "journald", journal_socket=journal.path)
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger().exception("check.crashed", rack="tor3-a")
    [datagram] = journal.datagrams()
    assert b"\nMESSAGE\n" in datagram  # binary form: KEY, newline, length
    entry = decode(datagram)
    first, *rest = entry["MESSAGE"].splitlines()
    assert first == "check.crashed rack=tor3-a"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"
    assert 'raise ValueError("boom")' in entry["MESSAGE"]
    assert entry["PRIORITY"] == "3"
    assert "EXCEPTION" not in entry


def test_library_log_record_arrives_with_logger_field(journal: Journal) -> None:
    """A standard-library warning (aiohttp here) takes the same path and names its logger."""
    logs.configure("info", "journald", journal_socket=journal.path)
    logging.getLogger("aiohttp.client").warning("connection to %s lost", "maas")
    [entry] = journal.entries()
    assert entry["LOGGER"] == "aiohttp.client"
    assert entry["PRIORITY"] == "4"
    assert entry["EVENT"] == "connection to maas lost"
    assert entry["MESSAGE"] == "connection to maas lost logger=aiohttp.client"


def test_library_info_records_are_left_out(journal: Journal) -> None:
    """Libraries speak only from WARNING up, even when rackwatch logs at info."""
    logs.configure("info", "journald", journal_socket=journal.path)
    logging.getLogger("apscheduler.scheduler").info("Added job")
    logging.getLogger("apscheduler.scheduler").error("Job failed")
    assert [entry["EVENT"] for entry in journal.entries()] == ["Job failed"]


def test_missing_socket_falls_back_to_prefixed_stderr_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without journald the event is written to stderr with a <N> priority prefix on each line."""
    logs.configure("info", "journald", journal_socket=tmp_path / "absent.sock")
    structlog.get_logger().warning("check.cancel_failed", rack="tor3-a", error="gone")
    assert capsys.readouterr().err == "<4>check.cancel_failed rack=tor3-a error=gone\n"


def test_oversized_event_falls_back_to_stderr(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    """An event too large for one datagram (EMSGSIZE) still reaches stderr."""
    logs.configure("info", "journald", journal_socket=journal.path)
    structlog.get_logger().error("report.built", body="x" * (8 << 20))
    assert journal.datagrams() == []
    err = capsys.readouterr().err
    assert err.startswith("<3>report.built body=xxx")
    assert len(err) > 8 << 20


def test_auto_picks_journald_when_journal_stream_names_the_stream(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JOURNAL_STREAM equal to the stream's device:inode, and the socket present, mean journald."""
    with (tmp_path / "stderr").open("w") as stream:
        status = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
        chosen = logs.configure("info", "auto", stream=stream, journal_socket=journal.path)
        structlog.get_logger().info("cycle.started", rack="tor3-a")
    assert chosen == "journald"
    assert [entry["RACK"] for entry in journal.entries()] == ["tor3-a"]
    assert (tmp_path / "stderr").read_text() == ""


def test_auto_picks_json_when_journal_stream_names_another_file(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JOURNAL_STREAM inherited from a parent, naming some other file, is not ours."""
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    with (tmp_path / "stderr").open("w") as stream:
        chosen = logs.configure("info", "auto", stream=stream, journal_socket=journal.path)
        structlog.get_logger().info("cycle.started", rack="tor3-a")
    assert chosen == "json"
    assert journal.datagrams() == []
    assert json.loads((tmp_path / "stderr").read_text())["rack"] == "tor3-a"


def test_auto_picks_json_when_the_journal_socket_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A matching JOURNAL_STREAM is not enough: journald's socket must exist."""
    with (tmp_path / "stderr").open("w") as stream:
        status = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
        assert logs.pick_output(stream, tmp_path / "absent.sock") == "json"


def test_auto_picks_console_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal (a real pseudo-terminal here) the output is the console renderer's."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            assert logs.pick_output(terminal, tmp_path / "absent.sock") == "console"
    finally:
        os.close(follower)
        os.close(leader)


def test_json_lines_carry_utc_iso_timestamps() -> None:
    """In JSON mode each event is one JSON object with level, event, fields and a UTC timestamp."""
    stream = io.StringIO()
    assert logs.configure("info", "auto", stream=stream) == "json"
    structlog.get_logger().warning("check.finished", rack="tor3-a", outcome="failed")
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "check.finished"
    assert record["level"] == "warning"
    assert (record["rack"], record["outcome"]) == ("tor3-a", "failed")
    assert record["timestamp"].endswith("Z")
    assert datetime.fromisoformat(record["timestamp"]).utcoffset() is not None


def test_events_below_the_level_are_dropped() -> None:
    """configure's level filters rackwatch's own events."""
    stream = io.StringIO()
    logs.configure("warning", "json", stream=stream)
    structlog.get_logger().info("check.submitted")
    structlog.get_logger().warning("check.finished")
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["check.finished"]


def test_console_lines_are_plain_when_not_on_a_terminal() -> None:
    """Forced console output into a file is readable and has no colour escapes."""
    stream = io.StringIO()
    logs.configure("info", "console", stream=stream)
    structlog.get_logger().info("check.finished", rack="tor3-a", outcome="passed")
    [line] = stream.getvalue().splitlines()
    assert "check.finished" in line
    assert "rack=tor3-a" in line
    assert "outcome=passed" in line
    assert "\x1b[" not in line


def _log_everything_secret() -> None:
    log = structlog.get_logger()
    try:
        raise RuntimeError(f"MAAS refused the key {SECRET}")
    except RuntimeError:
        log.exception(
            "maas.refused",
            detail=f"token secret {SECRET} was rejected",
            url="http://user:pw@maas.example/MAAS/api/2.0/",
            error=ValueError(SECRET),
            headers={"Authorization": "OAuth oauth_signature=sig-123"},
            api_key="ck:tk:ts",
        )
    logging.getLogger("aiohttp.client").warning(
        "GET %s failed", "https://admin:hunter2@tf.example/"
    )


@pytest.mark.parametrize("fmt", ["json", "console", "journald"])
def test_secrets_never_reach_a_line(
    fmt: logs.LogFormat, journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    """Secret values, URL credentials and credential-named keys are scrubbed in every output."""
    stream = io.StringIO()
    logs.configure("info", fmt, secrets=[SECRET, ""], stream=stream, journal_socket=journal.path)
    _log_everything_secret()
    entries = [value for entry in journal.entries() for value in entry.values()]
    written = "\n".join([stream.getvalue(), *entries, capsys.readouterr().err])
    for leak in (SECRET, "user:pw", "pw@", "hunter2", "sig-123", "ck:tk:ts"):
        assert leak not in written
    assert "maas.refused" in written
    assert "RuntimeError: MAAS refused the key ***" in written
    assert "http://***@maas.example/MAAS/api/2.0/" in written
    assert "https://***@tf.example/" in written


def test_scrubber_removes_percent_encoded_secrets_and_keeps_other_values() -> None:
    """A secret is also found URL-encoded; values without secrets come through unchanged."""
    scrub = logs.Scrubber(["a/b+c=="])
    event = {
        "event": "http.request",
        "query": "?sig=a%2Fb%2Bc%3D%3D&x=1",
        "attempts": 3,
        "ok": True,
        "racks": ["tor3-a", "a/b+c=="],
        "password": None,
        "duration_s": 1.5,
    }
    assert scrub(None, "info", event) == {
        "event": "http.request",
        "query": "?sig=***&x=1",
        "attempts": 3,
        "ok": True,
        "racks": ["tor3-a", "***"],
        "password": "***",
        "duration_s": 1.5,
    }


def test_url_credentials_are_removed_up_to_the_host() -> None:
    """Userinfo holding an "@" is removed whole, and a plain address stays as it is."""
    scrub = logs.Scrubber()
    assert scrub.text("postgres://u:p@ss@db/x and mail ops@example.org") == (
        "postgres://***@db/x and mail ops@example.org"
    )
    assert scrub.text("http://maas.example:5240/MAAS/") == "http://maas.example:5240/MAAS/"


# What upstream wrote: an OSC title sequence, a screen clear, a newline and a bidi override.
HOSTILE = "\x1b]0;pwned\x07down\x1b[2J\nnext line \u202egnp.exe"
SHOWN = "\\x1b]0;pwned\\x07down\\x1b[2J\\nnext line \\u202egnp.exe"


def test_console_lines_show_control_characters_as_escapes() -> None:
    """On the console, a value from upstream can neither drive the terminal nor split the line."""
    stream = io.StringIO()
    logs.configure("info", "console", stream=stream)
    structlog.get_logger().info("agent.offline", agent="m1\x1b[31m", comment=HOSTILE)
    written = stream.getvalue()
    # After the local timestamp, byte for byte.
    assert written[len("2026-12-01 20:00:00 ") :] == (
        f"[info     ] agent.offline                  agent=m1\\x1b[31m comment='{SHOWN}'\n"
    )


def test_console_tracebacks_keep_their_lines_but_no_other_control_character() -> None:
    """A traceback stays multi-line; an escape sequence in its message does not reach the terminal."""
    stream = io.StringIO()
    logs.configure("info", "console", stream=stream)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        structlog.get_logger().exception("cycle.crashed")
    written = stream.getvalue()
    assert "\x1b" not in written and "\u202e" not in written and "\x07" not in written
    lines = written.splitlines()
    assert "Traceback (most recent call last):" in lines
    assert lines[-2:] == ["ValueError: \\x1b]0;pwned\\x07down\\x1b[2J", "next line \\u202egnp.exe"]


def test_journal_fields_keep_their_newlines_but_no_other_control_character(
    journal: Journal,
) -> None:
    """A field keeps its text and its newline; MESSAGE stays one line; neither holds an escape."""
    logs.configure("info", "journald", journal_socket=journal.path)
    structlog.get_logger().info("agent.offline", comment=HOSTILE)
    [entry] = journal.entries()
    assert entry["COMMENT"] == ("\\x1b]0;pwned\\x07down\\x1b[2J\nnext line \\u202egnp.exe")
    assert entry["MESSAGE"] == f'agent.offline comment="{SHOWN}"'.replace(
        "\\x1b", "\\u001b"
    ).replace("\\x07", "\\u0007")
    assert entry["EVENT"] == "agent.offline"


def test_json_lines_keep_upstream_text_exact() -> None:
    """JSON escapes control characters itself: the value reads back exactly as upstream wrote it."""
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    structlog.get_logger().info("agent.offline", comment=HOSTILE)
    [line] = stream.getvalue().splitlines()
    assert "\x1b" not in line
    assert json.loads(line)["comment"] == HOSTILE


def test_the_scrubber_removes_base64_credentials_and_authorization_values() -> None:
    """The Basic credential in every base64 spelling, and any Authorization header's value."""
    scrub = logs.Scrubber(["bot:s3cr3t"])
    basic = "Ym90OnMzY3IzdA=="  # base64 of bot:s3cr3t
    said = (
        f"echo: Authorization: Basic {basic} Host: x; token {basic.rstrip('=')}; "
        "'HTTP_AUTHORIZATION': 'Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl'"
    )
    assert (
        scrub.text(said)
        == "echo: Authorization: *** Host: x; token ***; 'HTTP_AUTHORIZATION': '***'"
    )
