"""`rackwatch demo`: rackwatch's story, told in a few fast cycles of a simulated lab.

`tell` serves `simlab.demo_lab` on 127.0.0.1 and checks its racks once per `Scene` with the
code of run-once (`run_once.check_racks`), changing the lab before each cycle: machines pass,
one falls ill after two failures, a failed switch makes a rack incident that the next cycle
ends while the ill machine recovers, and MAAS marks a machine Broken. After each cycle it hands
its caller the lines that tell what the cycle recorded: its outcomes, and each change its
rack cycles queued in the state file's alert outbox (the demo has no webhook, so they stay
there). A scene's expectations are tested against that record, never against the script, and
those it did not meet are `Story.missing`.

The configuration and the state file stay in a directory of their own, for status, history
and silence --list to read once the lab is gone. This module alone, but for the tests, imports
`rackwatch.simlab`. May import: `run_once`, `check` (for its report type), `clients`, `config`,
`errors`, `model`, `render`, `store` and `simlab`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from rackwatch import run_once
from rackwatch.check import RackReport
from rackwatch.clients import RetryPolicy
from rackwatch.config import Settings
from rackwatch.errors import UsageError
from rackwatch.model import Alert, AlertEvent, EventKind, Outcome
from rackwatch.render.demo import chapter_text, intro_text
from rackwatch.simlab import Behaviour, Lab, LabUrls, demo_lab
from rackwatch.store import Store

CONFIG_NAME = "rackwatch.toml"
STATE_FILE_NAME = "state.db"

# The lab's timings and the checks' limits: a passing job takes about 1.3 s; a job that cannot
# end (a slow machine, an agent that never picks up) is cancelled at the timeout, which sets the
# length of a cycle.
PROVISION_S = 1.0
PICKUP_S = 0.1
POLL_INTERVAL = timedelta(seconds=0.25)
JOB_TIMEOUT = timedelta(seconds=3)

# The machines the story is about.
ILL = "tor3-a-m06"  # fails its provisioning (Behaviour.FAIL) until it is repaired
SWITCHED = ("tor3-a-m01", "tor3-a-m02", "tor3-a-m03")  # behind the switch that fails
BROKEN = "tor3-b-m03"  # MAAS marks it Broken at the end


@dataclass(frozen=True, slots=True)
class Chapter:
    """One cycle of the story as the state file recorded it."""

    number: int
    scene: str
    reports: list[RackReport]
    events: list[AlertEvent]  # what the cycle queued to announce, rack by rack


@dataclass(frozen=True, slots=True)
class Expectation:
    """A step of the story, and how to see it in a chapter."""

    what: str
    is_seen: Callable[[Chapter], bool]


@dataclass(frozen=True, slots=True)
class Scene:
    """What is done to the lab before a cycle, and what the cycle must then record."""

    title: str
    change: Callable[[Lab], None]
    expected: tuple[Expectation, ...]


@dataclass(frozen=True, slots=True)
class Story:
    """What the demo left: its files, the last cycle's reports, and the steps not seen."""

    directory: Path
    config: Path
    reports: list[RackReport]
    web_base: str  # the simulated Testflinger's, dead once the demo is over
    missing: list[str]  # "cycle N: <step>", for each expectation the cycle did not meet
    history_agent: str = ILL  # the agent whose history tells the most


def prepare(directory: Path | None) -> Path:
    """The directory for the demo's files, absolute: `directory`, made if need be, else a new
    one under the system's temporary directory. Neither is deleted afterwards.

    Raises:
        UsageError: `directory` is not an empty directory, or cannot be made.
    """
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="rackwatch-demo-")).resolve()
    try:
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise UsageError(
                f"--dir {directory}: not an empty directory; the demo needs a state file of its"
                " own (give a new or empty directory)"
            )
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--dir {directory}: {exc.strerror or exc}") from None
    return directory.resolve()


async def tell(directory: Path, on_line: Callable[[str], None]) -> Story:
    """Run the story in `directory` (see `prepare`), handing each line of it to `on_line`."""
    lab = demo_lab(provision_seconds=PROVISION_S, pickup_seconds=PICKUP_S)
    state_file = directory / STATE_FILE_NAME
    on_line(intro_text(len(lab.rack_names), len(SCENES), directory))
    missing: list[str] = []
    reports: list[RackReport] = []
    async with lab.serve() as urls:
        settings = _settings(lab, urls, state_file)
        config = write_config(directory / CONFIG_NAME, settings)
        for number, scene in enumerate(SCENES, start=1):
            scene.change(lab)
            reports = await run_once.check_racks(
                settings, settings.racks, state_file, retry=RetryPolicy.DEMO
            )
            chapter = Chapter(number, scene.title, reports, recorded_events(state_file, reports))
            on_line(chapter_text(chapter.number, chapter.scene, chapter.reports, chapter.events))
            missing += [
                f"cycle {number}: {step.what}"
                for step in scene.expected
                if not step.is_seen(chapter)
            ]
    return Story(directory, config, reports, settings.testflinger.web_base, missing)


def write_config(path: Path, settings: Settings) -> Path:
    """A configuration of the demo's racks and state file for the commands that read only the
    state file. It has no [maas]; its Testflinger URL, the simulated one, is there for the job
    links that history shows, which lead nowhere once the demo is over."""
    path.write_text(
        "# Written by `rackwatch demo`: the racks of its simulated lab and the state file its\n"
        "# cycles recorded. The lab ended with the demo: status, history and silence read only\n"
        "# the state file, and the job links lead nowhere.\n"
        f"racks = {json.dumps(list(settings.racks))}\n"
        f"state_file = {json.dumps(str(settings.state_file))}\n"
        "\n"
        "[testflinger]\n"
        f"url = {json.dumps(settings.testflinger.url)}\n",
        encoding="utf-8",
    )
    return path


def recorded_events(state_file: Path, reports: Sequence[RackReport]) -> list[AlertEvent]:
    """The events that the reports' rack cycles queued in the outbox, in the reports' order."""
    with Store.open_readonly(state_file) as store:
        alerts = store.pending_alerts()
    events: list[AlertEvent] = []
    for report in reports:
        for record in alerts:
            if record.cycle_id == report.cycle.id:
                events += Alert.from_json(record.body).events
    return events


def _settings(lab: Lab, urls: LabUrls, state_file: Path) -> Settings:
    return Settings.from_mapping(
        {
            "racks": lab.rack_names,
            "state_file": str(state_file),
            "maas": {"url": urls.maas, "api_key": lab.maas_api_key},
            "testflinger": {"url": urls.testflinger},
            "check": {
                "poll_interval": POLL_INTERVAL.total_seconds(),
                "job_timeout": JOB_TIMEOUT.total_seconds(),
            },
        },
        source="the demo",
    )


# The story's steps, as a chapter shows them.


def _passed(chapter: Chapter) -> bool:
    return any(c.outcome is Outcome.PASSED for r in chapter.reports for c in r.checks)


def _outcome(agent: str, outcome: Outcome) -> Callable[[Chapter], bool]:
    def is_seen(chapter: Chapter) -> bool:
        return any(
            c.agent == agent and c.outcome is outcome for r in chapter.reports for c in r.checks
        )

    return is_seen


def _announced(
    kind: EventKind, *, rack: str | None = None, agent: str | None = None, saying: str = ""
) -> Callable[[Chapter], bool]:
    def is_seen(chapter: Chapter) -> bool:
        return any(
            event.kind is kind
            and (rack is None or event.rack == rack)
            and (agent is None or event.agent == agent)
            and saying in event.reason
            for event in chapter.events
        )

    return is_seen


def _not(seen: Callable[[Chapter], bool]) -> Callable[[Chapter], bool]:
    return lambda chapter: not seen(chapter)


def _as_built(_lab: Lab) -> None:
    pass


def _switch_fails(lab: Lab) -> None:
    for agent in SWITCHED:
        lab.set_behaviour(agent, Behaviour.FAIL)


def _switch_and_machine_fixed(lab: Lab) -> None:
    for agent in (*SWITCHED, ILL):
        lab.set_behaviour(agent, Behaviour.PASS)


def _marked_broken(lab: Lab) -> None:
    lab.set_maas_status(BROKEN, "Broken")
    lab.set_behaviour(BROKEN, Behaviour.FAIL)  # MAAS deploys no Broken machine


SCENES: Sequence[Scene] = (
    Scene(
        f"the lab as built: most machines pass, and {ILL}'s provisioning fails",
        _as_built,
        (
            Expectation("machines pass", _passed),
            Expectation(f"{ILL} fails", _outcome(ILL, Outcome.FAILED)),
            Expectation(
                f"{ILL} is not unhealthy after one failure",
                _not(_announced(EventKind.UNHEALTHY, agent=ILL)),
            ),
        ),
    ),
    Scene(
        f"the same lab again: {ILL} fails a second time",
        _as_built,
        (
            Expectation(
                f"{ILL} is announced unhealthy after its second failure",
                _announced(EventKind.UNHEALTHY, agent=ILL),
            ),
        ),
    ),
    Scene(
        f"a switch of tor3-a fails: {', '.join(SWITCHED)} fail their provisioning too",
        _switch_fails,
        (
            Expectation(
                "a rack incident opens on tor3-a",
                _announced(EventKind.INCIDENT_OPENED, rack="tor3-a"),
            ),
        ),
    ),
    Scene(
        f"the switch is replaced, and {ILL} repaired",
        _switch_and_machine_fixed,
        (
            Expectation(
                "the incident on tor3-a closes",
                _announced(EventKind.INCIDENT_CLOSED, rack="tor3-a"),
            ),
            Expectation(
                f"{ILL} is announced recovered", _announced(EventKind.RECOVERED, agent=ILL)
            ),
        ),
    ),
    Scene(
        f"an engineer marks {BROKEN} Broken in MAAS, which then fails to deploy it",
        _marked_broken,
        (
            Expectation(
                f"drift appears: MAAS marks {BROKEN} Broken",
                _announced(EventKind.DRIFT, agent=BROKEN, saying="Broken"),
            ),
        ),
    ),
)
