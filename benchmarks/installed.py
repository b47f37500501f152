"""rackwatch installed as a lab host installs it, for the benchmarks that run it as a process.

The README's "Install on a lab host" makes the service's virtual environment with
`uv sync --locked --no-dev --no-editable --compile-bytecode`: rackwatch and its dependencies
only, their bytecode compiled. The project's own `.venv` holds the test tools too, and they
change what rackwatch imports: structlog imports rich (which import-linter brings) when it is
there, and pydantic looks for plugins among every installed package. A benchmark of
rackwatch's own cost measures it as the lab runs it, so it builds that environment afresh from
the working tree (`build`), and runs its `bin/rackwatch`, as the service does: `python -m
rackwatch` would import the working tree's own copy when run from the project's root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Variables that would override a benchmark's configuration in the rackwatch process, or keep
# it from reading the bytecode compiled at install.
DROPPED_PREFIXES = (
    "RACKWATCH_",
    "MAAS_",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONPYCACHEPREFIX",
    "VIRTUAL_ENV",
)


@dataclass(frozen=True)
class Installed:
    """A virtual environment that holds rackwatch as a lab host installs it."""

    folder: Path

    @property
    def python(self) -> Path:
        """The environment's Python, which imports the installed rackwatch and its dependencies."""
        return self.folder / "bin" / "python"

    def command(self, *args: str, profile: str | None = None) -> list[str]:
        """`rackwatch *args` as the service runs it; under cProfile, its stats written to
        `profile`, when that is given (run it outside the project's root: `python -m cProfile`
        puts the working directory first on the module path)."""
        script = str(self.folder / "bin" / "rackwatch")
        if profile is None:
            return [script, *args]
        return [str(self.python), "-m", "cProfile", "-o", profile, script, *args]


def build(folder: Path) -> Installed:
    """Install rackwatch from the working tree into a virtual environment at `folder`, as on a
    lab host."""
    uv = os.environ.get("UV")  # set by `uv run`
    command = [uv] if uv else [sys.executable, "-m", "uv"]
    env = {**environment(), "UV_PROJECT_ENVIRONMENT": str(folder)}
    done = subprocess.run(
        [
            *command,
            "sync",
            "--locked",
            "--no-dev",
            "--no-editable",
            "--compile-bytecode",
            # uv rebuilds the project only when pyproject.toml looks changed: without this it
            # installs the wheel it built of an earlier working tree.
            "--reinstall-package",
            "rackwatch",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"installing rackwatch into {folder} failed:\n{done.stderr}")
    return Installed(folder)


def environment() -> dict[str, str]:
    """This process's environment, without what would change how rackwatch runs."""
    return {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_PREFIXES)}


def uncached(env: dict[str, str], empty: Path) -> dict[str, str]:
    """`env` for a Python that finds no compiled bytecode (`empty`: a folder with none) and
    writes none: every module compiled as it is imported."""
    return {**env, "PYTHONPYCACHEPREFIX": str(empty), "PYTHONDONTWRITEBYTECODE": "1"}
