"""systemd/rackwatch.service as systemd itself reads it: `systemd-analyze verify` and `security`.

`verify` exits 0 even for an unknown key or a bad value, so the tests fail on any output. It also
needs ExecStart's program to exist, so each test checks a copy whose ExecStart points at this
venv's own `rackwatch` script; it does not look at the LoadCredential= source files, so a test of
its own holds the unit's credentials to the configuration's and to the README's install steps.
systemd-analyze comes with Debian's `systemd` package, installed with apt-get when missing.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rackwatch.config import CREDENTIALS

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "systemd" / "rackwatch.service"
CREDENTIALS_FOLDER = "/etc/rackwatch/credentials"
INSTALLED_RACKWATCH = "/opt/rackwatch/.venv/bin/rackwatch"
# Best first, as systemd-analyze labels an exposure score.
ACCEPTED_LEVELS = ("SAFE", "OK")


@functools.cache
def systemd_analyze() -> str:
    """The systemd-analyze program, installed with apt-get (as root) when it is missing."""
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"]
        if subprocess.run(install, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            subprocess.run(install, capture_output=True, check=False)
        found = shutil.which("systemd-analyze")
    if found is None:
        message = "systemd-analyze is missing: install systemd (apt-get install systemd)"
        pytest.fail(message, pytrace=False)
    return found


def checkable_copy(folder: Path, text: str | None = None) -> Path:
    """The unit (or `text`) in `folder`, with ExecStart on a rackwatch that exists here."""
    here = Path(sys.executable).parent / "rackwatch"
    assert here.is_file(), f"{here} is missing: is rackwatch installed in this venv?"
    text = UNIT.read_text() if text is None else text
    assert text.count(f"ExecStart={INSTALLED_RACKWATCH} ") == 1
    path = folder / "rackwatch.service"
    path.write_text(text.replace(f"ExecStart={INSTALLED_RACKWATCH} ", f"ExecStart={here} "))
    return path


def analyze(*args: str) -> str:
    """systemd-analyze's stdout and stderr together."""
    done = subprocess.run(
        [systemd_analyze(), "--no-pager", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    return done.stdout + done.stderr


def exposure(unit: Path) -> tuple[float, str]:
    """The overall exposure score and its label from `systemd-analyze security --offline=yes`."""
    out = analyze("security", "--offline=yes", str(unit))
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) ([A-Z]+)", out)
    assert found, out
    return float(found[1]), found[2]


def test_verify_prints_nothing(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about the unit."""
    assert analyze("verify", str(checkable_copy(tmp_path))) == ""


def test_security_rates_the_unit_ok_or_better(tmp_path: Path) -> None:
    """systemd-analyze security rates the unit's sandbox OK or SAFE."""
    score, level = exposure(checkable_copy(tmp_path))
    assert level in ACCEPTED_LEVELS, f"exposure {score} {level}"


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("ProtectSystem=strict", "ProtectSytem=strict"),
        ("Restart=on-failure", "Restart=on-failur"),
        ("ExecReload=/bin/kill", "ExecReload=/nonexistent/kill"),
    ],
)
def test_verify_reports_a_broken_unit(tmp_path: Path, good: str, bad: str) -> None:
    """A misspelt key, a bad value or a missing program makes verify print something."""
    text = UNIT.read_text()
    assert good in text
    unit = checkable_copy(tmp_path, text.replace(good, bad))
    assert analyze("verify", str(unit)) != ""


def test_security_rates_an_unhardened_unit_worse(tmp_path: Path) -> None:
    """Without its [Service] sandboxing the unit falls below OK, so the rating check can fail."""
    kept = []
    for line in UNIT.read_text().splitlines():
        if line.startswith(("Protect", "Private", "Restrict", "SystemCall", "Capability")):
            continue
        if line.startswith(("DynamicUser=", "NoNewPrivileges=", "MemoryDeny", "LockPersonality=")):
            continue
        kept.append(line)
    score, level = exposure(checkable_copy(tmp_path, "\n".join(kept) + "\n"))
    assert level not in ACCEPTED_LEVELS, f"exposure {score} {level}"


def test_the_unit_loads_each_credential_the_configuration_reads_and_the_readme_creates() -> None:
    """Every credential rackwatch reads has a LoadCredential= line, and its file an install step.

    A LoadCredential= whose file is missing stops the unit from starting, so the README's
    install steps create each file, empty where the secret is optional.
    """
    loaded = dict(
        line.removeprefix("LoadCredential=").split(":", 1)
        for line in UNIT.read_text().splitlines()
        if line.startswith("LoadCredential=")
    )
    assert loaded == {name: f"{CREDENTIALS_FOLDER}/{name}" for name in CREDENTIALS}
    readme = (ROOT / "README.md").read_text()
    for name in CREDENTIALS:
        assert f"install -m 0600 /dev/null {CREDENTIALS_FOLDER}/{name}" in readme, name
