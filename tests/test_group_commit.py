"""The checks' writes of one turn of the event loop, in one transaction, on a real state file."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from functools import partial
from pathlib import Path

import pytest

from rackwatch.errors import StoreError
from rackwatch.group_commit import GroupCommit
from rackwatch.model import Outcome
from rackwatch.store import Store
from tests.stored import at, begin


def committed_checks(path: Path) -> list[tuple[str, str | None]]:
    """The checks another connection sees: (agent, outcome), by id."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT agent, outcome FROM checks ORDER BY id").fetchall()
    return [(agent, outcome) for agent, outcome in rows]


def test_a_batch_commits_its_writes_together_and_a_failed_one_undoes_only_itself(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        cycle_id = store.start_cycle("r1", at(0))
        with store.batch():
            first = begin(store, cycle_id, "a", minutes=1)
            with pytest.raises(StoreError, match="already has an unfinished job"):
                begin(store, cycle_id, "a", minutes=2)  # one unfinished job per agent
            begin(store, cycle_id, "b", minutes=3)
            assert committed_checks(path) == []  # nothing is seen before the batch ends
        store.finish_check(first, outcome=Outcome.PASSED, at=at(4))  # a write of its own
    assert committed_checks(path) == [("a", "passed"), ("b", None)]


def test_an_error_out_of_the_batch_undoes_every_write_in_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        cycle_id = store.start_cycle("r1", at(0))
        with pytest.raises(RuntimeError), store.batch():
            begin(store, cycle_id, "a", minutes=1)
            raise RuntimeError("the block failed")
        begin(store, cycle_id, "b", minutes=2)
    assert committed_checks(path) == [("b", None)]


async def test_writes_asked_for_in_one_turn_share_a_transaction(tmp_path: Path) -> None:
    """Forty tasks begin their jobs at once: one transaction, each begin durable (seen by
    another connection) when its await returns; a write that fails raises in its caller only."""
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        write = GroupCommit(store)
        cycle_id = store.start_cycle("r1", at(0))
        seen_at_return: list[int] = []

        async def begin_one(agent: str) -> int:
            check_id = await write(partial(begin, store, cycle_id, agent, 1))
            seen_at_return.append(len(committed_checks(path)))
            return check_id

        agents = [f"m{n}" for n in range(40)]
        results = await asyncio.gather(
            *(begin_one(agent) for agent in [*agents, "m7"]), return_exceptions=True
        )
        check_ids = [result for result in results if isinstance(result, int)]
        assert write.transactions == 1
        assert len(check_ids) == 40
        assert isinstance(results[40], StoreError)  # m7's second unfinished job
        assert seen_at_return == [40] * 40

        # The ends of the next turn: one transaction more.
        ends = [partial(store.finish_check, c, outcome=Outcome.PASSED, at=at(9)) for c in check_ids]
        await asyncio.gather(*(write(end) for end in ends))
        assert write.transactions == 2
    assert committed_checks(path) == [(agent, "passed") for agent in agents]


async def test_a_batch_that_cannot_commit_fails_every_write_in_it(tmp_path: Path) -> None:
    """Another connection holds the file's write lock for longer than the busy timeout: no
    write of the turn was made, and each of its callers hears so."""
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        write = GroupCommit(store)
        cycle_id = store.start_cycle("r1", at(0))
        store._conn.execute("PRAGMA busy_timeout = 50")
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            results = await asyncio.gather(
                write(partial(begin, store, cycle_id, "a", 1)),
                write(partial(begin, store, cycle_id, "b", 1)),
                return_exceptions=True,
            )
            other.execute("ROLLBACK")
        assert [type(result) for result in results] == [StoreError, StoreError]
        assert "locked" in str(results[0])
        assert write.transactions == 0
        await write(partial(begin, store, cycle_id, "c", 2))  # the next turn writes again
    assert committed_checks(path) == [("c", None)]
