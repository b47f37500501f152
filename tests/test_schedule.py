"""The per-rack schedule rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rackwatch.schedule import next_check, rack_offset

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
JITTER = timedelta(minutes=15)


def test_offsets_are_stable_and_within_the_jitter() -> None:
    """The same rack always gets the same offset, below the jitter."""
    offsets = [rack_offset(f"rack-{i}", JITTER) for i in range(50)]
    assert offsets == [rack_offset(f"rack-{i}", JITTER) for i in range(50)]
    assert all(timedelta(0) <= o < JITTER for o in offsets)
    assert len(set(offsets)) == 50


def test_no_jitter_means_no_offset() -> None:
    """jitter = 0 checks every rack on the dot."""
    assert rack_offset("tor3-a", timedelta(0)) == timedelta(0)


def test_a_never_checked_rack_waits_only_for_its_offset() -> None:
    """First checks are spread over the jitter window."""
    due = next_check("tor3-a", None, now=NOW, interval=6 * HOUR, jitter=JITTER)
    assert due == NOW + rack_offset("tor3-a", JITTER)


def test_a_recently_checked_rack_waits_for_the_rest_of_its_interval() -> None:
    """Restarting the daemon does not re-check a rack checked an hour ago."""
    due = next_check("tor3-a", NOW - HOUR, now=NOW, interval=6 * HOUR, jitter=JITTER)
    assert due == NOW + 5 * HOUR


def test_an_overdue_rack_is_checked_at_once() -> None:
    """However many intervals were missed, the rack is checked once, now."""
    due = next_check("tor3-a", NOW - 30 * HOUR, now=NOW, interval=6 * HOUR, jitter=JITTER)
    assert due == NOW
