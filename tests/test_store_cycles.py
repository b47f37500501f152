"""The job ledger on a real state file: checks and their jobs, and the cycles they belong to."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from rackwatch.errors import StoreError
from rackwatch.model import Outcome
from rackwatch.store import Store
from tests.stored import T0, at, begin


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store.open(path) as store:
        yield store


# checks


def test_job_round_trip(store: Store) -> None:
    """A job is unfinished from begin_job until finish_check, and keeps every field given."""
    cycle_id = store.start_cycle("r1", at(0))
    check_id = begin(store, cycle_id, "agent-1", minutes=1)

    [pending] = store.unfinished()
    assert pending.id == check_id
    assert (pending.job_id, pending.queue, pending.outcome) == ("job-agent-1-1", "agent-1", None)
    assert pending.submitted_at is None
    assert pending.duration_s is None

    store.mark_submitted(check_id, at(2))
    store.finish_check(
        check_id, outcome=Outcome.FAILED, at=at(12), detail="provision failed", provision_status=1
    )
    assert store.unfinished() == []
    [done] = store.checks_of_cycle(cycle_id)
    assert done.outcome is Outcome.FAILED
    assert (done.detail, done.provision_status) == ("provision failed", 1)
    assert (done.created_at, done.submitted_at, done.finished_at) == (at(1), at(2), at(12))
    assert done.duration_s == 600.0


def test_recorded_outcome_is_final_at_once(store: Store) -> None:
    """A skip is stored finished, with no job, and never shows as unfinished."""
    cycle_id = store.start_cycle("r1", at(0))
    store.record_outcome(
        cycle_id,
        rack="r1",
        agent="m7",
        machine="m7",
        outcome=Outcome.NO_AGENT,
        detail="no agent",
        at=at(1),
    )
    [check] = store.checks_of_cycle(cycle_id)
    assert (check.outcome, check.job_id, check.queue) == (Outcome.NO_AGENT, None, None)
    assert check.finished_at == at(1)
    assert check.duration_s == 0.0
    assert store.unfinished() == []


def test_timestamps_are_stored_and_read_as_utc(store: Store, path: Path) -> None:
    """An aware time in any zone is stored as UTC ISO text and read back as the same instant."""
    cycle_id = store.start_cycle(
        "r1", datetime(2026, 11, 27, 7, 0, tzinfo=timezone(timedelta(hours=2)))
    )
    record = store.cycle(cycle_id)
    assert record.started_at == T0
    assert record.started_at.utcoffset() == timedelta(0)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT started_at FROM cycles").fetchone()[0] == (
        "2026-11-27T05:00:00.000000+00:00"
    )
    conn.close()


def test_naive_datetimes_are_refused(store: Store) -> None:
    """A time without a zone is a bug in the caller, not something to guess about."""
    with pytest.raises(ValueError, match="naive"):
        store.start_cycle("r1", datetime(2026, 11, 27, 5, 0))


def test_one_unfinished_job_per_agent(store: Store, path: Path) -> None:
    """An agent with an unfinished job cannot get another until the first has an outcome."""
    cycle_id = store.start_cycle("r1", at(0))
    first = begin(store, cycle_id, "agent-1", minutes=1)
    with pytest.raises(StoreError, match="agent-1"):
        begin(store, cycle_id, "agent-1", minutes=2)
    assert [c.id for c in store.unfinished()] == [first]

    store.finish_check(first, outcome=Outcome.PASSED, at=at(3))
    second = begin(store, cycle_id, "agent-1", minutes=4)
    assert [c.id for c in store.unfinished()] == [second]

    # The rule lives in the database, so it holds for any writer.
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO check_rows (cycle_id, rack, agent_id, created_at)"
            " SELECT ?, 'r1', id, 0 FROM agents WHERE name = 'agent-1'",
            (cycle_id,),
        )
    conn.close()


def test_finished_check_is_never_finished_again(store: Store) -> None:
    """finish_check on a check that has an outcome raises and keeps the first outcome."""
    cycle_id = store.start_cycle("r1", at(0))
    check_id = begin(store, cycle_id, "agent-1")
    store.finish_check(check_id, outcome=Outcome.PASSED, at=at(1))
    with pytest.raises(StoreError, match=f"unfinished check {check_id}"):
        store.finish_check(check_id, outcome=Outcome.ERROR, at=at(2))
    assert store.checks_of_cycle(cycle_id)[0].outcome is Outcome.PASSED


def test_job_of_an_unknown_cycle_is_refused(store: Store) -> None:
    """Foreign keys are on: a check must belong to a cycle that exists."""
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        begin(store, 999, "agent-1")


def test_unfinished_is_oldest_first_and_filters_by_rack(store: Store) -> None:
    """unfinished() lists the jobs with no outcome, oldest first, of one rack or all."""
    r1 = store.start_cycle("r1", at(0))
    r2 = store.start_cycle("r2", at(0))
    begin(store, r1, "late", minutes=5)
    begin(store, r2, "other", minutes=3, rack="r2")
    begin(store, r1, "early", minutes=1)
    assert [c.agent for c in store.unfinished()] == ["early", "other", "late"]
    assert [c.agent for c in store.unfinished("r1")] == ["early", "late"]


# cycles


def test_start_cycle_takes_over_the_unfinished_jobs_of_its_rack(store: Store) -> None:
    """A cycle starting while an earlier one is unfinished interrupts it and adopts its jobs."""
    old = store.start_cycle("r1", at(0))
    other = store.start_cycle("r2", at(0))
    pending = begin(store, old, "agent-1", minutes=1)
    done = begin(store, old, "agent-2", minutes=1)
    store.finish_check(done, outcome=Outcome.PASSED, at=at(5))
    elsewhere = begin(store, other, "agent-9", minutes=1, rack="r2")

    new = store.start_cycle("r1", at(60))

    interrupted = store.cycle(old)
    assert (interrupted.status, interrupted.finished_at) == ("interrupted", at(60))
    assert [c.id for c in store.checks_of_cycle(new)] == [pending]
    assert [c.id for c in store.checks_of_cycle(old)] == [done]
    assert [c.id for c in store.checks_of_cycle(other)] == [elsewhere]
    assert store.cycle(other).status is None
    assert store.cycle(new).status is None


def test_start_cycle_leaves_finished_cycles_as_they_were(store: Store) -> None:
    """A finished cycle keeps its status, while its unfinished jobs still move to the next cycle."""
    old = store.start_cycle("r1", at(0))
    pending = begin(store, old, "agent-1")
    store.finish_cycle(old, at(10), "interrupted")
    store.finish_cycle(old, at(10), "failures", "a reason")
    new = store.start_cycle("r1", at(60))
    record = store.cycle(old)
    assert (record.status, record.finished_at, record.error) == ("failures", at(10), "a reason")
    assert [c.id for c in store.checks_of_cycle(new)] == [pending]


def test_last_cycle_is_the_latest_started_of_the_rack(store: Store) -> None:
    """last_cycle returns the rack's cycle that started last, or None for a rack never checked."""
    first = store.start_cycle("r1", at(0))
    store.finish_cycle(first, at(1), "ok")
    store.start_cycle("r2", at(2))
    second = store.start_cycle("r1", at(3))
    last = store.last_cycle("r1")
    assert last is not None
    assert (last.id, last.started_at, last.finished_at) == (second, at(3), None)
    assert store.last_cycle("r3") is None


def test_unknown_cycle_status_and_cycle_are_refused(store: Store) -> None:
    """finish_cycle accepts only the known statuses, and a missing cycle is a StoreError."""
    cycle_id = store.start_cycle("r1", at(0))
    with pytest.raises(ValueError, match="done"):
        store.finish_cycle(cycle_id, at(1), "done")
    with pytest.raises(StoreError, match="no cycle 999"):
        store.finish_cycle(999, at(1), "ok")
    with pytest.raises(StoreError, match="no cycle 999"):
        store.cycle(999)


def test_history_is_newest_first_and_limited(store: Store) -> None:
    """history() returns one agent's latest checks, newest first, at most `limit` of them."""
    for minutes in range(5):
        cycle_id = store.start_cycle("r1", at(minutes * 60))
        check_id = begin(store, cycle_id, "agent-1", minutes=minutes * 60 + 1)
        store.finish_check(check_id, outcome=Outcome.PASSED, at=at(minutes * 60 + 2))
        begin(store, cycle_id, f"agent-{minutes + 2}", minutes=minutes * 60 + 1)
    history = store.history("agent-1", limit=3)
    assert [c.created_at for c in history] == [at(241), at(181), at(121)]
    assert {c.agent for c in history} == {"agent-1"}
    assert len(store.history("agent-1")) == 5
