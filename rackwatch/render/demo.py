"""The demo's story as it reads: what it runs, each cycle with the changes it made, and where
to explore what it left.

May import: `check` (for its report type), `model` and `render.table`.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from rackwatch.check import RackReport
from rackwatch.model import AlertEvent, EventKind, Outcome
from rackwatch.render.table import cut, plural

# What each kind of change reads as, in a column of its own.
_CHANGES: dict[str, str] = {
    EventKind.UNHEALTHY: "unhealthy",
    EventKind.RECOVERED: "recovered",
    EventKind.INCIDENT_OPENED: "incident",
    EventKind.INCIDENT_CLOSED: "incident over",
    EventKind.DRIFT: "drift",
}
_WIDTH = max(len(word) for word in _CHANGES.values())
# A change's line is cut to this many characters: the report, status and history say the rest.
LINE_WIDTH = 100


def intro_text(racks: int, cycles: int, directory: Path) -> str:
    """What the demo runs, and where its files go."""
    return (
        f"rackwatch demo: a simulated lab of {plural(racks, 'rack')} on 127.0.0.1, checked"
        f" {cycles} times with the same code\nas run-once (about 20 s); its configuration and"
        f" state file go to {directory}\n"
    )


def chapter_text(
    number: int, scene: str, reports: Sequence[RackReport], events: Sequence[AlertEvent]
) -> str:
    """A cycle: what was done to the lab, what its checks found, then a line per change."""
    outcomes = Counter(c.outcome for r in reports for c in r.checks if c.outcome is not None)
    found = ", ".join(
        [
            f"{outcomes[Outcome.PASSED]} passed",
            f"{outcomes[Outcome.FAILED]} failed",
            f"{outcomes[Outcome.TIMED_OUT]} timed out",
        ]
    )
    lines = [f"cycle {number}: {scene}", f"  {found}" + ("" if events else "; nothing changed")]
    lines += [cut(f"  {_change(event)}", LINE_WIDTH) for event in events]
    return "\n".join(lines)


def _change(event: AlertEvent) -> str:
    what = _CHANGES.get(event.kind, str(event.kind)).ljust(_WIDTH)
    match event.kind:
        case EventKind.INCIDENT_OPENED:
            return f"{what}  {event.rack}: {event.reason}"
        case EventKind.INCIDENT_CLOSED:
            return f"{what}  {event.rack}"
        case EventKind.RECOVERED:
            return f"{what}  {event.agent}: {event.reason}"
        case _:
            return f"{what}  {event.agent or event.rack}: {event.reason}"


def explore_text(
    directory: Path, config: Path, agent: str, *, web: bool, program: str = "rackwatch"
) -> str:
    """Where the demo's files stay, and the commands that read them (`web` too, if at hand).

    `program` is how the reader runs rackwatch: "python3 -m uv run rackwatch" after a demo
    started that way, where no `rackwatch` is on the shell's PATH.
    """
    option = f"--config {shlex.quote(str(config))}"
    commands = [
        f"{program} status {option}",
        f"{program} history {shlex.quote(agent)} {option}",
        f"{program} silence --list {option}",
    ]
    if web:
        commands.append(f"{program} web {option}")
    return (
        f"The demo's configuration and state file stay in {directory}. Explore them (the"
        " simulated lab is gone, and these need none of it):\n"
        + "\n".join(f"  {command}" for command in commands)
    )
