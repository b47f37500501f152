"""Rows written straight into a store by the store's tests, at fixed times."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rackwatch.model import Outcome
from rackwatch.store import Store
from rackwatch.store.marks import refresh_marks

T0 = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def begin(store: Store, cycle_id: int, agent: str, minutes: float = 0, rack: str = "r1") -> int:
    return store.begin_job(
        cycle_id,
        rack=rack,
        agent=agent,
        machine=agent,
        queue=agent,
        job_id=f"job-{agent}-{minutes}",
        at=at(minutes),
    )


def record(
    store: Store,
    cycle_id: int,
    agent: str,
    outcome: Outcome | None,
    at: datetime,
    *,
    seconds: float | None = None,
    submitted_after: timedelta = timedelta(seconds=1),
    maas_status: str | None = None,
    **finish: object,
) -> int:
    """One check of `agent` in rack r1, begun at `at`: a skip for an outcome that is one, else
    a job submitted `submitted_after` later that ended `seconds` after its submission (by
    default 10 minutes and a few seconds, which differ from check to check) with `outcome` and
    `finish`, or that is still in flight (outcome None)."""
    if outcome is not None and outcome.is_skip:
        return store.record_outcome(
            cycle_id, rack="r1", agent=agent, machine=agent, outcome=outcome, at=at
        )
    check_id = store.begin_job(
        cycle_id,
        rack="r1",
        agent=agent,
        machine=agent,
        queue=agent,
        job_id=f"{agent}@{at.isoformat()}",
        at=at,
        maas_status=maas_status,
    )
    submitted = at + submitted_after
    store.mark_submitted(check_id, submitted)
    if outcome is not None:
        took = seconds if seconds is not None else 600 + at.minute + at.microsecond / 1e6
        ended = submitted + timedelta(seconds=took)
        store.finish_check(check_id, outcome=outcome, at=ended, **finish)  # type: ignore[arg-type]
    return check_id


def marks_as_computed(state_file: Path) -> list[tuple[object, ...]]:
    """The state file's marks, each row asserted to be what `refresh_marks` computes from its
    checks (on a copy of the file)."""
    copy = sqlite3.connect(":memory:", isolation_level=None)
    with closing(sqlite3.connect(state_file)) as conn:
        conn.backup(copy)
    with closing(copy):
        kept = sorted(copy.execute("SELECT * FROM marks"))
        refresh_marks(copy, [name for (name,) in copy.execute("SELECT name FROM agents")])
        assert kept == sorted(copy.execute("SELECT * FROM marks"))
    return kept
