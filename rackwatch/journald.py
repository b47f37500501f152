"""Native journald output: one datagram per event to /run/systemd/journal/socket.

Each field goes as `KEY=value\\n`, or as `KEY\\n<u64 LE length><bytes>\\n` when the value holds a
newline (systemd's "Native Journal Protocol"). Fields stay searchable, so
`journalctl -u rackwatch RACK=tor3-a OUTCOME=failed` works. If journald does not take an event
(it is gone, or the datagram is too large) the event goes to stderr as a `<N>`-prefixed line, which
systemd turns into the same priority.

No control character other than a newline or a tab reaches the journal as it is: `journalctl`
would write it to the reader's terminal. In MESSAGE, a value's newlines show as `\n` too, so
that the event's line stays one line (a traceback follows it, on lines of its own).
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from structlog.typing import EventDict, WrappedLogger

from rackwatch.safe_text import visible

SOCKET_PATH = Path("/run/systemd/journal/socket")
IDENTIFIER = "rackwatch"
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}

_NOT_FIELD_CHARACTER = re.compile(r"[^A-Z0-9_]")
_NEEDS_QUOTES = re.compile(r'[\s"=]')


def is_journal_stream(stream: TextIO) -> bool:
    """Whether systemd connected `stream` to the journal ($JOURNAL_STREAM names its device:inode)."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (a StringIO), or a closed one
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


def field_name(key: str) -> str:
    """`maas-status` → `MAAS_STATUS`: journald takes [A-Z0-9_], at most 64, starting with a letter."""
    name = _NOT_FIELD_CHARACTER.sub("_", key.upper()).lstrip("_")
    if not name[:1].isalpha():  # empty, or a digit first: both are refused
        name = "FIELD_" + name
    return name[:64]


def encode(fields: Mapping[str, object]) -> bytes:
    """One datagram of the native protocol; names must already be valid field names."""
    out = bytearray()
    for name, value in fields.items():
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def journal_fields(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Last structlog processor: an event becomes MESSAGE, PRIORITY, EVENT and one field per key."""
    event = str(event_dict.pop("event", ""))
    level = str(event_dict.pop("level", method_name))
    event_dict.pop("timestamp", None)  # journald stamps each entry itself
    traceback = event_dict.pop("exception", None)
    extra = {key: value for key, value in event_dict.items() if value is not None}
    message = " ".join([event, *(f"{key}={_quoted(value)}" for key, value in extra.items())])
    message = visible(message)
    if traceback:
        message += "\n" + visible(str(traceback), keep="\n\t")
    fields: dict[str, object] = {
        field_name(key): visible(str(value), keep="\n\t") for key, value in extra.items()
    }
    # Set last so that a bound key such as `message=` cannot replace them.
    fields |= {
        "MESSAGE": message,
        "PRIORITY": PRIORITIES.get(level, PRIORITIES["info"]),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "EVENT": visible(event),
    }
    return fields


def _quoted(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or _NEEDS_QUOTES.search(text) else text


class JournalWriter:
    """The structlog logger of the journald output: sends what `journal_fields` made of an event."""

    def __init__(
        self, socket_path: str | os.PathLike[str] = SOCKET_PATH, fallback: TextIO | None = None
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        self._fallback = fallback  # None: whatever sys.stderr is at the time

    def msg(self, **fields: object) -> None:
        try:
            # A socket per event: nothing to close, and nothing stale after journald restarts.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(encode(fields), self.socket_path)
        except OSError:
            self._fall_back(fields)

    debug = info = warning = error = critical = msg

    def _fall_back(self, fields: Mapping[str, object]) -> None:
        prefix = f"<{fields.get('PRIORITY', PRIORITIES['info'])}>"
        lines = str(fields.get("MESSAGE", "")).splitlines() or [""]
        stream = self._fallback or sys.stderr
        try:
            stream.write("".join(f"{prefix}{line}\n" for line in lines))
            stream.flush()
        except (OSError, ValueError):  # stderr is gone too: nowhere left to say it
            pass
