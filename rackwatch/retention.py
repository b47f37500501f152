"""Pruning the state file in small steps, between the daemon's other work.

`cutoffs` decides, from `now` and `history.keep_checks`, what is old: checks created before the
start (UTC) of the day `keep_checks` ago become one row per agent and day, and cycles,
transitions, delivered alerts, closed incidents and those day rows older than a year go.
`prune` does it in steps of a few thousand rows, each its own short transaction, yielding to
the event loop between them, so that job tracking and scrapes go on meanwhile.
May import: `store`, `structlog`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from rackwatch.store import Store

log = structlog.get_logger("rackwatch.retention")

KEEP_HISTORY = timedelta(days=365)  # cycles, transitions, incidents, alerts and day rows
STEP_ROWS = 1000  # the rows one transaction prunes at most


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """What is old at a given time."""

    checks: datetime  # checks created before this are summarised by day, then deleted
    history: datetime  # the rest older than this goes


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What one `prune` did and how long it took."""

    checks: int  # checks summarised and deleted
    history: int  # other rows deleted
    steps: int  # transactions
    seconds: float  # from the first step to the last, yields included
    longest_step_s: float  # the longest single transaction


def cutoffs(now: datetime, keep_checks: timedelta) -> Cutoffs:
    """Checks are kept whole for `keep_checks`, from the start of that day on (UTC), so that a
    day is summarised whole; the rest is kept a year, or as long as the checks if longer."""
    oldest = (now - keep_checks).astimezone(UTC)
    day = datetime(oldest.year, oldest.month, oldest.day, tzinfo=UTC)
    return Cutoffs(checks=day, history=min(day, now - KEEP_HISTORY))


async def prune(
    store: Store,
    *,
    now: datetime,
    keep_checks: timedelta,
    rows: int = STEP_ROWS,
    should_stop: Callable[[], bool] = lambda: False,
) -> PruneReport:
    """Prune what is old at `now`, one short transaction at a time; the loop runs between.

    Once `should_stop()` is true, no further step starts: the rest is pruned next time.
    """
    cut = cutoffs(now, keep_checks)
    started = time.perf_counter()
    longest = 0.0
    checks = history = steps = 0
    after: int | None = 0
    while after is not None and not should_stop():
        began = time.perf_counter()
        pruned = store.prune_checks(cut.checks, after=after, rows=rows)
        longest = max(longest, time.perf_counter() - began)
        checks, steps, after = checks + pruned.rows, steps + 1, pruned.next_id
        await asyncio.sleep(0)
    more = True
    while more and not should_stop():
        began = time.perf_counter()
        gone, more = store.prune_history(cut.history, rows=rows)
        longest = max(longest, time.perf_counter() - began)
        history, steps = history + gone, steps + 1
        await asyncio.sleep(0)
    report = PruneReport(checks, history, steps, time.perf_counter() - started, longest)
    if checks or history:
        log.info(
            "state.pruned",
            checks=checks,
            history=history,
            steps=steps,
            seconds=round(report.seconds, 3),
            longest_step_s=round(longest, 4),
            before=cut.checks.isoformat(),
        )
    return report
