"""The status and trend read-models on a real state file: what they return, and that every
lookup of their queries is an index search."""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rackwatch.model import Outcome
from rackwatch.store import Store
from rackwatch.store.marks import REFRESH_MARKS_SQL
from rackwatch.store.views import AGENT_FIGURES_SQL, AGENT_MARKS_SQL
from tests.stored import T0, begin, marks_as_computed


class Recorder:
    """Writes checks straight into a store, one cycle at a time, at fixed times."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.hour = 0

    def cycle(
        self, rack: str, outcomes: dict[str, Outcome | None], status: str | None = None
    ) -> int:
        self.hour += 6
        start = T0 + timedelta(hours=self.hour)
        cycle_id = self.store.start_cycle(rack, start)
        for minute, (agent, outcome) in enumerate(outcomes.items(), 1):
            at = start + timedelta(minutes=minute)
            if outcome is None or not outcome.is_skip:
                check_id = self.store.begin_job(
                    cycle_id,
                    rack=rack,
                    agent=agent,
                    machine=f"{agent}.lab",
                    queue=agent,
                    job_id=f"{agent}@{self.hour}",
                    at=at,
                )
                if outcome is not None:
                    self.store.finish_check(
                        check_id, outcome=outcome, at=at + timedelta(seconds=30)
                    )
            else:
                self.store.record_outcome(
                    cycle_id, rack=rack, agent=agent, machine=f"{agent}.lab", outcome=outcome, at=at
                )
        end = start + timedelta(minutes=30)
        if status is not None:
            self.store.finish_cycle(cycle_id, end, status)
        return cycle_id


def query_plan(path: Path, sql: str, params: Mapping[str, object]) -> list[str]:
    """The steps of SQLite's plan for `sql` on a state file created at `path`."""
    Store.open(path).close()
    conn = sqlite3.connect(path)
    try:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        conn.close()


def test_agent_states_follow_each_agents_latest_checks(tmp_path: Path) -> None:
    """Across cycles: latest outcome, the failure run, last pass, job in flight and rack moves."""
    o = Outcome
    with Store.open(tmp_path / "state.db") as store:
        recorder = Recorder(store)
        recorder.cycle("r1", {"a": o.PASSED, "b": o.FAILED, "c": o.PASSED, "gone": o.FAILED}, "ok")
        later: list[dict[str, Outcome | None]] = [
            {"a": o.FAILED, "b": o.ERROR, "c": o.PASSED, "d": o.PASSED, "e": o.PASSED},
            {"a": o.BUSY, "b": o.FAILED, "c": o.PASSED, "d": o.PASSED, "e": o.PASSED},
            {"a": o.TIMED_OUT, "b": o.OFFLINE, "c": o.PASSED, "d": None, "e": o.PASSED},
        ]
        for outcomes in later:
            recorder.cycle("r1", outcomes, "failures")
        recorder.cycle("r2", {"e": o.FAILED}, "failures")  # e moved to rack r2
        recorder.cycle("r1", {}, "error")  # MAAS could not list the rack: its agents stay listed

        states = {state.agent: state for state in store.agent_states("r1")}
        assert list(states) == ["a", "b", "c", "d"]  # by name; "gone" left, "e" moved
        a, b, c, d = states["a"], states["b"], states["c"], states["d"]
        assert a.last is not None and a.last.outcome is o.TIMED_OUT
        assert (a.consecutive_failures, a.last_passed_at) == (
            2,
            T0 + timedelta(hours=6, minutes=1, seconds=30),
        )
        assert b.last is not None and b.last.outcome is o.OFFLINE
        assert (b.consecutive_failures, b.last_passed_at) == (2, None)  # the error is no pass
        assert c.consecutive_failures == 0 and c.last_passed_at is not None
        assert c.last is not None and c.last_passed_at == c.last.finished_at
        assert d.in_flight is not None and d.in_flight.job_id == "d@24"
        assert d.last is not None and d.last.outcome is o.PASSED and d.last.job_id == "d@18"
        assert a.in_flight is None
        assert (a.rack, a.machine) == ("r1", "a.lab")

        [e] = store.agent_states("r2")
        assert (e.agent, e.consecutive_failures) == ("e", 1)
        assert e.last_passed_at == T0 + timedelta(hours=24, minutes=5, seconds=30)
        assert store.agent_states("r3") == []
        assert store.racks() == ["r1", "r2"]


def test_a_rack_that_never_got_through_lists_every_agent_it_checked(tmp_path: Path) -> None:
    """With no cycle ended ok or failures, all the rack's cycles name its agents."""
    with Store.open(tmp_path / "state.db") as store:
        recorder = Recorder(store)
        recorder.cycle("r1", {"a": Outcome.FAILED}, "interrupted")
        recorder.cycle("r1", {"b": Outcome.PASSED})  # still running
        assert [s.agent for s in store.agent_states("r1")] == ["a", "b"]


def never_scans_checks(plan: list[str]) -> bool:
    """Whether no step of a plan reads every check: a scan of the rows or of the view."""
    scans = re.compile(r"^(SCAN (c|checks|check_rows|p|newest|last|open)\b|MATERIALIZE checks)")
    return not any(scans.search(step) for step in plan)


def test_status_queries_search_indexes_and_never_scan_the_checks(tmp_path: Path) -> None:
    """Every step of the per-agent queries is an index search, so history size does not matter."""
    for sql in (AGENT_MARKS_SQL, AGENT_FIGURES_SQL):
        plan = query_plan(tmp_path / "state.db", sql, {"rack": "r1"})
        assert any("checks_cycle" in step for step in plan), plan
        assert never_scans_checks(plan), plan
        assert not any(step.startswith("SCAN cycles") for step in plan), plan


def test_refreshing_an_agents_marks_searches_indexes_only(tmp_path: Path) -> None:
    """Each lookup of an agent's marks, made as each of its checks is written, is a search."""
    params = {
        "agents": '["a"]',
        "window": 10,
        "passed": "passed",
        "failed": "failed",
        "timed_out": "timed_out",
        "stale": "stale",
    }
    plan = query_plan(tmp_path / "state.db", REFRESH_MARKS_SQL, params)
    on_checks = [step for step in plan if re.search(r"\bchecks_(agent|unfinished_agent)\b", step)]
    assert len(on_checks) >= 8, plan
    assert all(step.startswith("SEARCH") for step in on_checks), plan
    assert never_scans_checks(plan), plan


def test_trends_give_the_latest_maas_status_and_the_current_stale_run(tmp_path: Path) -> None:
    """MAAS status comes from the newest check, in flight or not; stale since the run's start."""
    o = Outcome
    with Store.open(tmp_path / "state.db") as store:
        start = datetime.now(UTC) - timedelta(days=3)
        runs: dict[str, list[tuple[Outcome | None, str]]] = {
            "back": [(o.STALE, "Deployed"), (o.PASSED, "Deployed")],
            "again": [
                (o.STALE, "Deployed"),
                (o.PASSED, "Deployed"),
                (o.STALE, "Deployed"),
                (o.STALE, "Broken"),
            ],
            "running": [(o.PASSED, "Deployed"), (None, "Failed testing")],
        }
        created: dict[str, list[datetime]] = {}
        for agent, checks in runs.items():
            for step, (outcome, maas_status) in enumerate(checks):
                at = start + timedelta(hours=6 * step)
                cycle_id = store.start_cycle(agent, at)
                created.setdefault(agent, []).append(at)
                if outcome is o.STALE:
                    store.record_outcome(
                        cycle_id,
                        rack=agent,
                        agent=agent,
                        machine=agent,
                        outcome=outcome,
                        at=at,
                        maas_status=maas_status,
                    )
                    continue
                check_id = store.begin_job(
                    cycle_id,
                    rack=agent,
                    agent=agent,
                    machine=agent,
                    queue=agent,
                    job_id=f"{agent}-{step}",
                    at=at,
                    maas_status=maas_status,
                )
                if outcome is not None:
                    store.finish_check(check_id, outcome=outcome, at=at + timedelta(minutes=9))
        trends = store.trends(list(runs))
    assert [trends[a].stale_since for a in runs] == [None, created["again"][2], None]
    assert [trends[a].maas_status for a in runs] == ["Deployed", "Broken", "Failed testing"]
    assert trends["running"].provision_s == (540.0,)  # never submitted: timed from its creation


def test_marks_brought_up_to_date_at_each_end_are_those_computed_anew(tmp_path: Path) -> None:
    """A check's end updates its agent's marks from the row it had (`mark_ended`), or computes
    them anew when the check is not the agent's newest: either way, after every write, each
    row is what `refresh_marks` computes from the checks. Ends come in a random order, skips
    land while a job runs, and some checks begin at the same instant."""
    rng = random.Random(11)  # noqa: S311 - a repeatable history
    o = Outcome
    ended = [o.PASSED] * 4 + [o.FAILED, o.TIMED_OUT, o.ERROR, o.BUSY, o.STALE, o.STALE]
    skips = [o.OFFLINE, o.STALE, o.BUSY]
    agents = ["a", "b", "c"]
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        cycle_id = store.start_cycle("r1", T0)
        open_jobs: dict[str, int] = {}
        minute = 0
        for _ in range(300):
            minute += rng.choice([0, 1, 1, 2])  # 0: the same instant as the check before
            at = T0 + timedelta(minutes=minute)
            agent = rng.choice(agents)
            if agent in open_jobs and rng.random() < 0.7:
                store.finish_check(open_jobs.pop(agent), outcome=rng.choice(ended), at=at)
            elif agent not in open_jobs and rng.random() < 0.8:
                open_jobs[agent] = begin(store, cycle_id, agent, minutes=minute)
                if rng.random() < 0.5:
                    store.mark_submitted(open_jobs[agent], at + timedelta(seconds=30))
            else:
                store.record_outcome(
                    cycle_id,
                    rack="r1",
                    agent=agent,
                    machine=agent,
                    outcome=rng.choice(skips),
                    at=at,
                )
            assert marks_as_computed(path)  # each row as computed anew, and rows there are
