"""How answers are read back into words: error bodies and Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rackwatch.clients._http import excerpt, parse_retry_after


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (
            b'{"message": "Validation error", "detail": {"json": {"job_queue": ["Missing data for required field."]}}}',
            "Validation error: job_queue: Missing data for required field.",
        ),
        (
            b'{"message": "Specified action requires role: admin, manager, contributor", "detail": {}}',
            "Specified action requires role: admin, manager, contributor",
        ),
        (b"Invalid job id\n", "Invalid job id"),
        (
            b"<!doctype html><html><head><title>500 Internal Server Error</title></head></html>",
            "an HTML page (500 Internal Server Error)",
        ),
        (b'{"tags": ["No such tag(s): \'x\'."]}', "tags: No such tag(s): 'x'."),
        (b"", "(empty body)"),
    ],
)
def test_error_bodies_of_every_shape_read_as_one_line(body: bytes, said: str) -> None:
    """Testflinger's three error shapes, MAAS form errors and HTML pages become one short line."""
    assert excerpt(body) == said


def test_long_bodies_are_cut() -> None:
    """An excerpt never floods a log line."""
    assert len(excerpt(b"x" * 5000)) == 200


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("5", 5.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("Fri, 27 Nov 2026 12:00:30 GMT", 30.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_as_seconds_or_a_date(header: str | None, seconds: float | None) -> None:
    """Retry-After may be delta-seconds or an HTTP date."""
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=now) == seconds
