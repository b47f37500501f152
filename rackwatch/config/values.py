"""The kinds of value the configuration holds: durations, URLs, rack names, addresses, job keys.

Each check raises ValueError with the words that follow the key in a configuration error.
May import: pydantic.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

from rackwatch.errors import UsageError

# Top-level keys of Testflinger's job schema that a template may set; job_queue and job_id are ours.
JOB_KEYS = frozenset(
    {"provision_data", "test_data", "reserve_data", "allocate_data", "firmware_update_data"}
    | {"global_timeout", "output_timeout", "allocation_timeout", "job_priority", "tags", "name"}
    | {"exclude_agents", "job_status_webhook", "parent_job_id", "debug"}
)

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_DURATION = re.compile(rf"{_NUMBER}|(?:{_NUMBER}(?:ms|s|m|h|d))+")
_DURATION_HELP = "use seconds or a number with a unit ms, s, m, h or d, e.g. 500ms, 15m, 1h30m"


def parse_duration(value: str | int | float) -> timedelta:
    """Turn seconds (30, 0.2, "30") or a string with units ("500ms", "6h", "1h30m") into a timedelta.

    Raises ValueError for anything else and for negative values; zero is allowed here.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be a duration: {_DURATION_HELP}")
    if isinstance(value, str):
        text = value.strip()
        if not _DURATION.fullmatch(text):
            raise ValueError(f"invalid duration {value!r}: {_DURATION_HELP}")
        parts = _PART.findall(text) or [(text, "s")]
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError("must be a finite number of seconds")
    if seconds < 0:
        raise ValueError("must not be negative")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError("duration is too long") from None


def _to_duration(value: object) -> object:
    return value if isinstance(value, timedelta) else parse_duration(value)  # type: ignore[arg-type]


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be greater than 0")
    return value


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative")
    return value


Duration = Annotated[timedelta, BeforeValidator(_to_duration), AfterValidator(_positive)]
DurationOrZero = Annotated[timedelta, BeforeValidator(_to_duration), AfterValidator(_not_negative)]


def normalise_url(value: str, *, strip_suffix: str = "") -> str:
    """Check an http(s) base URL and make it end with exactly one "/"."""
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    url = parts.geturl().rstrip("/")
    if strip_suffix and url.endswith(strip_suffix):
        url = url.removesuffix(strip_suffix).rstrip("/")
    return url + "/"


# MAAS tag names; anything else can never be a tag, and an empty filter lists every machine.
RACK_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_rack_name(rack: str) -> str:
    """Refuse a rack name that cannot be a MAAS tag, before any request is made."""
    if not rack.strip():
        raise UsageError("a rack name cannot be empty (MAAS would list every machine)")
    if not RACK_NAME.match(rack):
        raise UsageError(f"{rack!r} cannot be a MAAS tag: use letters, digits, '-' and '_' only")
    return rack


def _check_rack(name: str) -> str:
    if not name:
        raise ValueError("rack name must not be empty")
    if not name.strip():
        raise ValueError("rack name must not be blank")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(
            f"rack name {name!r} must be a MAAS tag: letters, digits, '-' and '_' only"
        )
    return name


def check_job_key(key: str) -> str:
    """A key of [job]: a field of Testflinger's job schema that rackwatch does not set itself."""
    if key in ("job_queue", "job_id"):
        raise ValueError(f"rackwatch sets {key} itself; remove it from [job]")
    if key not in JOB_KEYS:
        close = close_to(key, JOB_KEYS)
        also = f"; did you mean {close!r}?" if close else ""
        raise ValueError(f"unknown key (not a Testflinger job field{also})")
    return key


def _not_empty(value: object) -> object:
    if value == "":
        raise ValueError("must not be empty")
    return value


StateFile = Annotated[Path, BeforeValidator(_not_empty)]
Rack = Annotated[str, AfterValidator(_check_rack)]


def split_address(text: str, *, lowest_port: int = 1) -> tuple[str, int]:
    """The (host, port) of HOST:PORT, the host an address or a name, brackets of an IPv6 host
    removed.

    Raises:
        ValueError: not HOST:PORT with a host, or a port outside `lowest_port`..65535.
    """
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not lowest_port <= int(port) < 65536:
        raise ValueError("must be host:port, e.g. 127.0.0.1:9464")
    return host, int(port)


def _check_address(value: str) -> str:
    value = value.strip()
    if value:
        split_address(value)
    return value


Address = Annotated[str, AfterValidator(_check_address)]  # host:port, or "" for none


def address(listen: str) -> tuple[str, int] | None:
    """The (host, port) of an `Address`; None for ""."""
    return split_address(listen) if listen else None


def close_to(key: str, known: Iterable[str]) -> str | None:
    """The one of `known` closest to `key` by difflib's measure, if any is close enough."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return close[0] if close else None
