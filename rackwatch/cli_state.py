"""The operator's commands that read or mark the state file: status, history, silence,
unsilence and web.

They need no credentials and no lab: of the configuration they read the racks, the state file,
the schedule and the job links (`config.StateSettings`). `status`, `history`, `silence --list`
and `web` open the state file read-only, so that they work beside the daemon and on a copy of
the file. `cli` dispatches to them; like it, they print what they found and answer an
`exits.ExitCode`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from rackwatch import silences
from rackwatch.config import StateSettings, check_rack_name, load_state_settings, parse_duration
from rackwatch.errors import StoreError, UsageError
from rackwatch.exits import ExitCode
from rackwatch.model import utc_now
from rackwatch.render.history import history_json, history_text
from rackwatch.render.silence import silenced_text, silences_json, silences_text, unsilenced_text
from rackwatch.render.status import status_json, status_text, unhealthy_text
from rackwatch.render.table import Look, utc
from rackwatch.status import build_status, needing_a_person
from rackwatch.store import Store
from rackwatch.store import exists as store_exists
from rackwatch.terminal import Screen, look_of

# status and history.


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
        return fail(str(exc), ExitCode.NOINPUT)
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
        return fail(f"no checks recorded yet: {state_file} does not exist", ExitCode.FAILURE)
    try:
        with Store.open_readonly(state_file) as store:
            checks = store.history(args.agent, limit=args.limit)
            days = store.days(args.agent)
            now = utc_now()
            in_force = store.silences_in_force(now)
    except StoreError as exc:
        return fail(str(exc), ExitCode.NOINPUT)
    if not checks:
        return fail(f"no checks of agent {args.agent!r} in {state_file}", ExitCode.FAILURE)
    # Silenced as an agent of the rack of its latest check.
    silence = silences.covering(in_force, agent=args.agent, rack=checks[0].rack, at=now)
    web_base = settings.testflinger.web_base
    if args.json:
        print(history_json(args.agent, checks, web_base=web_base, silence=silence, days=days))
    else:
        text = history_text(
            args.agent, checks, web_base=web_base, full_log=args.log, silence=silence, days=days
        )
        print(text)
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
        fail(f"{name} no silence of its own in force", ExitCode.FAILURE)
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
            return fail(str(exc), ExitCode.NOINPUT)
    print(silences_json(found) if as_json else silences_text(found))
    return ExitCode.OK


def _no_state_file(state_file: Path) -> int:
    return fail(
        f"no checks recorded yet: {state_file} does not exist (the daemon or run-once makes it)",
        ExitCode.NOINPUT,
    )


# web: the pages, served from the state file.


def cmd_web(args: argparse.Namespace) -> int:
    # Imported here: the pages (aiohttp.web, jinja2) cost every other command's start-up.
    from rackwatch.web import DEFAULT_ADDRESS, serve_pages

    settings = load_state_settings(args.config)
    from rackwatch import logs

    logs.configure(args.log_level or "warning", args.log_format)
    state_file = settings.state_file
    if store_exists(state_file):  # one that is not there yet is waited for, page by page
        try:
            Store.open_readonly(state_file).close()
        except StoreError as exc:
            return fail(str(exc), ExitCode.NOINPUT)
    if args.listen is not None:
        address, setting = args.listen, "--listen"
    elif settings.listen is not None:
        address, setting = settings.listen, (
            "web.listen" if settings.web.listen else "metrics.listen"
        )
    else:
        address, setting = DEFAULT_ADDRESS, "the default address"

    def listening(url: str) -> None:
        print(f"rackwatch web: serving {state_file} at {url} (Ctrl-C stops)", flush=True)

    asyncio.run(serve_pages(settings, address, setting=setting, on_listening=listening))
    return ExitCode.OK


def fail(message: str, code: int) -> int:
    """Say `message` on one line of stderr; answer `code`."""
    print(f"rackwatch: {message}", file=sys.stderr)
    return code
