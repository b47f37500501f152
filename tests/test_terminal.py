"""What reaches an operator's terminal: `status` fitted to its width and coloured, `--wide`,
`--watch`, no colour when piped or under NO_COLOR, and upstream text that cannot write to it.
Real processes, on a pseudo-terminal of the test's own or a pipe."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rackwatch.render.status import STATUS_COLUMNS
from rackwatch.render.table import width_of
from rackwatch.simlab import Behaviour, SimMachine, SimRack
from tests.harness import Harness, LabFactory, rack, rackwatch, until, write_config

HOSTILE = "Reason: \x1b[2J\x1b]0;pwned\x07 bad\nsecond line"
SHOWN = "Reason: \\x1b[2J\\x1b]0;pwned\\x07 bad\\nsecond line"
SGR = re.compile(r"\x1b\[[0-9;]*m")
# Ages tick between two runs of status: "3s ago", "healthy 4s", "1m 5s" (and "just now").
AGE = re.compile(r"\b\d+[smhd]\b(?: \d+[smhd]\b)?")


@pytest.fixture(autouse=True)
def _a_colour_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the shell running the tests says: a terminal that takes colour."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


@dataclass
class Setup:
    harness: Harness
    config: Path


@pytest.fixture
async def setup(served: LabFactory, tmp_path: Path) -> Setup:
    """A rack of a passing, a failing and a slow machine, and one an admin set offline with a
    comment of escape sequences and a newline; its configuration file."""
    b = Behaviour
    harness = await served([rack("r1", b.PASS, b.FAIL, b.OFFLINE, b.PASS)])
    harness.lab.set_agent_state("r1-m3", "offline", HOSTILE)
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)
    return Setup(harness, config)


class Terminal:
    """A pseudo-terminal, `columns` wide and `rows` high, for one rackwatch process, read as
    it writes."""

    def __init__(self, columns: int, rows: int = 60) -> None:
        self.columns, self.rows = columns, rows
        self._master, self._slave = pty.openpty()
        fcntl.ioctl(self._slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self._output = bytearray()
        self._closed = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, *args: str, env: dict[str, str] | None = None) -> None:
        size = {"COLUMNS": str(self.columns), "LINES": str(self.rows)}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rackwatch",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._slave,
            stderr=self._slave,
            env={**os.environ, **size, **(env or {})},
        )
        os.close(self._slave)
        asyncio.get_running_loop().add_reader(self._master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EIO: the process closed its end
            data = b""
        self._output += data
        if not data:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._closed.set()

    @property
    def text(self) -> str:
        """What it wrote so far, with the terminal's line ends as "\\n"."""
        return self._output.decode(errors="replace").replace("\r\n", "\n")

    async def wait(self) -> int:
        assert self.process is not None
        async with asyncio.timeout(30):
            code = await self.process.wait()
            await self._closed.wait()
        return code


@pytest.fixture
async def terminals() -> AsyncIterator[list[Terminal]]:
    """Terminals whose processes are killed at the end of the test if they still run."""
    made: list[Terminal] = []
    yield made
    for terminal in made:
        if terminal.process is not None and terminal.process.returncode is None:
            terminal.process.kill()
            await terminal.wait()


async def on_terminal(columns: int, *args: str, env: dict[str, str] | None = None) -> str:
    terminal = Terminal(columns)
    await terminal.start(*args, env=env)
    assert await terminal.wait() == 0, terminal.text
    return terminal.text


def shown_lines(text: str) -> Iterator[str]:
    """The lines as the terminal shows them: without their colour codes."""
    return iter(SGR.sub("", text).splitlines())


async def checked_twice(setup: Setup) -> None:
    """Two cycles: r1-m2 unhealthy, r1-m1 and r1-m4 healthy, r1-m3 excluded."""
    await setup.harness.cycle()
    await setup.harness.cycle()


@pytest.mark.parametrize("columns", [80, 100, 200])
async def test_status_on_a_terminal_fits_its_width(setup: Setup, columns: int) -> None:
    """No line is longer than the terminal; headings are whole; "…" ends a cut cell; health
    and outcomes are coloured; the hostile comment's escapes never reach the terminal raw."""
    await checked_twice(setup)
    text = await on_terminal(columns, "status", "--config", str(setup.config))
    lines = list(shown_lines(text))
    assert max(width_of(line) for line in lines) <= columns, text
    [heading] = [line for line in lines if line.startswith("  AGENT ")]
    shown = re.split(r"  +", heading.strip())
    assert shown == [name for name in STATUS_COLUMNS if name in shown], heading
    assert {"AGENT", "HEALTH", "LAST OUTCOME", "DETAIL"} <= set(shown)
    [failed] = [line for line in lines if line.startswith("  r1-m2 ")]
    assert failed.endswith("…"), failed
    assert f"fitted to {columns} columns" in SGR.sub("", text).replace("\n  ", " ")
    assert "\x1b[31munhealthy" in text and "\x1b[31mfailed\x1b[0m" in text
    assert "\x1b[32mhealthy" in text and "\x1b[32mpassed\x1b[0m" in text
    assert "\x1b[33mexcluded" in text
    assert "\x1b[2J" not in text and "\x1b]0;" not in text and "\x07" not in text


async def test_status_wide_on_a_terminal_is_the_piped_output_in_colour(setup: Setup) -> None:
    """--wide cuts and leaves out nothing: without its colours, it is what a pipe gets."""
    await checked_twice(setup)
    wide = await on_terminal(100, "status", "--wide", "--config", str(setup.config))
    piped = await rackwatch("status", "--config", str(setup.config))
    assert piped.code == 0, piped.err
    assert "\x1b[" in wide and "…" not in wide and "fitted to" not in wide
    assert max(width_of(line) for line in shown_lines(wide)) > 100

    def aged(text: str) -> list[str]:
        ages = (AGE.sub("N", line.replace("just now", "0s ago")) for line in shown_lines(text))
        return [" ".join(line.split()) for line in ages]

    assert aged(wide) == aged(piped.out)


async def test_no_colour_under_no_color_nor_in_a_pipe_and_a_pipe_gets_full_width(
    setup: Setup,
) -> None:
    """NO_COLOR on a terminal and any pipe get no escape code at all; a pipe is never narrowed,
    whatever COLUMNS says."""
    await checked_twice(setup)
    no_color = await on_terminal(
        100, "status", "--config", str(setup.config), env={"NO_COLOR": "1"}
    )
    assert "\x1b" not in no_color
    assert max(width_of(line) for line in no_color.splitlines()) <= 100
    piped = await rackwatch("status", "--config", str(setup.config), env={"COLUMNS": "80"})
    assert piped.code == 0, piped.err
    assert "\x1b" not in piped.out and "…" not in piped.out
    assert max(len(line) for line in piped.out.splitlines()) > 80
    [offline] = [line for line in piped.out.splitlines() if line.startswith("  r1-m3 ")]
    assert offline.endswith(f"offline: {SHOWN}")


async def test_a_hostile_comment_is_escaped_in_status_and_exact_in_its_json(setup: Setup) -> None:
    """Its escape sequences and newline show as escapes on the agent's one row; --json keeps
    the comment as the agent gave it."""
    await setup.harness.cycle()
    done = await rackwatch("status", "--config", str(setup.config))
    assert done.code == 0, done.err
    assert "\x1b" not in done.out and "\x07" not in done.out
    [offline] = [line for line in done.out.splitlines() if line.startswith("  r1-m3 ")]
    assert re.fullmatch(
        r"  r1-m3 +excluded \d+s +offline +(just now|\d+s ago) +0 +- +- +never +"
        + re.escape(f"offline: {SHOWN}"),
        offline,
    ), offline
    assert not any(line.startswith("second line") for line in done.out.splitlines())
    data = json.loads((await rackwatch("status", "--json", "--config", str(setup.config))).out)
    [agent] = [a for a in data["racks"][0]["agents"] if a["agent"] == "r1-m3"]
    assert agent["detail"] == f"offline: {HOSTILE}"


async def test_a_hostile_comment_is_escaped_in_run_once_and_exact_in_its_json(
    served: LabFactory, tmp_path: Path
) -> None:
    """run-once's table shows the comment escaped on the agent's row, byte for byte."""
    rack = SimRack("r1", [SimMachine("r1-m1", Behaviour.OFFLINE), SimMachine("r1-m2", None)])
    harness = await served([rack])
    harness.lab.set_agent_state("r1-m1", "offline", HOSTILE)
    config = write_config(tmp_path / "rw.toml", harness.lab, harness.urls, harness.state_file)
    done = await rackwatch("run-once", "--config", str(config))
    assert done.code == 0, done.err
    assert done.out.encode().splitlines()[1:4] == [
        b"  AGENT  MACHINE  OUTCOME   JOB ID  DURATION  DETAIL",
        b"  r1-m1  r1-m1    offline                     offline: Reason: \\x1b[2J\\x1b]0;pwned"
        b"\\x07 bad\\nsecond line",
        b"  r1-m2  r1-m2    no_agent                    no Testflinger agent of that name",
    ]
    data = json.loads((await rackwatch("run-once", "--json", "--config", str(config))).out)
    assert data["racks"][0]["agents"][0]["detail"] == f"offline: {HOSTILE}"


async def test_status_watch_redraws_in_place_until_ctrl_c(
    setup: Setup, terminals: list[Terminal]
) -> None:
    """Each frame reads the state file afresh, from the top left of the terminal; Ctrl-C
    exits 0."""
    terminal = Terminal(100, rows=40)
    terminals.append(terminal)
    await terminal.start("status", "--watch", "0.2", "--config", str(setup.config))
    await until(lambda: "no checks recorded yet" in terminal.text)
    await setup.harness.cycle()
    await until(lambda: "  AGENT " in terminal.text)
    text = terminal.text
    assert text.startswith("\x1b[2J\x1b[H"), text[:40]
    assert text.count("\x1b[H") >= 2
    assert "rackwatch status, every 0.2s (Ctrl-C stops)" in text
    assert terminal.process is not None
    terminal.process.send_signal(signal.SIGINT)
    assert await terminal.wait() == 0
    assert "Traceback" not in terminal.text


async def test_status_watch_does_not_go_with_json(setup: Setup) -> None:
    """--watch redraws text: with --json it is a usage error."""
    done = await rackwatch("status", "--watch", "--json", "--config", str(setup.config))
    assert done.code == 2
    assert "--watch" in done.err and "--json" in done.err
