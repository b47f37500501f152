"""What the store reads back: one frozen record type per kind of row or summary, and the
functions that build a record from a database row. Imports only the standard library,
`rackwatch.model` and the store's `_db`.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import date, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from rackwatch.model import Outcome
from rackwatch.store._db import as_time

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclass(frozen=True, slots=True)
class CheckRecord:
    """One agent checked in one cycle: a final outcome, or a job still being tracked."""

    id: int
    cycle_id: int
    rack: str
    agent: str
    machine: str | None
    queue: str | None
    job_id: str | None
    outcome: Outcome | None  # None while the job is unfinished
    detail: str
    provision_status: int | None
    created_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    # What became of its job after the check ended (a timed-out job that ran on), once seen.
    late_result: str | None = None
    # The end of its job's provision output that says something, for a failed or timed-out job.
    provision_log: str | None = None

    @property
    def duration_s(self) -> float | None:
        """Seconds from submission (or creation, if never submitted) to the end; None if unfinished."""
        if self.finished_at is None:
            return None
        return (self.finished_at - (self.submitted_at or self.created_at)).total_seconds()


@dataclass(frozen=True, slots=True)
class CycleRecord:
    """One rack checked once. `status` is None while the cycle runs."""

    id: int
    rack: str
    started_at: datetime
    finished_at: datetime | None
    status: str | None
    error: str | None
    partial: bool = False  # of a few named agents only (run-once --agent), not the whole rack


@dataclass(frozen=True, slots=True)
class AgentState:
    """Where one agent stands now, as `rackwatch status` shows it."""

    agent: str
    rack: str  # the rack of its latest check
    machine: str | None
    last: CheckRecord | None  # the latest check with an outcome; None before the first ends
    # Checks failed or timed out since the last pass: a pass ends the run, and skips and
    # errors (which say nothing about the machine) neither end nor extend it.
    consecutive_failures: int
    last_passed_at: datetime | None
    in_flight: CheckRecord | None  # the check whose job has no outcome yet


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """A rack incident; open while `closed_at` is None."""

    id: int
    rack: str
    opened_at: datetime
    closed_at: datetime | None
    reason: str


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One rack cycle's health changes, to be announced once."""

    id: int
    cycle_id: int
    rack: str
    created_at: datetime
    body: dict[str, Any]
    attempts: int
    delivered_at: datetime | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class AgentTrend:
    """An agent's recent record, shown beside its health by `rackwatch status`."""

    agent: str
    judged: int  # its latest checks that passed, failed or timed out, at most the window
    passed: int  # how many of those passed
    # Seconds from submission to the end of each of its latest passed jobs, newest first.
    provision_s: tuple[float, ...]
    maas_status: str | None  # the MAAS status_name of its machine at its latest check
    stale_since: datetime | None  # when its current run of stale checks began; None if not stale


# A provision log this long or longer is stored compressed; a shorter one gains nothing.
PACKED_FROM = 256


def pack_log(text: str | None) -> str | bytes | None:
    """A provision log as a check stores it: zlib-compressed UTF-8 (a BLOB) once it is long."""
    if text is None or len(text) < PACKED_FROM:
        return text
    return zlib.compress(text.encode(), 9)


def unpack_log(stored: str | bytes | None) -> str | None:
    """A stored provision log read back as its text (`pack_log` undone)."""
    if isinstance(stored, bytes):
        return zlib.decompress(stored).decode()
    return stored


@dataclass(frozen=True, slots=True)
class AgentFigures:
    """What the metrics show of one agent, read from its marks."""

    agent: str
    last_check_at: datetime | None  # when its latest finished check ended
    consecutive_failures: int  # failed or timed out since its last pass
    last_provision_s: float | None  # its latest passed job, from submission to its end


@dataclass(frozen=True, slots=True)
class DayRecord:
    """One agent's checks of one day (UTC), counted: summarised, or counted from its checks."""

    agent: str
    day: date
    rack: str
    checks: int  # its checks created that day that have an outcome
    passed: int
    failed: int
    timed_out: int
    errors: int
    provision_s: float  # the passed jobs' provisioning times, added up (whole milliseconds)

    @property
    def pass_rate(self) -> float | None:
        """Passed of the judged checks (passed, failed, timed out); None with none judged."""
        judged = self.passed + self.failed + self.timed_out
        return self.passed / judged if judged else None

    @property
    def provision_mean_s(self) -> float | None:
        return self.provision_s / self.passed if self.passed else None


def pack_job(job_id: str) -> str | bytes:
    """A job id as a check stores it: a UUID in its canonical text as its 16 bytes, else text."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        return job_id
    return parsed.bytes if str(parsed) == job_id else job_id


def unpack_job(stored: str | bytes | None) -> str | None:
    """A stored job id read back as its text (`pack_job` undone)."""
    if isinstance(stored, bytes):
        return str(uuid.UUID(bytes=stored))
    return stored


def pack_name(name: str | None, agent: str) -> str | None:
    """A check's machine or queue as stored: "" when it is the agent's own name, as is usual."""
    return "" if name == agent else name


def unpack_name(stored: str | None, agent: str) -> str | None:
    return agent if stored == "" else stored


def cycle_from(row: sqlite3.Row) -> CycleRecord:
    return CycleRecord(**_columns(row, CycleRecord))


def check_from(row: sqlite3.Row) -> CheckRecord:
    columns = _columns(row, CheckRecord)
    agent = columns["agent"]
    columns["machine"] = unpack_name(columns["machine"], agent)
    columns["queue"] = unpack_name(columns["queue"], agent)
    return CheckRecord(**columns)


def incident_from(row: sqlite3.Row) -> IncidentRecord:
    return IncidentRecord(**_columns(row, IncidentRecord))


def alert_from(row: sqlite3.Row) -> AlertRecord:
    return AlertRecord(**_columns(row, AlertRecord))


def _columns(row: sqlite3.Row, record: type[DataclassInstance]) -> dict[str, Any]:
    """The row's column of each field of `record`, read back as the field holds it."""
    return {name: read(row[name]) for name, read in _readers(record)}


@cache
def _readers(record: type[DataclassInstance]) -> list[tuple[str, Callable[[Any], Any]]]:
    """Each field of `record`, with how its column is read back (found once per record type)."""
    return [(field.name, _reader(field.name)) for field in fields(record)]


def _reader(column: str) -> Callable[[Any], Any]:
    # A record's times are its `*_at` columns, of UTC ISO text or (a check's) integer
    # microseconds; an alert's body is JSON; a provision log may be compressed.
    if column.endswith("_at"):
        return as_time
    readers: dict[str, Callable[[Any], Any]] = {
        "outcome": lambda stored: None if stored is None else Outcome(stored),
        "body": json.loads,
        "partial": bool,
        "provision_log": unpack_log,
        "job_id": unpack_job,
    }
    return readers.get(column, _as_stored)


def _as_stored(stored: Any) -> Any:
    return stored
