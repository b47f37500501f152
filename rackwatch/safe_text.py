"""Text from upstream, made safe to show: control characters as escapes, and no credentials.

`visible` shows each control character as a visible escape, so that what MAAS, an agent or an
admin wrote can neither move the cursor nor split a line. `Redactor` takes the credentials out:
the configured secrets in every form a server may send them back in (plain, percent-encoded,
base64 standard and urlsafe, with and without padding), the value of any `Authorization:` header
quoted, and the userinfo of URLs. Pure: the standard library only.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

REDACTED = "***"

# C0 and C1 controls and DEL, the line and paragraph separators, and the bidirectional
# overrides and isolates, which reorder what follows them on the line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str, *, keep: str = "") -> str:
    """`text` with each control character shown as an escape: "\\x1b", "\\n", "\\t", "\\u202e".

    Those in `keep` ("\\n" for a traceback's lines) stay as they are.
    """
    if keep:
        return _CONTROL.sub(
            lambda found: found.group() if found.group() in keep else _escape(found), text
        )
    return _CONTROL.sub(_escape, text)


def _escape(found: re.Match[str]) -> str:
    char = found.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# An Authorization (or Proxy-Authorization) header quoted as a header line, a JSON or Python
# mapping, or a CGI variable (HTTP_AUTHORIZATION), and its value: a scheme with parameters
# (OAuth, Digest), a scheme and its token (Basic, Bearer), or a token alone.
_AUTHORIZATION = re.compile(
    r"""
    ((?<![a-z])(?:proxy[-_])?authori[sz]ation["']?\s*[:=]\s*["']?)
    (?:
        [a-z][\w-]*(?:\s*,?\s*[a-z_][\w-]*\s*=\s*"[^"\r\n]*")+
      | [a-z][\w-]*[ \t]+[\w.~+/-]+=*
      | [\w.~+/-]+=*
    )
    """,
    re.IGNORECASE | re.VERBOSE,
)
# The userinfo of a URL ("user:password@"), up to the last "@" before the host.
_URL_USERINFO = re.compile(r"(?<=://)[^\s/?#]+@")


def secret_forms(secret: str) -> set[str]:
    """The forms a secret takes in what a server may send back: as it is, percent-encoded, and
    base64 (standard and urlsafe, with and without padding); none for an empty one."""
    if not secret:
        return set()
    raw = secret.encode()
    encoded = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return {secret, quote(secret, safe=""), *encoded, *(form.rstrip("=") for form in encoded)}


def userinfo_secrets(url: str) -> list[str]:
    """The password of a URL's `user:password@`, and the pair (an HTTP Basic credential)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    if not parts.password:
        return []
    return [parts.password, f"{parts.username or ''}:{parts.password}"]


class Redactor:
    """Replaces credentials in text with "***".

    It removes the value of any Authorization header quoted, the userinfo of URLs, and each of
    `secrets` in all its `secret_forms`, longest first so that a secret holding another one is
    replaced whole.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(secret for secret in secrets if secret)
        forms = {form for secret in self.secrets for form in secret_forms(secret)}
        self._forms = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = _AUTHORIZATION.sub(rf"\1{REDACTED}", text)
        text = _URL_USERINFO.sub(REDACTED + "@", text)
        for form in self._forms:
            text = text.replace(form, REDACTED)
        return text

    def also(self, secrets: Iterable[str]) -> Redactor:
        """A redactor of these secrets as well as this one's."""
        return Redactor([*self.secrets, *secrets])


NO_SECRETS = Redactor()
