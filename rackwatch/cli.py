"""The `rackwatch` command: runs the command parsed, prints what it found, and exits.

Each handler calls the parts that do the work (`run_once`, `status`, `preflight`, `demo`, the
daemon), prints what `render` makes of the result and answers an `exits.ExitCode`; `main` maps
the errors that end a command to theirs. This is the only module that prints, but for the
terminal's progress line (`progress`) and the frames of status --watch (`terminal`). The parser
is `cli_args`'s, the help `cli_help`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

from rackwatch import alerts, logs, run_once, silences
from rackwatch.cli_args import build_parser
from rackwatch.clients import check_rack_name, make_session
from rackwatch.config import (
    Settings,
    StateSettings,
    load_settings,
    load_state_settings,
    parse_duration,
)
from rackwatch.errors import (
    ConfigError,
    RackHeldError,
    StateFileUnreadable,
    StoreError,
    UpstreamError,
    UsageError,
)
from rackwatch.exits import ExitCode, of_cycle
from rackwatch.model import utc_now
from rackwatch.preflight import try_services
from rackwatch.progress import log_stream
from rackwatch.render.cycle import as_json, as_text, explain_outcomes
from rackwatch.render.demo import explore_text
from rackwatch.render.history import history_json, history_text
from rackwatch.render.silence import silenced_text, silences_json, silences_text, unsilenced_text
from rackwatch.render.status import status_json, status_text, unhealthy_text
from rackwatch.render.table import Look, plural, utc
from rackwatch.status import build_status, needing_a_person
from rackwatch.store import Store
from rackwatch.store import exists as store_exists
from rackwatch.terminal import Screen, look_of


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = HANDLERS[args.command](args)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", ExitCode.CONFIG)
    except UsageError as exc:
        return _fail(str(exc), ExitCode.USAGE)
    except StateFileUnreadable as exc:
        return _fail(str(exc), ExitCode.NOINPUT)
    except StoreError as exc:
        text = str(exc)
        return _fail(
            text if text.startswith("state file") else f"state file: {text}", ExitCode.CANTCREAT
        )
    except RackHeldError as exc:
        return _fail(f"{exc}; try again later, or use --wait", ExitCode.TEMPFAIL)
    return code


# The checking commands: run, run-once and demo.


def cmd_run(args: argparse.Namespace) -> int:
    from rackwatch.daemon import Daemon

    settings = load_settings(args.config)
    _configure_logs(args, settings, default="info")
    daemon = Daemon(settings, config_path=args.config)
    code = asyncio.run(daemon.serve())
    if daemon.failure is not None:
        return _fail(daemon.failure, code)
    return code


def cmd_run_once(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    racks: list[str] = list(args.racks or settings.racks)
    if not racks:
        raise UsageError("no rack named, and the configuration lists none (racks = [...])")
    for rack in racks:
        check_rack_name(rack)
    _configure_logs(args, settings)
    if args.agents:
        try:
            racks = asyncio.run(run_once.racks_of_agents(settings, args.agents, racks))
        except UpstreamError as exc:
            return _fail(f"cannot tell which racks hold the agents: {exc}", ExitCode.UNAVAILABLE)
    waited: list[str] = []

    def waiting(rack: str, holder: str) -> None:
        waited.append(rack)
        print(
            f"rackwatch: waiting for rack {rack!r}, which another rackwatch is checking"
            f" ({holder})",
            file=sys.stderr,
        )

    with ExitStack() as stack:
        held = run_once.held_state_file(
            settings, racks, dry_run=args.dry_run, wait=args.wait, on_wait=waiting
        )
        try:
            state_file = stack.enter_context(held)
        except KeyboardInterrupt:
            what = f" for rack {waited[-1]!r}" if waited else ""
            return _fail(f"stopped waiting{what}; nothing was checked", ExitCode.INTERRUPTED)
        try:
            reports = asyncio.run(
                run_once.check_racks(
                    settings, racks, state_file, dry_run=args.dry_run, agents=args.agents
                )
            )
        except KeyboardInterrupt:
            left = run_once.jobs_left(state_file)
            jobs = f"{left} job{'s' if left != 1 else ''}"
            return _fail(
                f"stopped waiting; {jobs} stay recorded in {state_file}, "
                "and the next run-once or run picks them up",
                ExitCode.INTERRUPTED,
            )
    web_base = settings.testflinger.web_base
    print(as_json(reports, web_base=web_base) if args.json else as_text(reports))
    return of_cycle(reports)


def cmd_demo(args: argparse.Namespace) -> int:
    from rackwatch import demo  # it imports the simulated lab, which no other command needs

    _configure_logs(args, default="error")  # the story says it all
    directory = demo.prepare(args.dir)
    # With --json, stdout is the report alone; the story goes to stderr.
    story_out = sys.stderr if args.json else sys.stdout

    def tell(line: str) -> None:
        print(line, file=story_out, flush=True)

    try:
        story = asyncio.run(demo.tell(directory, tell))
    except KeyboardInterrupt:
        return _fail(
            f"demo interrupted; what it recorded stays in {directory}", ExitCode.INTERRUPTED
        )
    if args.json:
        print(as_json(story.reports, web_base=story.web_base))
    else:
        print()
        print(as_text(story.reports))
        print()
        print(explain_outcomes())
    # Under `uv run` (which says so in $UV_RUN_RECURSION_DEPTH) the shell has no rackwatch.
    program = (
        "python3 -m uv run rackwatch" if "UV_RUN_RECURSION_DEPTH" in os.environ else "rackwatch"
    )
    explore = explore_text(
        story.directory, story.config, story.history_agent, web="web" in HANDLERS, program=program
    )
    print(f"\n{explore}", file=story_out)
    for step in story.missing:
        _fail(f"demo: this step of the story did not happen: {step}", ExitCode.FAILURE)
    return ExitCode.FAILURE if story.missing else ExitCode.OK


def _configure_logs(
    args: argparse.Namespace, settings: Settings | None = None, default: str | None = None
) -> None:
    # On a terminal the progress line says what happens; logs say only what goes wrong.
    default = default or ("warning" if sys.stderr.isatty() else "info")
    secrets = settings.secret_values() if settings else ()
    logs.configure(args.log_level or default, args.log_format, secrets=secrets, stream=log_stream())


# The operator's commands: status, history and check-config.


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_state_settings(args.config)
    named: list[str] = [check_rack_name(rack) for rack in args.racks]
    if args.watch is not None:
        if args.json:
            raise UsageError("--watch redraws the text; it does not go with --json")
        return _watch_status(args, settings, named)
    try:
        text, code = _status_view(args, settings, named, look_of(sys.stdout, wide=args.wide))
    except StoreError as exc:
        return _fail(str(exc), ExitCode.NOINPUT)
    print(text)
    return code


def _status_view(
    args: argparse.Namespace, settings: StateSettings, named: list[str], look: Look
) -> tuple[str, int]:
    """What `status` prints, read from the state file now, and its exit code.

    Raises StoreError when the state file cannot be read."""
    state_file = settings.state_file
    now = utc_now()
    if not store_exists(state_file):
        racks = build_status(None, settings.racks, settings.schedule, now, named=named)
        if not args.json:
            return f"no checks recorded yet: {state_file} does not exist", ExitCode.OK
        return status_json([] if args.unhealthy else racks), ExitCode.OK
    with Store.open_readonly(state_file) as store, store.reading():
        racks = build_status(store, settings.racks, settings.schedule, now, named=named)
    if args.unhealthy:
        racks = needing_a_person(racks)
    if args.json:
        text = status_json(racks)
    elif args.unhealthy:
        text = unhealthy_text(racks, now, look)
    elif not racks:
        text = f"no racks: none configured, and none recorded in {state_file}"
    else:
        text = status_text(racks, now, look)
    # With --unhealthy, what is listed needs a person: exit 1, for cron mail or a Nagios check.
    return text, ExitCode.FAILURE if args.unhealthy and racks else ExitCode.OK


def _watch_status(args: argparse.Namespace, settings: StateSettings, named: list[str]) -> int:
    """`status --watch`: the status, read afresh every `args.watch` seconds, until Ctrl-C."""
    screen = Screen(sys.stdout)
    try:
        while True:
            # Looked up for each frame: the terminal may have been resized meanwhile.
            look = look_of(sys.stdout, wide=args.wide)
            try:
                text, _ = _status_view(args, settings, named, look)
            except StoreError as exc:  # the next frame may read it; a watch goes on
                text = f"rackwatch: {exc}"
            head = f"rackwatch status, every {args.watch:g}s (Ctrl-C stops): {utc(utc_now())} UTC"
            screen.show(f"{head}\n\n{text}")
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return ExitCode.OK


def cmd_history(args: argparse.Namespace) -> int:
    settings = load_state_settings(args.config)
    state_file = settings.state_file
    if not store_exists(state_file):
        return _fail(f"no checks recorded yet: {state_file} does not exist", ExitCode.FAILURE)
    try:
        with Store.open_readonly(state_file) as store:
            checks = store.history(args.agent, limit=args.limit)
            now = utc_now()
            in_force = store.silences_in_force(now)
    except StoreError as exc:
        return _fail(str(exc), ExitCode.NOINPUT)
    if not checks:
        return _fail(f"no checks of agent {args.agent!r} in {state_file}", ExitCode.FAILURE)
    # Silenced as an agent of the rack of its latest check.
    silence = silences.covering(in_force, agent=args.agent, rack=checks[0].rack, at=now)
    web_base = settings.testflinger.web_base
    if args.json:
        print(history_json(args.agent, checks, web_base=web_base, silence=silence))
    else:
        print(
            history_text(args.agent, checks, web_base=web_base, full_log=args.log, silence=silence)
        )
    return ExitCode.OK


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    logs.configure("error", secrets=settings.secret_values())  # the lines below say what went wrong
    racks = plural(len(settings.racks), "rack")
    print(f"config: {settings.config_path}: valid ({racks}, state file {settings.state_file})")
    try:
        trials = asyncio.run(try_services(settings))
    except KeyboardInterrupt:
        return _fail("check-config interrupted", ExitCode.INTERRUPTED)
    if not settings.racks:
        print("maas: not tried: the configuration lists no racks (racks = [...])")
    for trial in trials:
        print("\n".join(trial.lines))
    failed = [trial.failed for trial in trials if trial.failed]
    if failed:
        return _fail(f"check-config: failed: {', '.join(failed)}", ExitCode.UNAVAILABLE)
    return ExitCode.OK


# The silence commands: silence (and silence --list) and unsilence.


def cmd_silence(args: argparse.Namespace) -> int:
    settings = load_state_settings(args.config)
    state_file = settings.state_file
    if args.list:
        if args.agents or args.racks or args.reason or args.length or args.until:
            raise UsageError("--list takes no AGENT, --rack, --reason, --for or --until")
        return _list_silences(state_file, as_json=args.json)
    if args.json:
        raise UsageError("--json goes with --list")
    agents, racks = _targets(args, "silence")
    reason = silences.clean_reason(args.reason or "")
    now = utc_now()
    until = silences.end_of(
        now,
        length=None if args.length is None else _duration(args.length),
        until=None if args.until is None else silences.parse_time(args.until),
    )
    if not store_exists(state_file):
        return _no_state_file(state_file)
    with Store.open(state_file) as store:
        checked, recorded = store.recorded_agents(agents), store.racks()
        unknown = [f"agent {a!r}" for a in agents if a not in checked]
        unknown += [f"rack {r!r}" for r in racks if r not in settings.racks and r not in recorded]
        if unknown:
            raise UsageError(
                f"unknown {', '.join(unknown)}: never checked (agents as status lists them;"
                " racks configured or checked); nothing silenced"
            )
        made = store.add_silences(
            agents=agents, racks=racks, reason=reason, by=_user(), until=until, at=now
        )
    print(silenced_text(made))
    return ExitCode.OK


def cmd_unsilence(args: argparse.Namespace) -> int:
    settings = load_state_settings(args.config)
    agents, racks = _targets(args, "unsilence")
    if not store_exists(settings.state_file):
        return _no_state_file(settings.state_file)
    now = utc_now()
    with Store.open(settings.state_file) as store:
        ended = store.end_silences(agents=agents, racks=racks, at=now)
        in_force = store.silences_in_force(now)
        rack_of = {agent: rack for agent, (rack, _) in store.health().items()}
    still = [
        (agent, silence)
        for agent in agents
        if (silence := silences.of_rack(in_force, rack_of.get(agent, ""), now)) is not None
    ]
    if ended or still:
        print(unsilenced_text(ended, still))
    none = [f"{a} has" for a in agents if a not in {s.agent for s in ended}]
    none += [f"rack {r} has" for r in racks if r not in {s.rack for s in ended}]
    for name in none:
        _fail(f"{name} no silence of its own in force", ExitCode.FAILURE)
    return ExitCode.FAILURE if none else ExitCode.OK


def _targets(args: argparse.Namespace, command: str) -> tuple[list[str], list[str]]:
    """The agents and racks named, each once, in the order given."""
    if not args.agents and not args.racks:
        raise UsageError(f"name an agent or a --rack to {command}")
    agents = list(dict.fromkeys(agent.strip() for agent in args.agents))
    if "" in agents:
        raise UsageError("an agent name cannot be empty")
    return agents, list(dict.fromkeys(check_rack_name(rack) for rack in args.racks))


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--for {text!r}: {exc}") from None


def _user() -> str:
    """Who runs the command: the user who ran sudo, else the login name."""
    if os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no name for the uid (a container's)
        return f"uid {os.getuid()}"


def _list_silences(state_file: Path, *, as_json: bool) -> int:
    found = []
    if store_exists(state_file):
        try:
            with Store.open_readonly(state_file) as store:
                found = store.silences_in_force(utc_now())
        except StoreError as exc:
            return _fail(str(exc), ExitCode.NOINPUT)
    print(silences_json(found) if as_json else silences_text(found))
    return ExitCode.OK


def _no_state_file(state_file: Path) -> int:
    return _fail(
        f"no checks recorded yet: {state_file} does not exist (the daemon or run-once makes it)",
        ExitCode.NOINPUT,
    )


# The alerts commands: alerts test.


def cmd_alerts_test(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    logs.configure("error", secrets=settings.secret_values())  # the line below says what failed
    if not settings.alerts.webhook_url.get_secret_value():
        return _fail("alerts.webhook_url is not set: there is no webhook to test", ExitCode.CONFIG)

    async def send() -> None:
        async with make_session() as session:
            await alerts.send_test(settings.alerts, session)

    try:
        asyncio.run(send())
    except UpstreamError as exc:
        return _fail(f"alerts test: {exc}", ExitCode.UNAVAILABLE)
    except KeyboardInterrupt:
        return _fail("alerts test interrupted", ExitCode.INTERRUPTED)
    print("sent")
    return ExitCode.OK


def _fail(message: str, code: int) -> int:
    print(f"rackwatch: {message}", file=sys.stderr)
    return code


HANDLERS: Mapping[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "run-once": cmd_run_once,
    "demo": cmd_demo,
    "status": cmd_status,
    "history": cmd_history,
    "check-config": cmd_check_config,
    "silence": cmd_silence,
    "unsilence": cmd_unsilence,
    "alerts test": cmd_alerts_test,
}
