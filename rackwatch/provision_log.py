"""The end of a failed job's provision output that says something, and its line that says why.

Pure text functions: the check keeps `excerpt()` of a failed or timed-out job's provision_output,
and the renderers show `error_line()` where there is room for one line only.
"""

from __future__ import annotations

import re

from rackwatch.safe_text import NO_SECRETS, Redactor

MAX_LINES = 20
MAX_BYTES = 4096

# Testflinger's phase banners ("*** TESTFLINGER SYSTEM RUN [provision] ***") and rules of one
# character ("=====", "-----") say nothing about the machine.
_BANNER = re.compile(r"^\s*(\*{3}.*\*{3}|([*=#~_-])\2{3,})\s*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ERRORISH = re.compile(
    r"error|fail|fatal|exception|traceback|timed? ?out|cannot|can't|could not|unable"
    r"|refused|denied|panic|abort|not found|no such",
    re.IGNORECASE,
)


def excerpt(
    output: str | None,
    *,
    redact: Redactor = NO_SECRETS,
    max_lines: int = MAX_LINES,
    max_bytes: int = MAX_BYTES,
) -> str | None:
    """The last lines of `output` that say something, at most `max_lines` and `max_bytes`.

    Banners and blank lines are dropped, control characters shown as escapes (`\\x1b`), tabs as
    spaces, and the credentials `redact` knows of as `***`. None when nothing is left.
    """
    if not output:
        return None
    output = redact(output)
    kept: list[str] = []
    size = 0
    for raw in reversed(output.splitlines()):
        line = _visible(raw.replace("\t", " ").rstrip())
        if not line.strip() or _BANNER.match(line):
            continue
        cost = len(line.encode()) + (1 if kept else 0)
        if size + cost > max_bytes:
            if not kept:  # one line longer than the whole budget: keep its end
                kept.append("…" + _tail(line, max_bytes - len("…".encode())))
            break
        kept.append(line)
        size += cost
        if len(kept) == max_lines:
            break
    return "\n".join(reversed(kept)) or None


def error_line(text: str | None) -> str | None:
    """The last line of an excerpt that reads like an error, else its last line."""
    if not text:
        return None
    lines = text.splitlines()
    for line in reversed(lines):
        if _ERRORISH.search(line):
            return line.strip()
    return lines[-1].strip()


def _visible(line: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


def _tail(line: str, max_bytes: int) -> str:
    data = line.encode()[-max_bytes:]
    return data.decode("utf-8", "ignore")
