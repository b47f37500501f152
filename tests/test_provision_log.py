"""The provision log excerpt and its error line, as plain text in and out."""

from __future__ import annotations

import base64
from urllib.parse import quote

from rackwatch.provision_log import error_line, excerpt
from rackwatch.safe_text import Redactor

FAILED = """\
*** TESTFLINGER SYSTEM RUN [provision] ***
Starting testflinger provision phase on tor3-a-m06

2026-12-01 20:10:01 INFO: Deploying tor3-a-m06 (noble) through MAAS
2026-12-01 20:14:40 ERROR: MAAS deployment failed: status "Failed deployment" (curtin: grub-install failed)
2026-12-01 20:14:41 INFO: Cleaning up
==========
"""


def test_banners_and_blank_lines_are_dropped() -> None:
    """What is kept is what the connector said, in order."""
    assert excerpt(FAILED) == (
        "Starting testflinger provision phase on tor3-a-m06\n"
        "2026-12-01 20:10:01 INFO: Deploying tor3-a-m06 (noble) through MAAS\n"
        '2026-12-01 20:14:40 ERROR: MAAS deployment failed: status "Failed deployment"'
        " (curtin: grub-install failed)\n"
        "2026-12-01 20:14:41 INFO: Cleaning up"
    )


def test_the_error_line_is_the_last_that_reads_like_an_error() -> None:
    """A cleanup line after the error does not hide it."""
    assert error_line(excerpt(FAILED)) == (
        '2026-12-01 20:14:40 ERROR: MAAS deployment failed: status "Failed deployment"'
        " (curtin: grub-install failed)"
    )


def test_without_an_error_word_the_last_line_stands() -> None:
    """Output that names no error still gives its last line."""
    assert error_line("booting\nwaiting for ssh") == "waiting for ssh"
    assert error_line(None) is None


def test_at_most_twenty_lines_and_four_kilobytes_from_the_end() -> None:
    """A long output keeps its last lines, within both limits."""
    many = "\n".join(f"line {i}" for i in range(100))
    kept = excerpt(many)
    assert kept is not None and kept.splitlines() == [f"line {i}" for i in range(80, 100)]
    wide = "\n".join("x" * 1000 + str(i) for i in range(10))
    kept = excerpt(wide)
    assert kept is not None and len(kept.encode()) <= 4096
    assert kept.splitlines()[-1].endswith("9") and len(kept.splitlines()) == 4


def test_one_huge_line_keeps_its_end() -> None:
    """A single line longer than the budget is cut at its start, not dropped."""
    kept = excerpt("y" * 10_000 + " the end")
    assert kept is not None and kept.startswith("…") and kept.endswith(" the end")
    assert len(kept.encode()) <= 4096


def test_control_characters_are_shown_and_secrets_scrubbed() -> None:
    """Escape sequences cannot reach a terminal, and configured secrets never show."""
    text = "\x1b[2Jcleared\tscreen with token s3cr3t-value\x07"
    assert (
        excerpt(text, redact=Redactor(["s3cr3t-value", ""]))
        == "\\x1b[2Jcleared screen with token ***\\x07"
    )


def test_credentials_are_scrubbed_in_every_form_a_log_may_hold_them() -> None:
    """A device connector that logs what it sent shows a secret base64-encoded in a Basic
    header, percent-encoded in a URL, or as a URL's userinfo: none of them is kept."""
    secret = "s3cr3t/value+1"
    basic = base64.b64encode(f"bot:{secret}".encode()).decode()
    text = "\n".join(
        [
            f"Authorization: Basic {basic}",
            f"GET https://maas.lab/api?key={quote(secret, safe='')} failed",
            "POST https://admin:hunter2@maas.lab/MAAS/ refused",
            f"token {base64.urlsafe_b64encode(secret.encode()).decode().rstrip('=')} expired",
        ]
    )
    kept = excerpt(text, redact=Redactor([secret, f"bot:{secret}"]))
    assert kept == "\n".join(
        [
            "Authorization: ***",
            "GET https://maas.lab/api?key=*** failed",
            "POST https://***@maas.lab/MAAS/ refused",
            "token *** expired",
        ]
    )


def test_nothing_to_say_is_none() -> None:
    """Empty output, or only banners and blanks, is no excerpt at all."""
    assert excerpt("") is None
    assert excerpt(None) is None
    assert excerpt("*** TESTFLINGER SYSTEM RUN [provision] ***\n\n-----\n") is None
