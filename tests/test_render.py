"""The renderings of `rackwatch.render`, from plain values: exact text, no process, no lab."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rackwatch.check import RackReport
from rackwatch.jobs import Tally
from rackwatch.model import AgentHealth, Health, Outcome, Silence
from rackwatch.render.cycle import as_json, as_text, progress_line
from rackwatch.render.demo import explore_text
from rackwatch.render.history import history_text
from rackwatch.render.silence import silences_text
from rackwatch.render.status import STATUS_COLUMNS, status_text
from rackwatch.render.table import Look, cut, fit, plural, table, visible, width_of
from rackwatch.status import RackStatus
from rackwatch.store import AgentState, AgentTrend, CheckRecord, CycleRecord

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


# Control characters, width and colour


HOSTILE = "Reason: \x1b[2J\x1b]0;pwned\x07 bad\nsecond line"
SHOWN = "Reason: \\x1b[2J\\x1b]0;pwned\\x07 bad\\nsecond line"
SGR = re.compile(r"\x1b\[[0-9;]*m")


def test_a_hostile_detail_shows_as_escapes_in_the_table_and_exact_in_json() -> None:
    """An escape sequence, an OSC title and a newline in a cell are shown escaped, in one row."""
    hostile = check(3, "r1-m3", Outcome.OFFLINE, None, 0, f"offline: {HOSTILE}")
    report = replace(CYCLE, checks=[*CYCLE.checks[:2], hostile])
    assert as_text([report]).encode().splitlines()[1:5] == [
        b"  AGENT  MACHINE    OUTCOME  JOB ID  DURATION  DETAIL",
        b"  r1-m1  r1-m1.lab  passed   job-1   42.5s",
        b"  r1-m2  r1-m2.lab  failed   job-2   1m 20s    provisioning exited 1",
        b"  r1-m3  r1-m3.lab  offline                    offline: Reason: \\x1b[2J\\x1b]0;pwned"
        b"\\x07 bad\\nsecond line",
    ]
    [*_, shown] = json.loads(as_json([report]))["racks"][0]["agents"]
    assert shown["detail"] == f"offline: {HOSTILE}"


def test_every_kind_of_control_character_has_a_visible_escape() -> None:
    """C0, DEL, C1, line separators and bidirectional overrides; printable text is kept."""
    assert visible("a\tb\rc\x00\x7f\x9b\u2028\u202e…×⚠") == (
        "a\\tb\\rc\\x00\\x7f\\x9b\\u2028\\u202e…×⚠"
    )


def test_history_and_silence_list_escape_control_characters() -> None:
    """What an agent, a job or an admin wrote reaches neither history nor silence --list raw."""
    hostile = check(1, "r1-m2", Outcome.OFFLINE, "j\x1b[2J", 0, f"offline: {HOSTILE}")
    text = history_text("r1-m2", [hostile], web_base=TF)
    assert "\x1b" not in text and "second line" not in text.splitlines()[-1]
    assert text.splitlines()[2].endswith(f"offline: {SHOWN}")
    assert text.splitlines()[3] == f"    job: {TF}jobs/j\\x1b[2J"
    silence = Silence(1, "r1-m\x1b[31m2", None, "BMC\nswap", "al\x07ice", T0, T0 + timedelta(1))
    assert silences_text([silence]).splitlines()[1:] == [
        "SILENCED       UNTIL (UTC)       BY         SINCE (UTC)       REASON",
        "r1-m\\x1b[31m2  2026-11-28 12:00  al\\x07ice  2026-11-27 12:00  BMC\\nswap",
    ]


JOB_ID = "5d0c7a4e-8f1b-4c2d-9e3f-a1b2c3d4e5f6"
NOW = T0 + timedelta(hours=2)


def racks_to_show() -> list[RackStatus]:
    """Two racks: an unhealthy agent with a long reason, one with a job in flight, one set
    offline by an admin with a hostile comment, and a healthy one."""

    def state(
        agent: str, last: CheckRecord, failures: int = 0, in_flight: CheckRecord | None = None
    ) -> AgentState:
        passed_at = T0 if last.outcome is Outcome.PASSED else None
        return AgentState(agent, agent[:2], f"{agent}.lab", last, failures, passed_at, in_flight)

    reason = "provisioning exited 1 (device connector error)"
    failed = check(2, "r1-m2", Outcome.FAILED, JOB_ID, 80.25, reason)
    passed = check(1, "r1-m1", Outcome.PASSED, "job-1", 42.5, "")
    offline = check(3, "r1-m3", Outcome.OFFLINE, None, 0, f"offline: {HOSTILE}")
    running = replace(passed, id=4, job_id=JOB_ID, outcome=None, finished_at=None)
    health = {
        "r1-m1": AgentHealth(Health.HEALTHY, T0),
        "r1-m2": AgentHealth(Health.UNHEALTHY, T0, reason, JOB_ID, Outcome.FAILED),
        "r1-m3": AgentHealth(Health.EXCLUDED, T0, "offline", None, Outcome.OFFLINE),
    }
    trends = {"r1-m1": AgentTrend("r1-m1", 3, 3, (40.0, 42.5, 41.0), "Deployed", None)}
    cycle = CycleRecord(1, "r1", T0, T0 + timedelta(seconds=95), "failures", None)
    r1 = RackStatus(
        "r1",
        cycle,
        NOW + timedelta(hours=4),
        [
            state("r1-m1", passed, in_flight=running),
            state("r1-m2", failed, failures=2),
            state("r1-m3", offline),
        ],
        health=health,
        trends=trends,
        health_logs={"r1-m2": LOG},
    )
    r2 = RackStatus("r2", replace(cycle, rack="r2", status="ok"), NOW, [state("r2-m1", passed)])
    return [r1, r2]


@pytest.mark.parametrize("width", [80, 100, 200])
def test_status_fits_the_width_with_headings_whole_and_cuts_marked(width: int) -> None:
    """No line is longer than the width; headings are whole; a cut cell ends in "…"; a line
    says what was cut or left out."""
    text = status_text(racks_to_show(), NOW, Look(width=width))
    lines = text.splitlines()
    assert max(width_of(line) for line in lines) <= width, text
    headings = [line for line in lines if line.startswith("  AGENT ")]
    assert len(headings) == 2, text
    shown = re.split(r"  +", headings[0].strip())
    assert set(shown) <= set(STATUS_COLUMNS), text
    assert shown == [name for name in STATUS_COLUMNS if name in shown]
    assert "…" in next(line for line in lines if line.startswith("  r1-m2 "))
    assert f"fitted to {width} columns (… ends what is cut short" in text
    assert "\x1b" not in text


def test_status_at_80_columns_reads_so() -> None:
    """At 80 columns, byte for byte: DETAIL cut, the columns least needed left out and named,
    and the header wrapped."""
    lines = status_text(racks_to_show(), NOW, Look(width=80)).splitlines()
    assert lines[:6] == [
        "r1: last cycle started 2h 0m ago, ended after 1m 35s: failures; next check in 4h",
        "  0m",
        "  AGENT  HEALTH           LAST OUTCOME  FAILURES  DETAIL",
        "  r1-m1  healthy 2h 0m    passed        0",
        "  r1-m2  unhealthy 2h 0m  failed        2         provisioning exited 1 (device…",
        "  r1-m3  excluded 2h 0m   offline       0         offline: Reason: \\x1b[2J\\x1b]…",
    ]
    assert lines[11:13] == [
        "fitted to 80 columns (… ends what is cut short; left out: JOB IN FLIGHT,",
        "  PROVISION, PASS RATE, LAST PASSED, WHEN): status --wide shows everything",
    ]


def test_status_is_whole_without_a_width_and_the_same_in_colour_but_for_the_codes() -> None:
    """With no width (piped, --wide) nothing is cut or left out; colour adds only SGR codes,
    which take no width: healthy and passed green, unhealthy and failed red, excluded yellow."""
    plain = status_text(racks_to_show(), NOW)
    coloured = status_text(racks_to_show(), NOW, Look(colour=True))
    assert "…" not in plain and "fitted to" not in plain and "\x1b" not in plain
    assert JOB_ID in plain and f"offline: {SHOWN}" in plain
    assert SGR.sub("", coloured) == plain
    assert "\x1b[32mhealthy 2h 0m\x1b[0m" in coloured
    assert "\x1b[32mpassed\x1b[0m" in coloured
    assert "\x1b[31munhealthy 2h 0m\x1b[0m" in coloured
    assert "\x1b[31mfailed\x1b[0m" in coloured
    assert "\x1b[33mexcluded 2h 0m\x1b[0m" in coloured
    assert "offline" in coloured and "\x1b[33moffline" not in coloured


def test_a_table_too_wide_for_any_cut_keeps_its_headings_whole() -> None:
    """Where nothing fits, the cut columns stop at their headings and the table is wider."""
    columns = ("AGENT", "DETAIL")
    rows = [("a-very-long-agent-name", "a detail long enough to cut")]
    layout = fit(columns, rows, 10, cut_to={"DETAIL": 0, "AGENT": 0})
    assert table(columns, rows, layout=layout).splitlines() == [
        "AGENT  DETAIL",
        "a-ve…  a det…",
    ]


def test_widths_count_columns_shown_not_characters_or_codes() -> None:
    """A wide character takes two columns; a cut keeps within the width."""
    assert width_of("機械-m1") == 7
    assert cut("機械-m1", 4) == "機…"
    assert table(("A", "B"), [("機械", "x"), ("ab", "y")]).splitlines() == [
        "A     B",
        "機械  x",
        "ab    y",
    ]


def test_the_demo_names_its_commands_as_the_reader_runs_rackwatch() -> None:
    """After a demo under `uv run`, the commands to explore it go through uv as well."""
    text = explore_text(
        Path("/srv/demo"),
        Path("/srv/demo/rackwatch.toml"),
        "m1",
        web=False,
        program="python3 -m uv run rackwatch",
    )
    assert "  python3 -m uv run rackwatch status --config /srv/demo/rackwatch.toml\n" in text
    assert "  python3 -m uv run rackwatch history m1 --config /srv/demo/rackwatch.toml\n" in text
