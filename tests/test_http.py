"""How answers are read back into words: error bodies, Retry-After, sizes and nesting."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from rackwatch.clients._body import (
    excerpt,
    format_size,
    nests_deeper,
    parse_retry_after,
    text_nests_deeper,
)


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


@pytest.mark.parametrize(
    ("data", "deeper"),
    [
        ([[[]]], False),  # three levels: the limit
        ([[[[]]]], True),
        ({"a": {"b": [1, "x", None]}}, False),
        ({"a": [{"b": [{}]}]}, True),
        ("text", False),
        ([1, [2, [3]]], False),
    ],
)
def test_nesting_is_measured_in_levels_of_lists_and_objects(data: object, deeper: bool) -> None:
    """A scalar adds no level; each list or object inside another adds one."""
    assert nests_deeper(data, 3) is deeper


@pytest.mark.parametrize(
    ("text", "deeper"),
    [
        (b"[[[]]]", False),  # three levels: the limit
        (b"[[[[]]]]", True),
        (b'{"a": {"b": [1, "x", null]}}', False),
        (b'{"a": [{"b": [{}]}]}', True),
        (b'"[[[[]]]]"', False),  # brackets in a string nest nothing
        (b'[["[[", "]]]"], {"{": "}}}"}]', False),
        (b'[[["\\\\"], ["\\\\\\"[[[["]]]', False),  # escaped backslashes and quotes
        (b'[[["\\\\", [[]]]]]', True),  # a string that ends in an escaped backslash
        (b'[{"": [], "x": ""}, [[], []]]', False),
        ('[[["\u00e9"]], [[[]]]]'.encode("utf-16"), True),  # as json.loads reads it
    ],
)
def test_nesting_is_measured_on_the_text_as_on_the_decoded_value(text: bytes, deeper: bool) -> None:
    """Measured on JSON text, the depth is that of the decoded value; strings add no level."""
    assert nests_deeper(json.loads(text), 3) is deeper
    assert text_nests_deeper(text, 3) is deeper


def test_nesting_of_any_depth_is_measured_without_recursion() -> None:
    """Nesting far past the interpreter's recursion limit is measured, not a RecursionError."""
    data: list[object] = []
    for _ in range(100_000):
        data = [data]
    assert nests_deeper(data, 64)
    assert text_nests_deeper(b"[" * 100_000 + b"]" * 100_000, 64)
    assert not text_nests_deeper(b"[" * 64 + b"]" * 64, 64)


def test_an_error_body_nested_too_deeply_is_quoted_as_text() -> None:
    """An error body whose JSON cannot be decoded, or nests too deeply, is shown as its text."""
    assert excerpt(b"[" * 200_000 + b"]" * 200_000) == "[" * 199 + "…"
    assert excerpt(b'{"message": ' * 100 + b"1" + b"}" * 100).startswith('{"message": {"message"')


@pytest.mark.parametrize(
    ("size", "text"),
    [(64 * 1024 * 1024, "64 MiB"), (64 * 1024, "64 KiB"), (1536, "1,536 bytes"), (10, "10 bytes")],
)
def test_limits_are_named_in_the_units_they_are_written_in(size: int, text: str) -> None:
    """The body limits read as "64 MiB" and "64 KiB" in messages."""
    assert format_size(size) == text
