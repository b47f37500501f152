"""Rows written straight into a store by the store's tests, at fixed times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rackwatch.store import Store

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
