"""Answers read back: bodies within the limit of their service, JSON and error pages into words.

Every answer is read in chunks up to the body limit of its service (`BODY_LIMITS`), and reading
stops once a body passes it; JSON nested deeper than `MAX_JSON_DEPTH` is refused. Either way the
answer is an `UpstreamResponseError` of one line, so that a server that never ends its answer, or
nests it without end, costs rackwatch a bounded amount of memory and never a traceback.

An error body is quoted as an `excerpt`: one short line, credentials redacted before it is cut.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from rackwatch.errors import UpstreamResponseError
from rackwatch.safe_text import NO_SECRETS

KIB = 1024
MIB = 1024 * KIB
# The most of an answer's body rackwatch reads, by service; a longer answer is refused.
BODY_LIMITS = {
    # A rack of 1,000 machines at 64 KiB each. The simulated MAAS answers 1.5 KB a machine; a
    # realistic machine (one NIC, one disk) is 7-9.5 KB, and one with bonded NICs and many
    # disks 20-50 KB.
    "maas": 64 * MIB,
    # 10,000 agents at 3.3 KiB each (the simulated record is 213 bytes); it also bounds a job
    # result with its provision output.
    "testflinger": 32 * MIB,
    # Slack answers "ok", Mattermost "ok" or a short JSON error.
    "webhook": 64 * KIB,
}
# Of an answer whose status the caller did not ask for, only this much is read: its excerpt.
ERROR_BODY_LIMIT = 64 * KIB
READ_CHUNK_BYTES = 64 * KIB
# A MAAS listing nests 8 levels deep (machine, interface, link, subnet, VLAN), Testflinger's 4.
MAX_JSON_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer whose status the caller asked for."""

    status: int
    body: bytes
    what: str  # "testflinger GET /v1/result/<id>", for messages
    redact: Callable[[str], str] = NO_SECRETS  # applied to the body's words in every message

    def json(self) -> Any:
        """The body as JSON; UpstreamResponseError when it is not JSON or nests too deeply."""
        try:
            data = json.loads(self.body)
        except ValueError:
            raise self._unreadable(
                f"a body that is not JSON: {excerpt(self.body, redact=self.redact)}"
            ) from None
        except RecursionError:
            data = None
        else:
            if not text_nests_deeper(self.body, MAX_JSON_DEPTH):
                return data
        raise self._unreadable(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")

    def _unreadable(self, why: str) -> UpstreamResponseError:
        return UpstreamResponseError(
            self.what.split(" ", 1)[0],
            f"{self.what} answered {self.status} with {why}",
            status=self.status,
        )

    def message(self) -> str:
        """The server's own words, from any of the error body shapes, credentials redacted."""
        return excerpt(self.body, redact=self.redact)


async def read_body(
    response: aiohttp.ClientResponse, what: str, *, limit: int, whole: bool, wanted: bool
) -> bytes:
    """The body of `what`'s answer, read in chunks up to `limit` bytes; past it, reading stops.

    A body needed `whole` longer than the limit raises UpstreamResponseError. Of any other only
    its head is read: up to the limit of a `wanted` one (its status is one the caller expects),
    ERROR_BODY_LIMIT bytes of an unwanted one, for its excerpt.
    """
    if not whole:
        head = await read_head(response.content, limit if wanted else min(limit, ERROR_BODY_LIMIT))
        if not response.content.at_eof():
            response.close()  # drop the connection rather than read the rest
        return head
    declared = response.content_length
    if declared is not None and declared > limit:
        response.close()
        raise _too_large(what, response.status, limit, f"its length is {declared:,} bytes")
    body = await read_within(response.content, limit)
    if body is None:
        response.close()
        raise _too_large(what, response.status, limit, "reading stopped there")
    return body


def _too_large(what: str, status: int, limit: int, why: str) -> UpstreamResponseError:
    service = what.split(" ", 1)[0]
    return UpstreamResponseError(
        service,
        f"{what} answered {status} with a body over {format_size(limit)}, the limit for"
        f" {service} answers; {why}",
        status=status,
    )


async def read_within(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, read in chunks; None as soon as it passes `limit` bytes.

    What was read is dropped then, and the rest is never read.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_head(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The first `limit` bytes of a body (all of it when shorter); the rest is left unread."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := await content.read(min(READ_CHUNK_BYTES, limit - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def nests_deeper(data: Any, limit: int) -> bool:
    """Whether decoded JSON nests lists and objects more than `limit` levels deep.

    Level by level rather than recursively, so that no depth can exhaust the stack.
    """
    level = [data] if isinstance(data, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            item
            for node in level
            for item in (node.values() if isinstance(node, dict) else node)
            if isinstance(item, (dict, list))
        ]
    return False


# Of JSON text whose escapes are dropped, only the brackets and the quotes that delimit strings.
_NOT_BRACKETS_NOR_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")


def text_nests_deeper(text: bytes, limit: int) -> bool:
    """Whether JSON text that decodes nests lists and objects more than `limit` levels deep.

    As `nests_deeper` of the decoded value, measured on the text, every step in C: without its
    escapes (so that every quote left delimits a string) and all but brackets and quotes, then
    without the strings, the text is a sequence of brackets, and each pass that drops every
    empty pair ("[]") takes one level off.
    """
    if text.count(b"[") + text.count(b"{") <= limit:
        return False  # too few lists and objects to nest that deep
    encoding = json.detect_encoding(text)
    if not encoding.startswith("utf-8"):
        text = text.decode(encoding).encode()
    marks = (
        text.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_BRACKETS_NOR_QUOTES)
    )
    # Two quotes side by side hold no bracket between them (an empty string, or the end of
    # one and the start of the next): dropping them leaves the strings' quotes paired.
    outside = marks.replace(b'""', b"").split(b'"')[::2]
    brackets = b"".join(outside).translate(_AS_SQUARE)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


def format_size(size: int) -> str:
    """A byte count the way the limits are written: "64 MiB", "64 KiB", "512 bytes"."""
    for unit, name in ((MIB, "MiB"), (KIB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size:,} bytes"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def excerpt(body: bytes, limit: int = 200, *, redact: Callable[[str], str] = NO_SECRETS) -> str:
    """A short, one-line account of an answer's body, whatever its shape.

    Testflinger answers errors in three shapes (a validation object, {"message": ...}, plain
    text or an HTML page); MAAS answers form errors as {"field": ["message"]}. `redact` runs
    before the line is cut, so that no part of a secret is left at its end.
    """
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return "(empty body)"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and not nests_deeper(data, MAX_JSON_DEPTH):
        text = _describe_json_error(data)
    elif text.lstrip().startswith("<"):
        text = "an HTML page" + (f" ({title})" if (title := _html_title(text)) else "")
    text = redact(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe_json_error(data: dict[str, Any]) -> str:
    message = data.get("message")
    detail = data.get("detail")
    parts: list[str] = []
    if message is not None:
        parts.append(str(message))
    if isinstance(detail, dict) and detail:
        parts.append(_flatten(detail))
    if not parts:
        parts.append(_flatten(data))
    return ": ".join(parts)


def _flatten(data: Any, prefix: str = "") -> str:
    if isinstance(data, dict):
        return "; ".join(
            _flatten(value, f"{prefix}{key}." if key not in ("json", "query") else prefix)
            for key, value in data.items()
        )
    if isinstance(data, list):
        return f"{prefix.rstrip('.')}: " + " ".join(str(item) for item in data)
    return f"{prefix.rstrip('.')}: {data}" if prefix else str(data)


def _html_title(text: str) -> str:
    lower = text.lower()
    start = lower.find("<title>")
    end = lower.find("</title>")
    if start == -1 or end <= start:
        return ""
    return text[start + len("<title>") : end].strip()
