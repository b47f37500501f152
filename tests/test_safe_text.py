"""Upstream text made safe: control characters shown as escapes, credentials in every form out."""

from __future__ import annotations

import base64

import pytest

from rackwatch.clients._body import excerpt
from rackwatch.safe_text import Redactor, secret_forms, userinfo_secrets, visible

SECRET = "bot:s3cr3t-Value?>~"  # its base64 holds a "+", its urlsafe base64 a "-"


def test_visible_escapes_every_control_character_but_those_kept() -> None:
    """A traceback keeps its newlines; nothing else that drives a terminal stays as it is."""
    text = "a\x1b[2J\tb\nc\u202ed\x7f"
    assert visible(text) == "a\\x1b[2J\\tb\\nc\\u202ed\\x7f"
    assert visible(text, keep="\n") == "a\\x1b[2J\\tb\nc\\u202ed\\x7f"


def test_a_secret_has_its_plain_percent_encoded_and_base64_forms() -> None:
    """Standard and urlsafe base64, each with and without padding."""
    standard = base64.b64encode(SECRET.encode()).decode()
    urlsafe = base64.urlsafe_b64encode(SECRET.encode()).decode()
    assert standard != urlsafe and standard.endswith("=")
    assert secret_forms(SECRET) == {
        SECRET,
        "bot%3As3cr3t-Value%3F%3E~",
        standard,
        standard.rstrip("="),
        urlsafe,
        urlsafe.rstrip("="),
    }
    assert secret_forms("") == set()


@pytest.mark.parametrize(
    ("said", "redacted"),
    [
        ("Authorization: Basic Ym90OnMz Host: x", "Authorization: *** Host: x"),
        ("authorization: Bearer eyJ.eyJ.sig-_= next", "authorization: *** next"),
        (
            'Authorization: OAuth oauth_nonce="1", oauth_consumer_key="ck",'
            ' oauth_token="tk", oauth_signature="%26ts" Accept: */*',
            "Authorization: *** Accept: */*",
        ),
        (
            '{"Authorization": "Bearer abc.def", "Host": "x"}',
            '{"Authorization": "***", "Host": "x"}',
        ),
        ("{'HTTP_AUTHORIZATION': 'Token abc'}", "{'HTTP_AUTHORIZATION': '***'}"),
        ("Proxy-Authorization: Basic eDp5", "Proxy-Authorization: ***"),
        ("Authorization: rawtoken123", "Authorization: ***"),
        # What is no header stays as it is.
        ("Authorization Error: Invalid access token", "Authorization Error: Invalid access token"),
    ],
)
def test_any_authorization_value_is_redacted_whatever_its_scheme(said: str, redacted: str) -> None:
    """Basic, Bearer, OAuth with its parameters, in a header line, JSON, a repr or a CGI name."""
    assert Redactor()(said) == redacted


def test_the_redactor_removes_every_form_and_url_userinfo() -> None:
    """A secret's base64 forms and a URL's user:password@ go; what holds none stays."""
    redact = Redactor([SECRET])
    standard = base64.b64encode(SECRET.encode()).decode()
    urlsafe = base64.urlsafe_b64encode(SECRET.encode()).decode()
    said = f"a {standard} b {urlsafe.rstrip('=')} c {SECRET} d http://u:p@host/x e"
    assert redact(said) == "a *** b *** c *** d http://***@host/x e"
    assert redact("nothing here: ops@example.org") == "nothing here: ops@example.org"


def test_the_userinfo_of_a_url_is_its_password_and_the_basic_pair() -> None:
    assert userinfo_secrets("https://proxy:pw@tf.example/") == ["pw", "proxy:pw"]
    assert userinfo_secrets("https://tf.example/") == []
    assert userinfo_secrets("https://proxy@tf.example/") == []


def test_an_excerpt_is_redacted_before_it_is_cut() -> None:
    """A secret that straddles the cut leaves no part of itself at the end of the line."""
    body = b"x" * 190 + SECRET.encode()
    assert excerpt(body, redact=Redactor([SECRET])) == "x" * 190 + "***"
    assert SECRET[:5] in excerpt(body)  # unredacted, the cut would leave its head
