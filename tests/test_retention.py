"""Retention on a real state file: what pruning keeps, what it summarises, in short steps; the
marks that status and the metrics read agree with the checks; migration 7 keeps a file's data."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections import Counter
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rackwatch import retention
from rackwatch.model import Outcome
from rackwatch.render.history import history_json, history_text
from rackwatch.store import MIGRATIONS, CheckRecord, DayRecord, Store, _db
from rackwatch.store.records import CycleRecord
from tests.harness import rackwatch
from tests.stored import record

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEEP = timedelta(days=3)
o = Outcome


def a_week(store: Store, agents: dict[str, list[Outcome]]) -> None:
    """Two cycles a day for the last week, each agent's outcomes in turn."""
    for step in range(14):
        at = NOW - timedelta(days=7) + timedelta(hours=12 * step, microseconds=step * 7)
        cycle_id = store.start_cycle("r1", at)
        for agent, outcomes in agents.items():
            record(store, cycle_id, agent, outcomes[step % len(outcomes)], at)
        store.finish_cycle(cycle_id, at + timedelta(hours=1), "failures")


def prune(store: Store, rows: int = 3) -> retention.PruneReport:
    return asyncio.run(retention.prune(store, now=NOW, keep_checks=KEEP, rows=rows))


def every_check(store: Store, agent: str) -> list[CheckRecord]:
    return store.history(agent, limit=10_000)


def test_cutoffs_keep_whole_days_of_checks_and_a_year_of_the_rest() -> None:
    cut = retention.cutoffs(NOW, KEEP)
    assert cut.checks == datetime(2026, 11, 28, tzinfo=UTC)
    assert cut.history == NOW - timedelta(days=365)
    assert retention.cutoffs(NOW, timedelta(days=400)).history == datetime(2025, 10, 27, tzinfo=UTC)


def test_pruning_keeps_recent_checks_whole_and_counts_older_days(tmp_path: Path) -> None:
    """Checks since the cutoff day stay as they were; older ones become their days' counts,
    and pass rates and provisioning times over the week agree before and after."""
    with Store.open(tmp_path / "state.db") as store:
        a_week(
            store,
            {
                "a": [o.PASSED, o.PASSED, o.FAILED, o.TIMED_OUT, o.BUSY, o.ERROR],
                "b": [o.PASSED],
                "c": [o.OFFLINE, o.PASSED, o.FAILED],
            },
        )
        cut = retention.cutoffs(NOW, KEEP).checks
        before = {agent: store.days(agent) for agent in "abc"}
        recent = {
            agent: [c for c in every_check(store, agent) if c.created_at >= cut] for agent in "abc"
        }
        report = prune(store)
        after = {agent: store.days(agent) for agent in "abc"}
        kept = {agent: every_check(store, agent) for agent in "abc"}
    assert after == before
    assert kept == recent
    assert report.checks == 3 * 14 - sum(len(checks) for checks in recent.values())
    assert report.steps > report.checks // 3  # three rows at most per transaction
    [first] = [day for day in after["a"] if day.day == (NOW - timedelta(days=7)).date()]
    assert (first.checks, first.passed, first.failed, first.timed_out) == (1, 1, 0, 0)
    week_a = _total(after["a"])
    assert (week_a.checks, week_a.passed, week_a.failed, week_a.timed_out, week_a.errors) == (
        14,
        6,
        2,
        2,
        2,
    )
    assert week_a.provision_s == 6 * 600  # whole milliseconds


def test_pruning_leaves_unfinished_and_lingering_checks(tmp_path: Path) -> None:
    """A job still followed, or one that may run on at Testflinger, is never pruned."""
    old = NOW - timedelta(days=10)
    with Store.open(tmp_path / "state.db") as store:
        cycle_id = store.start_cycle("r1", old)
        unfinished = record(store, cycle_id, "open", None, old)
        lingering = record(store, cycle_id, "run-on", o.TIMED_OUT, old, lingering=True)
        gone = record(store, cycle_id, "done", o.PASSED, old)
        store.finish_cycle(cycle_id, old + timedelta(hours=1), "failures")
        report = prune(store)
        assert [c.id for c in store.unfinished()] == [unfinished]
        assert [c.id for c in store.lingering("r1")] == [lingering]
        assert every_check(store, "done") == []
        assert report.checks == 1
        assert [(d.checks, d.passed) for d in store.days("done")] == [(1, 1)]
        # Once settled, the lingering check goes with the next pruning, counted once.
        store.settle_late(lingering, "seen ended later")
        prune(store)
        assert every_check(store, "run-on") == []
        assert [(d.checks, d.timed_out) for d in store.days("run-on")] == [(1, 1)]
    assert gone != lingering


def test_pruning_history_keeps_open_incidents_and_undelivered_alerts(tmp_path: Path) -> None:
    """After a year: cycles, transitions, delivered alerts and closed incidents go."""
    old = NOW - timedelta(days=400)
    with Store.open(tmp_path / "state.db") as store:
        for rack, closing_too in (("closed", True), ("open", False)):
            cycle_id = store.start_cycle(rack, old)
            store.finish_cycle(cycle_id, old + timedelta(hours=1), "failures")
            cycle = store.cycle(cycle_id)
            store.record_health(
                cycle, changes=[], incident_opened="a switch", incident_closed=False,
                alert={"text": "opened"}, at=old,
            )  # fmt: skip
            if closing_too:
                later = store.start_cycle(rack, old + timedelta(hours=6))
                store.finish_cycle(later, old + timedelta(hours=7), "ok")
                store.record_health(
                    store.cycle(later), changes=[], incident_opened=None, incident_closed=True,
                    alert=None, at=old + timedelta(hours=7),
                )  # fmt: skip
        [pending] = [a for a in store.pending_alerts() if a.rack == "open"]
        for alert in store.pending_alerts():
            if alert.rack == "closed":
                store.alert_delivered(alert.id, old)
        prune(store, rows=1)
        assert store.incidents("closed") == []
        assert [i.reason for i in store.incidents("open")] == ["a switch"]
        assert store.open_incident("open") is not None
        assert [a.id for a in store.pending_alerts()] == [pending.id]
        assert store.last_cycle("closed") is None
        assert isinstance(store.last_cycle("open"), CycleRecord)


def test_marks_agree_with_the_checks_they_are_kept_from(tmp_path: Path) -> None:
    """Status and the metrics read each agent's marks; they say what the checks say."""
    rng = random.Random(3)  # noqa: S311 - a repeatable history
    choices = [o.PASSED] * 6 + [o.FAILED, o.TIMED_OUT, o.ERROR, o.BUSY, o.STALE, o.OFFLINE]
    agents = [f"m{n}" for n in range(6)]
    with Store.open(tmp_path / "state.db") as store:
        for step in range(40):
            at = NOW - timedelta(days=10) + timedelta(hours=6 * step)
            cycle_id = store.start_cycle("r1", at)
            for agent in agents:
                record(store, cycle_id, agent, rng.choice(choices), at)
            store.finish_cycle(cycle_id, at + timedelta(hours=1), "failures")
        states = {s.agent: s for s in store.agent_states("r1")}
        trends = store.trends(agents)
        figures = {f.agent: f for f in store.agent_figures("r1")}
        checks = {agent: every_check(store, agent) for agent in agents}
        totals = store.outcome_totals()
    for agent in agents:
        newest_first = checks[agent]
        passes = [c for c in newest_first if c.outcome is o.PASSED]
        judged = [c for c in newest_first if c.outcome in (o.PASSED, o.FAILED, o.TIMED_OUT)]
        since_pass = newest_first[: newest_first.index(passes[0])] if passes else newest_first
        failures = sum(1 for c in since_pass if c.outcome in (o.FAILED, o.TIMED_OUT))
        assert states[agent].last == newest_first[0]
        assert states[agent].consecutive_failures == failures == figures[agent].consecutive_failures
        assert states[agent].last_passed_at == (passes[0].finished_at if passes else None)
        assert figures[agent].last_provision_s == (passes[0].duration_s if passes else None)
        assert figures[agent].last_check_at == newest_first[0].finished_at
        assert trends[agent].judged == min(10, len(judged))
        assert trends[agent].passed == sum(1 for c in judged[:10] if c.outcome is o.PASSED)
        assert trends[agent].provision_s == tuple(c.duration_s for c in passes[:10])
    counted = Counter((c.rack, str(c.outcome)) for each in checks.values() for c in each)
    assert totals == dict(counted)


def test_marks_keep_the_latest_pass_after_its_check_is_pruned(tmp_path: Path) -> None:
    """An agent failing since before the cutoff keeps its last pass and its failures."""
    with Store.open(tmp_path / "state.db") as store:
        a_week(store, {"a": [o.PASSED] + [o.FAILED] * 13})
        [before] = store.agent_states("r1")
        prune(store)
        at = NOW
        cycle_id = store.start_cycle("r1", at)
        record(store, cycle_id, "a", o.FAILED, at)
        [after] = store.agent_states("r1")
    assert before.last_passed_at is not None and before.consecutive_failures == 13
    assert after.last_passed_at == before.last_passed_at
    assert after.consecutive_failures == 14


def test_a_schema_6_file_is_upgraded_with_its_checks_as_they_were(tmp_path: Path) -> None:
    """Migration 7 rewrites the checks compactly; every check reads back the same."""
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        a_week(store, {"a": [o.PASSED, o.FAILED], "b": [o.BUSY, o.PASSED]})
        expected = {agent: every_check(store, agent) for agent in "ab"}
        states = store.agent_states("r1")
        totals = store.outcome_totals()
    # The same checks, written as schema 6 kept them: text times, text job ids, whole names.
    old = tmp_path / "old.db"
    with closing(sqlite3.connect(old, isolation_level=None)) as conn:
        _db.migrate(conn, old, MIGRATIONS[:6])
        conn.execute("BEGIN")
        for checks in expected.values():
            for c in checks:
                conn.execute(
                    "INSERT OR IGNORE INTO cycles (id, rack, started_at, finished_at, status)"
                    " VALUES (?, 'r1', ?, ?, 'failures')",
                    (c.cycle_id, _db.as_text(c.created_at), _db.as_text(c.created_at)),
                )
                conn.execute(
                    "INSERT INTO checks (id, cycle_id, rack, agent, machine, queue, job_id,"
                    " outcome, detail, provision_status, created_at, submitted_at, finished_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        c.id, c.cycle_id, c.rack, c.agent, c.machine, c.queue, c.job_id,
                        str(c.outcome), c.detail, c.provision_status, _db.as_text(c.created_at),
                        c.submitted_at and _db.as_text(c.submitted_at),
                        c.finished_at and _db.as_text(c.finished_at),
                    ),
                )  # fmt: skip
        conn.execute("COMMIT")
    with Store.open(old) as store:
        assert {agent: every_check(store, agent) for agent in "ab"} == expected
        assert store.agent_states("r1") == states
        assert store.outcome_totals() == totals
        job_id = expected["a"][0].job_id
        assert job_id is not None
        assert store.checks_of_jobs([job_id])[job_id] == expected["a"][0]


def _total(days: list[DayRecord]) -> DayRecord:
    return DayRecord(
        agent=days[0].agent,
        day=days[-1].day,
        rack=days[0].rack,
        checks=sum(d.checks for d in days),
        passed=sum(d.passed for d in days),
        failed=sum(d.failed for d in days),
        timed_out=sum(d.timed_out for d in days),
        errors=sum(d.errors for d in days),
        provision_s=sum(d.provision_s for d in days),
    )


def test_history_shows_the_older_days_after_the_checks_kept(tmp_path: Path) -> None:
    """`history` lists the agent's checks, then the days before them as counts."""
    with Store.open(tmp_path / "state.db") as store:
        a_week(store, {"a": [o.PASSED, o.FAILED]})
        prune(store)
        checks = store.history("a", limit=3)
        days = store.days("a")
    text = history_text("a", checks, days=days)
    older = text.split("earlier days, counted\n", 1)[1].splitlines()
    assert older[0].split()[:7] == ["DAY", "(UTC)", "RACK", "CHECKS", "PASSED", "FAILED", "TIMED"]
    # The days before the oldest check shown (Nov 30), summarised or counted from checks kept.
    assert older[1].split()[:6] == ["2026-11-29", "r1", "2", "1", "1", "0"]
    assert [line.split()[0] for line in older[1:]] == [f"2026-11-{d}" for d in range(29, 23, -1)]
    shown = json.loads(history_json("a", checks, days=days))
    assert [day["day"] for day in shown["days"]][:1] == ["2026-11-29"]
    assert shown["days"][0]["pass_rate"] == 0.5


async def test_the_history_command_shows_the_days_pruning_counted(tmp_path: Path) -> None:
    """`rackwatch history` (a process, read-only) shows the pruned days after the kept checks."""
    state_file = tmp_path / "state.db"

    def a_pruned_week() -> list[DayRecord]:
        with Store.open(state_file) as store:
            a_week(store, {"a": [o.PASSED, o.FAILED, o.FAILED]})
            prune(store)  # runs its own event loop, so in a thread of its own
            return store.days("a")

    summarised = await asyncio.to_thread(a_pruned_week)
    config = tmp_path / "config.toml"
    config.write_text(f'state_file = "{state_file}"\n')
    config.chmod(0o600)
    done = await rackwatch("history", "a", "--limit", "2", "--json", "--config", str(config))
    assert done.code == 0, done.err
    shown = json.loads(done.out)
    assert len(shown["checks"]) == 2
    oldest_shown = min(check["created_at"][:10] for check in shown["checks"])
    assert shown["days"] and all(day["day"] < oldest_shown for day in shown["days"])
    # Every day the state file counts before the checks shown, with its counts.
    expected = [d for d in summarised if d.day.isoformat() < oldest_shown]
    assert [(d["day"], d["checks"], d["passed"]) for d in shown["days"]] == [
        (d.day.isoformat(), d.checks, d.passed) for d in expected
    ]
    text = await rackwatch("history", "a", "--limit", "2", "--config", str(config))
    assert text.code == 0, text.err
    assert "earlier days, counted" in text.out
