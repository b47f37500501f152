"""The `rackwatch` command: runs the command parsed, prints what it found, and exits.

Each handler calls the parts that do the work (`run_once`, `preflight`, `demo`, the daemon),
prints what `render` makes of the result and answers an `exits.ExitCode`; `main` maps the
errors that end a command to theirs. The operator's commands over the state file (status,
history, silence, unsilence, web) are `cli_state`'s. These two are the only modules that print,
but for the terminal's progress line (`progress`) and the frames of status --watch
(`terminal`). The parser is `cli_args`'s, the help `cli_help`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack

from rackwatch import cli_state
from rackwatch.cli_args import build_parser
from rackwatch.cli_state import fail as _fail
from rackwatch.config import Settings, load_settings
from rackwatch.errors import (
    ConfigError,
    RackHeldError,
    StateFileUnreadable,
    StoreError,
    UpstreamError,
    UsageError,
)
from rackwatch.exits import ExitCode
from rackwatch.render.table import plural

# The commands import what only they need when they run (`status` needs no HTTP client, no
# alerts and no scheduler), so that a command over the state file starts quickly.

# How many allocations the garbage collector lets pass before it looks at the young objects.
# A check cycle holds tens of thousands of objects for its whole length (each check's task,
# coroutine and futures) while the answers it reads make as many short-lived ones (a search
# lists every job in flight, each round). At CPython's default of 700 the collector caught
# those mid-answer, moved them to the old generation and so ran a full collection every few
# rounds: a quarter of the CPU of a 10,000-agent run (`benchmarks/cycle.py`), and 12% of a
# `status` over 2,000 agents. At 10,000 they die young.
YOUNG_GENERATION = 10_000


def main(argv: Sequence[str] | None = None) -> int:
    gc.set_threshold(YOUNG_GENERATION, *gc.get_threshold()[1:])
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # here, so that a reader gone is found here (argparse's exits too)
    except BrokenPipeError:
        # Nothing more can be shown; the interpreter's own flush at exit must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
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
    from rackwatch import run_once
    from rackwatch.config import check_rack_name
    from rackwatch.exits import of_cycle
    from rackwatch.render.cycle import as_json, as_text

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
    from rackwatch.render.cycle import as_json, as_text, explain_outcomes
    from rackwatch.render.demo import explore_text

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
    from rackwatch import logs
    from rackwatch.progress import log_stream

    # On a terminal the progress line says what happens; logs say only what goes wrong.
    default = default or ("warning" if sys.stderr.isatty() else "info")
    secrets = settings.secret_values() if settings else ()
    logs.configure(args.log_level or default, args.log_format, secrets=secrets, stream=log_stream())


# The commands that try the configuration: check-config and alerts test.


def cmd_check_config(args: argparse.Namespace) -> int:
    from rackwatch import logs
    from rackwatch.preflight import try_configuration

    settings = load_settings(args.config)
    logs.configure("error", secrets=settings.secret_values())  # the lines below say what went wrong
    racks = plural(len(settings.racks), "rack")
    print(f"config: {settings.config_path}: valid ({racks}, state file {settings.state_file})")
    try:
        trials = asyncio.run(try_configuration(settings))
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


def cmd_alerts_test(args: argparse.Namespace) -> int:
    from rackwatch import alerts, logs
    from rackwatch.clients import make_session

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


HANDLERS: Mapping[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "run-once": cmd_run_once,
    "demo": cmd_demo,
    "status": cli_state.cmd_status,
    "history": cli_state.cmd_history,
    "check-config": cmd_check_config,
    "silence": cli_state.cmd_silence,
    "unsilence": cli_state.cmd_unsilence,
    "web": cli_state.cmd_web,
    "alerts test": cmd_alerts_test,
}
