"""Fixtures shared by every test: a clean environment, and retries without waits on request."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import stamina

# Settings built in code ignore the environment, but load_settings does not: keep a developer's
# shell and systemd credentials out of every test.
_ENV_NAMES = ("MAAS_URL", "MAAS_API_KEY", "CREDENTIALS_DIRECTORY")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove MAAS_URL, MAAS_API_KEY, CREDENTIALS_DIRECTORY and every RACKWATCH_* variable."""
    for name in list(os.environ):
        if name.upper().startswith("RACKWATCH_") or name in _ENV_NAMES:
            monkeypatch.delenv(name)


@pytest.fixture
def no_retry_waits() -> Iterator[None]:
    """Retry without waiting, as often as the code under test asks (the count stays real)."""
    # cap=True keeps the caller's own attempts whenever they are fewer than this ceiling;
    # set_testing's default (attempts=1, no cap) would turn retries off altogether.
    with stamina.set_testing(True, attempts=1000, cap=True):
        yield
