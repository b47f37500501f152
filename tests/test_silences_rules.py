"""The pure rules of silences: their length, the times they read, which one covers an agent,
what an alert leaves out, and what the end of one announces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rackwatch import silences
from rackwatch.errors import UsageError
from rackwatch.model import AgentHealth, AlertEvent, EventKind, Health, Silence

NOW = datetime(2026, 12, 1, 20, 31, tzinfo=UTC)
HOUR = timedelta(hours=1)


def silence(
    id: int,
    *,
    agent: str | None = None,
    rack: str | None = None,
    until: datetime = NOW + HOUR,
    ended_at: datetime | None = None,
) -> Silence:
    return Silence(id, agent, rack, "why", "alice", NOW - HOUR, until, ended_at)


UNHEALTHY = AgentHealth(Health.UNHEALTHY, NOW - HOUR, "failed: provisioning exited 1", "j-1")
HEALTHY = AgentHealth(Health.HEALTHY, NOW - HOUR, "passed", "j-2")


@pytest.mark.parametrize(
    ("length", "until", "end"),
    [
        (None, None, NOW + timedelta(days=7)),
        (timedelta(hours=2), None, NOW + timedelta(hours=2)),
        (timedelta(days=90), None, NOW + timedelta(days=90)),
        (None, NOW + timedelta(days=3), NOW + timedelta(days=3)),
    ],
)
def test_a_silence_lasts_as_asked_and_a_week_by_default(
    length: timedelta | None, until: datetime | None, end: datetime
) -> None:
    """--for counts from now, --until is taken as it is, and neither means 7 days."""
    assert silences.end_of(NOW, length=length, until=until) == end


@pytest.mark.parametrize(
    ("length", "until", "said"),
    [
        (timedelta(days=90, seconds=1), None, "at most 90 days (until 2027-03-01 20:31 UTC)"),
        (None, NOW + timedelta(days=91), "at most 90 days"),
        (timedelta(0), None, "--for must be longer than 0s"),
        (None, NOW - timedelta(minutes=1), "--until 2026-12-01 20:30 UTC has passed"),
        (None, NOW, "has passed"),
    ],
)
def test_a_silence_that_would_not_end_in_time_is_refused(
    length: timedelta | None, until: datetime | None, said: str
) -> None:
    """A silence ends after now and within 90 days, or it is a usage error saying why."""
    with pytest.raises(UsageError, match=said.replace("(", r"\(").replace(")", r"\)")):
        silences.end_of(NOW, length=length, until=until)


@pytest.mark.parametrize(
    ("text", "at"),
    [
        ("2026-12-08T20:31", datetime(2026, 12, 8, 20, 31, tzinfo=UTC)),
        ("2026-12-08 20:31Z", datetime(2026, 12, 8, 20, 31, tzinfo=UTC)),
        ("2026-12-08T21:31+01:00", datetime(2026, 12, 8, 20, 31, tzinfo=UTC)),
        ("2026-12-08", datetime(2026, 12, 8, tzinfo=UTC)),
    ],
)
def test_a_time_without_an_offset_is_utc(text: str, at: datetime) -> None:
    """ISO 8601 times read as UTC unless they name an offset, which is then applied."""
    parsed = silences.parse_time(text)
    assert parsed == at
    assert parsed.tzinfo is UTC


def test_a_time_that_is_not_iso_8601_is_a_usage_error() -> None:
    """A time such as "next tuesday" is refused with an example of what is meant."""
    with pytest.raises(UsageError, match="not an ISO 8601 time, such as 2026-12-08T20:31"):
        silences.parse_time("next tuesday")


@pytest.mark.parametrize(
    ("text", "kept"),
    [("  reflashing\tthe  BMC\n", "reflashing the BMC"), ("RT#4411\x1b[31m", "RT#4411 [31m")],
)
def test_a_reason_is_kept_on_one_line(text: str, kept: str) -> None:
    """Blank runs become one space and control characters a blank."""
    assert silences.clean_reason(text) == kept


@pytest.mark.parametrize("text", ["", "   \n", "x" * 201])
def test_a_blank_or_overlong_reason_is_a_usage_error(text: str) -> None:
    """A reason says why in at most 200 characters."""
    with pytest.raises(UsageError, match="--reason"):
        silences.clean_reason(text)


def test_an_agent_is_covered_by_its_own_silence_or_its_racks_whichever_lasts_longer() -> None:
    """The covering silence is the longest in force of the agent's and its rack's."""
    own = silence(1, agent="r1-m1", until=NOW + HOUR)
    of_rack = silence(2, rack="r1", until=NOW + 2 * HOUR)
    other = silence(3, agent="r1-m2", until=NOW + 3 * HOUR)
    found = [own, of_rack, other]
    assert silences.covering(found, agent="r1-m1", rack="r1", at=NOW) == of_rack
    assert silences.covering(found, agent="r1-m1", rack="r1", at=NOW + HOUR * 1.5) == of_rack
    assert silences.covering(found, agent="r1-m1", rack="r2", at=NOW) == own
    assert silences.covering(found, agent="r1-m1", rack="r1", at=NOW + 2 * HOUR) is None
    assert silences.covering(found, agent="r2-m1", rack="r2", at=NOW) is None


def test_a_silence_ended_early_covers_nothing_after_its_end() -> None:
    """An unsilenced silence ends at `ended_at`, not at `until`."""
    ended = silence(1, agent="r1-m1", until=NOW + HOUR, ended_at=NOW - timedelta(minutes=5))
    assert ended.ends_at == NOW - timedelta(minutes=5)
    assert silences.covering([ended], agent="r1-m1", rack="r1", at=NOW) is None
    assert silences.in_force([ended], NOW) == []


def test_an_alert_leaves_out_silenced_agents_and_a_silenced_racks_incident() -> None:
    """Agent events of a covered agent and incident events of a silenced rack are left out."""
    found = [silence(1, agent="r1-m1"), silence(2, rack="r2")]
    sick = AlertEvent(EventKind.UNHEALTHY, "r1", agent="r1-m1")
    drift = AlertEvent(EventKind.DRIFT, "r1", agent="r1-m1", reason="its agent went stale")
    other = AlertEvent(EventKind.UNHEALTHY, "r1", agent="r1-m2")
    incident_r1 = AlertEvent(EventKind.INCIDENT_OPENED, "r1", reason="3 of 4")
    incident_r2 = AlertEvent(EventKind.INCIDENT_CLOSED, "r2", reason="over")
    drift_r2 = AlertEvent(EventKind.DRIFT, "r2", agent="r2-m3", reason="no agent")
    kept = [
        event
        for event in (sick, drift, other, incident_r1, incident_r2, drift_r2)
        if silences.is_announced(event, found, NOW)
    ]
    assert kept == [other, incident_r1]


def test_an_ended_silence_is_due_at_a_cycle_of_its_rack() -> None:
    """A rack's silence at its rack's cycle; an agent's at the cycle of its recorded rack."""
    of_rack = silence(1, rack="r1", until=NOW - HOUR)
    mine = silence(2, agent="r1-m1", ended_at=NOW - HOUR)
    elsewhere = silence(3, agent="r2-m1", until=NOW - HOUR)
    unknown = silence(4, agent="new-m1", until=NOW - HOUR)
    going_on = silence(5, agent="r1-m2")
    found = [of_rack, mine, elsewhere, unknown, going_on]
    rack_of = {"r1-m1": "r1", "r2-m1": "r2"}
    assert silences.due(found, rack="r1", rack_of=rack_of, at=NOW) == [of_rack, mine, unknown]
    assert silences.due(found, rack="r2", rack_of=rack_of, at=NOW) == [elsewhere, unknown]


def test_the_end_of_a_silence_announces_each_agent_still_unhealthy_once() -> None:
    """Still unhealthy: announced; healthy, announced by the cycle, or still covered: not."""
    ended = silence(1, rack="r1", until=NOW - HOUR)
    still = silence(2, agent="r1-m4")
    health = {"r1-m1": UNHEALTHY, "r1-m2": HEALTHY, "r1-m3": UNHEALTHY, "r1-m4": UNHEALTHY}
    events = silences.after_silences(
        [ended],
        [ended, still],
        rack="r1",
        health=health,
        incident="3 of 4 checked agents failed",
        announced={"r1-m3"},
        at=NOW,
    )
    assert events == [
        AlertEvent(
            EventKind.INCIDENT_OPENED,
            "r1",
            reason="still open after its silence ended: 3 of 4 checked agents failed",
        ),
        AlertEvent(
            EventKind.UNHEALTHY,
            "r1",
            agent="r1-m1",
            before="unhealthy",
            after="unhealthy",
            reason="still unhealthy after its silence ended: failed: provisioning exited 1",
            job_id="j-1",
        ),
    ]


def test_the_end_of_an_agents_silence_announces_that_agent_only() -> None:
    """An agent's silence speaks for its agent, and never for the rack's incident."""
    ended = silence(1, agent="r1-m2", ended_at=NOW - HOUR)
    health = {"r1-m1": UNHEALTHY, "r1-m2": UNHEALTHY}
    events = silences.after_silences(
        [ended], [ended], rack="r1", health=health, incident="x", announced=(), at=NOW
    )
    assert [(e.kind, e.agent) for e in events] == [(EventKind.UNHEALTHY, "r1-m2")]
