"""The renderings of `rackwatch.render`, from plain values: exact text, no process, no lab."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from rackwatch.check import RackReport
from rackwatch.jobs import Tally
from rackwatch.model import Outcome
from rackwatch.render.cycle import as_json, as_text, progress_line
from rackwatch.render.history import history_text
from rackwatch.render.status import status_text
from rackwatch.render.table import plural
from rackwatch.status import RackStatus
from rackwatch.store import CheckRecord, CycleRecord

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TF = "https://testflinger.example.com/"


def check(
    id: int, agent: str, outcome: Outcome, job_id: str | None, seconds: float, detail: str
) -> CheckRecord:
    """A check of `agent` in cycle 1 of r1 whose job (if any) ran `seconds` from T0 + 5 s."""
    return CheckRecord(
        id=id,
        cycle_id=1,
        rack="r1",
        agent=agent,
        machine=f"{agent}.lab",
        queue=agent if job_id else None,
        job_id=job_id,
        outcome=outcome,
        detail=detail,
        provision_status={Outcome.PASSED: 0, Outcome.FAILED: 1}.get(outcome),
        created_at=T0,
        submitted_at=T0 + timedelta(seconds=5) if job_id else None,
        finished_at=T0 + timedelta(seconds=5 + seconds),
    )


FAILED = check(2, "r1-m2", Outcome.FAILED, "job-2", 80.25, "provisioning exited 1")
CYCLE = RackReport(
    CycleRecord(1, "r1", T0, T0 + timedelta(seconds=95), "failures", None),
    [
        FAILED,
        check(1, "r1-m1", Outcome.PASSED, "job-1", 42.5, ""),
        check(3, "r1-m3", Outcome.OFFLINE, None, 0, "offline: maintenance"),
    ],
)


def test_a_cycle_reads_as_a_table_per_rack_by_agent_and_a_summary() -> None:
    """Rows by agent name; a job's duration in tenths under a minute; skips have no job."""
    assert as_text([CYCLE]).splitlines() == [
        "r1: failures in 1m 35s",
        "  AGENT  MACHINE    OUTCOME  JOB ID  DURATION  DETAIL",
        "  r1-m1  r1-m1.lab  passed   job-1   42.5s",
        "  r1-m2  r1-m2.lab  failed   job-2   1m 20s    provisioning exited 1",
        "  r1-m3  r1-m3.lab  offline                    offline: maintenance",
        "",
        "1 rack: 3 agents, 1 passed, 1 failed, 0 timed out, 0 errors, 1 set offline by an admin",
    ]


LOG = "\n".join(
    [
        "2026-11-27 12:01:00 INFO: Starting node r1-m2 with distro noble",
        "2026-11-27 12:01:10 INFO: r1-m2: Deploying",
        "2026-11-27 12:01:20 INFO: r1-m2: curtin: installing grub to /dev/sda",
        '2026-11-27 12:01:24 ERROR: MAAS deployment of r1-m2 failed: status "Failed deployment"',
        "2026-11-27 12:01:25 INFO: Cleaning up: releasing node r1-m2",
    ]
)
LOGGED = replace(FAILED, provision_log=LOG)
ERROR_LINE = (
    '2026-11-27 12:01:24 ERROR: MAAS deployment of r1-m2 failed: status "Failed deployment"'
)


def test_a_failed_check_shows_its_error_line_and_a_stale_agent_makes_the_rack_attention() -> None:
    """DETAIL ends with the log's error line; "ok" with a stale agent reads attention; skips by kind."""
    attention = RackReport(
        CycleRecord(2, "r2", T0, T0 + timedelta(seconds=5), "ok", None),
        [
            check(4, "r2-m1", Outcome.STALE, None, 0, "waiting, but last heard from 3d 0h ago"),
            check(5, "r2-m2", Outcome.NO_QUEUE, None, 0, "no queue of its own (queues: shared)"),
            check(6, "r2-m3", Outcome.BUSY, None, 0, "state test, job j-9"),
            check(7, "r2-m4", Outcome.OFFLINE, None, 0, "offline: Set to offline by admin."),
            check(8, "r2-m5", Outcome.OFFLINE, None, 0, "offline: Recovery failed during job"),
        ],
    )
    lines = as_text([replace(CYCLE, checks=[LOGGED]), attention]).splitlines()
    assert (
        lines[2]
        == f"  r1-m2  r1-m2.lab  failed   job-2   1m 20s    provisioning exited 1: {ERROR_LINE}"
    )
    assert lines[4] == "r2: attention in 5s"
    assert lines[-1] == (
        "2 racks: 6 agents, 0 passed, 1 failed, 0 timed out, 0 errors,"
        " 2 not checkable (stale, quarantined, no queue), 1 set offline by an admin, 2 not checked"
    )
    data = json.loads(as_json([attention, replace(CYCLE, checks=[LOGGED])], web_base=TF))
    assert [rack["status"] for rack in data["racks"]] == ["attention", "failures"]
    [failed] = data["racks"][1]["agents"]
    assert (failed["provision_log"], failed["url"]) == (LOG, f"{TF}jobs/job-2")
    assert data["racks"][0]["agents"][0]["url"] is None


def test_a_rack_with_a_failure_is_not_attention_even_with_a_stale_agent() -> None:
    """attention is only for a rack whose cycle was ok; failures stay failures."""
    stale = check(4, "r1-m4", Outcome.STALE, None, 0, "waiting, but last heard from 3d 0h ago")
    report = replace(CYCLE, checks=[*CYCLE.checks, stale])
    assert as_text([report]).splitlines()[0] == "r1: failures in 1m 35s"


def test_the_progress_line_names_up_to_three_racks() -> None:
    """Three racks or fewer are named; more are counted."""
    tally = Tally(submitted=3, running=1, passed=1, failed=1)
    assert progress_line(["r1", "r2"], tally, timedelta(seconds=65)) == (
        "r1, r2: 3 submitted, 1 running, 1 passed, 1 failed, 1 left · 1m 5s"
    )
    assert progress_line(["a", "b", "c", "d"], Tally(), timedelta(seconds=3)).startswith(
        "4 racks: 0 submitted"
    )


def test_history_reads_as_a_header_and_a_row_per_check() -> None:
    """Times in UTC to the second, the provision status, and the job's duration."""
    assert history_text("r1-m2", [FAILED]).splitlines() == [
        "r1-m2: the latest 1 check, newest first",
        "TIME (UTC)           RACK  OUTCOME  JOB ID  PROVISION  DURATION  DETAIL",
        "2026-11-27 12:00:00  r1    failed   job-2   1          1m 20s    provisioning exited 1",
    ]


def test_history_shows_the_job_link_and_the_end_of_the_log_under_a_row() -> None:
    """Under the row: the job's page, then the log's last 3 lines; with full_log, all of it."""
    passed = check(1, "r1-m2", Outcome.PASSED, "job-1", 42.5, "")
    row = "2026-11-27 12:00:00  r1    failed   job-2   1          1m 20s    provisioning exited 1"
    log = LOG.splitlines()
    assert history_text("r1-m2", [LOGGED, passed], web_base=TF).splitlines()[2:] == [
        row,
        f"    job: {TF}jobs/job-2",
        "    log: … 2 earlier lines (history --log shows them)",
        *(f"         {line}" for line in log[2:]),
        "2026-11-27 12:00:00  r1    passed   job-1   0          42.5s",
        f"    job: {TF}jobs/job-1",
    ]
    whole = history_text("r1-m2", [LOGGED], web_base="https://ci:pw@tf.example/ui/", full_log=True)
    assert whole.splitlines()[2:] == [
        row,
        "    job: https://tf.example/ui/jobs/job-2",
        f"    log: {log[0]}",
        *(f"         {line}" for line in log[1:]),
    ]


def test_status_text_says_when_a_rack_is_due_failed_or_never_checked() -> None:
    """An overdue rack is due now, a failed cycle shows its error, a new rack is never checked."""
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    failed = CycleRecord(
        id=1,
        rack="r1",
        started_at=now - timedelta(hours=7),
        finished_at=now - timedelta(hours=7) + timedelta(seconds=2.5),
        status="error",
        error="unknown rack 'r1': MAAS has no tag of that name",
    )
    text = status_text(
        [
            RackStatus("r1", failed, now, []),
            RackStatus("r2", None, now + timedelta(minutes=7), []),
        ],
        now,
    )
    assert text.splitlines() == [
        "r1: last cycle started 7h 0m ago, ended after 2.5s: error; next check due now",
        "  unknown rack 'r1': MAAS has no tag of that name",
        "  no agents recorded",
        "",
        "r2: never checked; next check in 7m 0s",
        "  no agents recorded",
        "",
        "2 racks, 0 agents by their last outcome: 0 passed, 0 failed or timed out, 0 errors;"
        " 0 jobs in flight",
        "by health: 0 healthy, 0 unhealthy, 0 excluded, 0 unknown; 0 rack incidents open",
    ]
    assert plural(2412, "agent") == "2,412 agents"
