"""Logging: structlog events with fields, written where their reader looks.

`configure` picks one of three outputs:
- journald: a native journal entry per event with searchable fields, when systemd connected stderr
  to the journal (see `rackwatch.journald`);
- console: readable colour lines, on a terminal;
- json: one JSON object per line with a UTC ISO timestamp, anywhere else.

Whatever the output, `Scrubber` runs before rendering so that no secret reaches a log line, and
library loggers (aiohttp, apscheduler, asyncio) are routed through the same pipeline. On the
console, control characters in values show as visible escapes (`\x1b`, `\n`), so that text from
upstream cannot move the cursor or split a line; journald's fields keep their newlines but no
other control character; JSON lines are exact, as JSON escapes them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from rackwatch import journald
from rackwatch.safe_text import REDACTED, Redactor, visible

LogFormat = Literal["auto", "console", "json", "journald"]
Output = Literal["console", "json", "journald"]


def configure(
    level: str = "info",
    fmt: LogFormat = "auto",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    journal_socket: str | os.PathLike[str] = journald.SOCKET_PATH,
) -> Output:
    """Set up structlog once, from the CLI, and return the output chosen.

    `secrets` are replaced by "***" wherever they appear. `stream` takes the console and JSON lines
    (and journald's fallback lines) instead of stderr: that is how tests capture them.
    """
    numeric = logging.getLevelNamesMapping()[level.upper()]
    lines = stream if stream is not None else sys.stderr
    output: Output = pick_output(lines, journal_socket) if fmt == "auto" else fmt
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if output == "console":
        processors.append(structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False))
    elif output == "json":
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    # Exceptions become text before scrubbing, so their messages are scrubbed too.
    processors += [structlog.processors.format_exc_info, Scrubber(secrets)]
    factory: Callable[..., WrappedLogger]
    if output == "journald":
        processors.append(journald.journal_fields)
        factory = _always(journald.JournalWriter(journal_socket, fallback=stream))
    else:
        if output == "console":
            processors += [_visible, structlog.dev.ConsoleRenderer(colors=_colour(lines))]
        else:
            processors.append(structlog.processors.JSONRenderer())
        factory = structlog.PrintLoggerFactory(lines)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    _route_standard_logging(numeric)
    return output


def pick_output(stream: TextIO, journal_socket: str | os.PathLike[str]) -> Output:
    """What "auto" means: journald under systemd, console on a terminal, JSON lines otherwise."""
    if journald.is_journal_stream(stream) and Path(journal_socket).is_socket():
        return "journald"
    return "console" if _is_terminal(stream) else "json"


_SECRET_KEY = re.compile(r"authori[sz]ation|token|secret|passw(?:or)?d|api[-_]?key", re.IGNORECASE)


class Scrubber:
    """structlog processor: keeps secrets out of every value, nested ones and exception text included.

    It removes what `safe_text.Redactor` does (the given secret strings, also percent-encoded and
    base64, any Authorization header's value, the userinfo of URLs), and the whole value of keys
    named like a credential (authorization, token, secret, password, api_key).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.text = Redactor(secrets)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {key: self._value(key, value) for key, value in event_dict.items()}

    def _value(self, key: object, value: object) -> object:
        if isinstance(key, str) and _SECRET_KEY.search(key):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, Mapping):
            return {k: self._value(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._value(None, item) for item in value]
        # Any other object (an exception, a URL) is rendered through str() or repr().
        text, representation = str(value), repr(value)
        if self.text(text) != text or self.text(representation) != representation:
            return self.text(text)
        return value


# What the console shows as it is: the event's text, and the traceback on lines of its own.
_SHOWN_AS_IT_IS = {"event": "", "exception": "\n", "stack": "\n"}  # key -> characters kept
# The console shows a value holding any of these as its repr(), which escapes control
# characters itself; any other text value it shows as it is.
_QUOTED_BY_CONSOLE = frozenset(" \t=\r\n\"'")


def _visible(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor of the console: no control character reaches the terminal as it is.

    Text the console would show as it is has its control characters turned into escapes; other
    values it shows as their repr(), which escapes them already.
    """
    shown = {}
    for key, value in event_dict.items():
        if isinstance(value, str) and key in _SHOWN_AS_IT_IS:
            value = visible(value, keep=_SHOWN_AS_IT_IS[key])
        elif isinstance(value, str) and not _QUOTED_BY_CONSOLE.intersection(value):
            value = visible(value)
        shown[key] = value
    return shown


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False


def _colour(stream: TextIO) -> bool:
    return _is_terminal(stream) and "NO_COLOR" not in os.environ


def _always(logger: WrappedLogger) -> Callable[..., WrappedLogger]:
    return lambda *_: logger


def _route_standard_logging(level: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToStructlog)]:
        root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    # Libraries are chatty below WARNING; their debug output is not what a rackwatch reader wants.
    root.setLevel(max(level, logging.WARNING))


_STRUCTLOG_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


class _ToStructlog(logging.Handler):
    """Hands standard-library log records to structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        # structlog knows only the five standard levels; a custom one counts as the one below it.
        level = max((n for n in _STRUCTLOG_LEVELS if n <= record.levelno), default=logging.DEBUG)
        try:
            structlog.get_logger(record.name).log(
                level,
                record.getMessage(),
                logger=record.name,
                exc_info=record.exc_info or False,
            )
        except Exception:
            self.handleError(record)
