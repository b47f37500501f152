"""The `rackwatch` command: parses arguments, builds the parts, prints, and maps errors to exit codes.

This is the only module that prints. Exit codes follow sysexits where one fits:
0 all good (for `run`: stopped by a signal), 1 a check failed (for `status --unhealthy`:
something needs a person), 2 usage, 66 the state file cannot be read (EX_NOINPUT), 69 a rack
could not be checked (EX_UNAVAILABLE), 73 the state file cannot be created (EX_CANTCREAT), 74
the daemon's state file was lost or stays unusable (EX_IOERR), 75 another rackwatch process is
checking the rack (EX_TEMPFAIL), 78 bad configuration (EX_CONFIG), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO, cast

from rackwatch import __version__, alerts, logs, report
from rackwatch.check import Checker, CheckPlan, RackReport, Tally
from rackwatch.clients import RetryPolicy, check_rack_name, connect
from rackwatch.clients._http import make_session
from rackwatch.config import Settings, StateSettings, load_settings, load_state_settings
from rackwatch.errors import ConfigError, RackHeldError, StoreError, UpstreamError, UsageError
from rackwatch.locks import RackLocks
from rackwatch.model import AgentHealth, utc_now
from rackwatch.schedule import next_check
from rackwatch.store import Store

EXIT_USAGE = 2
EXIT_NOINPUT = 66
EXIT_UNAVAILABLE = 69
EXIT_CANTCREAT = 73
EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", EXIT_CONFIG)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except StoreError as exc:
        return _fail(f"state file: {exc}", EXIT_CANTCREAT)
    except RackHeldError as exc:
        return _fail(f"{exc}; try again later, or use --wait", EXIT_TEMPFAIL)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rackwatch",
        description="Finds the bad machines of a MAAS + Testflinger lab before a real test run does.",
        epilog="Try it with no setup at all: rackwatch demo",
    )
    parser.add_argument("--version", action="version", version=f"rackwatch {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = _command(
        commands,
        "run",
        "check every configured rack on its schedule, until stopped (the systemd service)",
        "rackwatch run --config /etc/rackwatch/config.toml",
    )
    _explain(run, RUN_HELP)
    _config_option(run)
    _log_options(run)
    run.set_defaults(handler=cmd_run)

    run_once = _command(
        commands,
        "run-once",
        "check racks once and wait for every job",
        "rackwatch run-once tor3-a --config ./rackwatch.toml",
    )
    _explain(run_once, RUN_ONCE_HELP)
    run_once.add_argument("racks", nargs="*", metavar="RACK", help="default: every configured rack")
    _config_option(run_once)
    run_once.add_argument("--json", action="store_true", help="print the results as JSON")
    run_once.add_argument(
        "--dry-run", action="store_true", help="submit nothing; report 'ready' where a job would go"
    )
    run_once.add_argument(
        "--wait",
        action="store_true",
        help="wait for racks another rackwatch is checking, instead of exiting 75",
    )
    _log_options(run_once)
    run_once.set_defaults(handler=cmd_run_once)

    demo = _command(
        commands,
        "demo",
        "run a whole cycle against a built-in simulated lab",
        "rackwatch demo",
    )
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    _log_options(demo)
    demo.set_defaults(handler=cmd_demo)
    _add_operator_commands(commands)
    _add_alerts_commands(commands)
    return parser


RUN_HELP = """\
Check every configured rack every schedule.interval, until stopped: the systemd service.
SIGTERM or SIGINT stops it, leaving the jobs in flight recorded for the next start (a second
signal exits at once, with 128 + its number); SIGHUP re-reads the configuration.

Each cycle of a rack holds the rack's lock (a file in <state_file>.locks/), so that no other
rackwatch checks the rack meanwhile. A rack that another process holds (a run-once) is checked
as soon as that process lets it go.

The daemon exits when its state file is deleted or replaced under it, and when 3 cycles in a
row fail on the file (disk full, a corrupt file), so that a restart opens it afresh; systemd
restarts it.

Exits 0 when stopped by a signal; 73 when the state file cannot be created at start; 74 when
the state file was lost or stays unusable; 78 on a configuration error."""

RUN_ONCE_HELP = """\
Check the named racks (default: every configured rack) together, once, and wait for every
job. Prints a table per rack and a summary line; --json prints the same as data.

Only one rackwatch process checks a rack at a time: run-once first takes the lock of every rack
it checks (a file in <state_file>.locks/). When another rackwatch (the daemon, or another
run-once) is checking one of them, it exits 75 at once, naming that process, and submits
nothing; with --wait it waits until the racks are free instead. --dry-run takes no lock: it
submits nothing and records nothing.

Exits 0 when every checked agent passed (skips are not failures); 1 when at least one check
failed, timed out or ended in error; 2 on a usage error; 69 when a rack could not be checked
(MAAS or Testflinger unreachable, credentials refused, unknown tag); 73 when the state file
cannot be created; 75 when another rackwatch is checking a rack; 78 on a configuration error;
130 when interrupted (the jobs stay recorded for the next run)."""


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
    with ExitStack() as stack:
        if args.dry_run:
            # A dry run records nothing: it works on a throwaway state file.
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            state_file = scratch / "dry-run.db"
        else:
            state_file = settings.state_file
            waited: list[str] = []

            def waiting(rack: str, holder: str) -> None:
                waited.append(rack)
                print(
                    f"rackwatch: waiting for rack {rack!r}, which another rackwatch is checking"
                    f" ({holder})",
                    file=sys.stderr,
                )

            locks = RackLocks(state_file, "run-once")
            try:
                stack.enter_context(locks.hold(racks, wait=args.wait, on_wait=waiting))
            except KeyboardInterrupt:
                what = f" for rack {waited[-1]!r}" if waited else ""
                return _fail(f"stopped waiting{what}; nothing was checked", EXIT_INTERRUPTED)
        try:
            reports = _run_cycle(settings, racks, state_file, dry_run=args.dry_run)
        except KeyboardInterrupt:
            return _interrupted(state_file)
    print(report.as_json(reports) if args.json else report.as_text(reports))
    return report.exit_code(reports)


def cmd_demo(args: argparse.Namespace) -> int:
    from rackwatch.simlab import demo_lab

    _configure_logs(args, default="error")  # the report says it all
    lab = demo_lab(provision_seconds=3.0, pickup_seconds=0.3)

    async def run(state_file: Path) -> list[RackReport]:
        async with lab.serve() as urls:
            settings = Settings.from_mapping(
                {
                    "racks": lab.rack_names,
                    "state_file": str(state_file),
                    "maas": {"url": urls.maas, "api_key": lab.maas_api_key},
                    "testflinger": {"url": urls.testflinger},
                    "check": {"poll_interval": 0.5, "job_timeout": 10},
                },
                source="the demo",
            )
            return await _cycle(
                settings,
                settings.racks,
                state_file,
                retry=RetryPolicy(attempts=3, wait_initial_s=0.2, wait_max_s=1.0, timeout_s=10.0),
            )

    print(
        "rackwatch demo: a simulated lab of 3 racks on 127.0.0.1, checked with the same code as "
        "run-once (about 15 s)…\n",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as scratch:
        state_file = Path(scratch) / "demo.db"
        try:
            reports = asyncio.run(run(state_file))
        except KeyboardInterrupt:
            return _fail("demo interrupted", EXIT_INTERRUPTED)
    if args.json:
        print(report.as_json(reports))
    else:
        print(report.as_text(reports))
        print()
        print(report.explain_outcomes())
    return 0


def _run_cycle(
    settings: Settings, racks: list[str], state_file: Path, *, dry_run: bool
) -> list[RackReport]:
    return asyncio.run(_cycle(settings, racks, state_file, dry_run=dry_run))


async def _cycle(
    settings: Settings,
    racks: list[str],
    state_file: Path,
    *,
    dry_run: bool = False,
    retry: RetryPolicy | None = None,
) -> list[RackReport]:
    """One cycle with the live progress line on a terminal."""
    plan = CheckPlan.from_settings(settings, dry_run=dry_run)
    progress = _Progress(racks) if sys.stderr.isatty() else None
    with Store.open(state_file) as store:
        async with connect(settings, retry) as clients:
            checker = Checker(
                maas=clients.maas,
                testflinger=clients.testflinger,
                store=store,
                plan=plan,
                on_progress=progress.update if progress else None,
            )
            if progress is None:
                reports = await checker.run(racks)
            else:
                ticker = asyncio.create_task(progress.tick(lambda: checker.tally))
                try:
                    reports = await checker.run(racks)
                finally:
                    ticker.cancel()
                    progress.clear()
        if not dry_run:
            # Announce this run's health changes (and any left over); never fails the run.
            await alerts.deliver_outbox(
                store, settings, timeout_s=alerts.RUN_ONCE_DELIVERY_TIMEOUT_S
            )
        return reports


class _Progress:
    """A progress line on stderr, rewritten in place."""

    def __init__(self, racks: Sequence[str]) -> None:
        self._racks = racks
        self._started = time.monotonic()

    def update(self, tally: Tally) -> None:
        elapsed = timedelta(seconds=time.monotonic() - self._started)
        line = report.progress_line(self._racks, tally, elapsed)
        sys.stderr.write("\r\x1b[2K" + line)
        sys.stderr.flush()

    async def tick(self, tally: Callable[[], Tally]) -> None:
        while True:
            self.update(tally())
            await asyncio.sleep(1.0)

    def clear(self) -> None:
        sys.stderr.write("\r\x1b[2K")
        sys.stderr.flush()


def _interrupted(state_file: Path) -> int:
    try:
        with Store.open_readonly(state_file) as store:
            left = len(store.unfinished())
    except StoreError:
        left = 0
    jobs = f"{left} job{'s' if left != 1 else ''}"
    return _fail(
        f"stopped waiting; {jobs} stay recorded in {state_file}, "
        "and the next run-once or run picks them up",
        EXIT_INTERRUPTED,
    )


def _configure_logs(
    args: argparse.Namespace, settings: Settings | None = None, default: str | None = None
) -> None:
    # On a terminal the progress line says what happens; logs say only what goes wrong.
    default = default or ("warning" if sys.stderr.isatty() else "info")
    secrets = settings.secret_values() if settings else ()
    stream = cast(TextIO, _BelowProgress(sys.stderr)) if sys.stderr.isatty() else None
    logs.configure(args.log_level or default, args.log_format, secrets=secrets, stream=stream)


class _BelowProgress:
    """stderr for log lines on a terminal: each line first erases the progress line.

    The progress line is drawn again at its next update, under the log line.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._line_start = True

    def write(self, text: str) -> int:
        if self._line_start and text:
            self._stream.write("\r\x1b[2K")
        self._line_start = text.endswith("\n")
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    example: str,
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"example: {example}",
    )


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="configuration file (default: $RACKWATCH_CONFIG, else /etc/rackwatch/config.toml)",
    )


def _log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument(
        "--log-format", choices=("auto", "console", "json", "journald"), default="auto"
    )


def _fail(message: str, code: int) -> int:
    print(f"rackwatch: {message}", file=sys.stderr)
    return code


# The operator's commands: status, history and check-config.

STATUS_HELP = """\
Show where each agent and rack stands, read from the state file. Safe while the daemon runs:
the file is opened read-only.

A header per rack gives its last cycle (when it started, its status and how long it took, or
"running") and when the next one is due, then its open rack incident, if any ("⚠ rack
incident for 2h 0m: ..."). Then one row per agent:
  HEALTH         healthy, unhealthy, excluded (cannot be checked) or unknown, and for how
                 long; for an unhealthy agent, DETAIL says why, with the job that made it so
  LAST OUTCOME   the outcome of its latest finished check, and WHEN that check ended
  FAILURES       its checks that failed or timed out in a row, counting back from the latest
                 to its last pass; skips and errors neither end nor extend the run
  PASS RATE      passes among its latest 10 checks that passed, failed or timed out
  PROVISION      the median time from submission to end of its latest 10 passed jobs;
                 "slower ×2.3" when the latest took twice that or more (with 3 passes)
  LAST PASSED    when its latest passed check ended ("never" if none did)
  JOB IN FLIGHT  the id of its rackwatch job that has no outcome yet
Then the rack's drift, by each agent's latest check: machines with no agent, agents gone
stale (for how long their checks have found them so), and machines MAAS marks Broken or
Failed (deployment, testing, commissioning, ...), beside their agent's health. An agent is
listed under the rack of its latest check. The racks are those named, else every configured
rack and every rack recorded in the state file.

--unhealthy lists only what needs a person: unhealthy agents; agents out of service by their
own failure (stale, quarantined for a fail streak, or set offline by a failed recovery; not
those an admin took offline or into maintenance, nor those without a queue of their own);
machines MAAS marks broken or failed; and open rack incidents. Its first line says how many,
or "nothing needs a person". It exits 1 when it lists anything, so it can drive a cron mail
or a Nagios check.

--json prints {"racks": [{"rack", "last_cycle", "next_check", "incident", "drift",
"agents"}]}: last_cycle is null or {"started_at", "finished_at", "status", "error",
"duration_s"} (status "running" until it ends), next_check is null for a rack that is not
configured, incident is null or {"opened_at", "reason"}, drift is {"no_agent": [machine],
"stale": [{"agent", "since"}], "maas": [{"agent", "machine", "maas_status"}]}, and each agent
is {"agent", "machine", "health": {"state", "since", "reason", "job_id"}, "last_outcome",
"last_checked_at", "consecutive_failures", "pass_rate": {"passed", "judged"},
"median_provision_s", "last_provision_s", "last_passed_at", "job_in_flight", "maas_status",
"detail"}. With --unhealthy, only the racks and agents it lists. Times are UTC ISO 8601.

Exits 0, also when no check is recorded yet; with --unhealthy, 1 when anything needs a
person; 2 for a named rack that is neither configured nor recorded; 66 when the state file
cannot be read."""

HISTORY_HELP = """\
Show one agent's checks, newest first: when each started (UTC), its rack, outcome, job id,
provision_status, how long its job took, and the detail. Read-only, like status.

--json prints {"agent", "checks": [{"rack", "machine", "outcome", "job_id", "queue",
"provision_status", "detail", "created_at", "submitted_at", "finished_at", "duration_s",
"late_result"}]}; outcome is null while the job is in flight; late_result is null unless the
check's job ran on after the check ended (a timeout), and then says what became of it, e.g.
"seen ended 3h 12m after its timeout, provision_status 0". Times are UTC ISO 8601.

Exits 0; 1 when the state file holds no check of the agent; 66 when it cannot be read."""

CHECK_CONFIG_HELP = """\
Check the configuration file, then try it out: list each configured rack's machines from
MAAS, log in to Testflinger when client_id is set, and list Testflinger's agents. Prints one
line per check and never a secret. Submits nothing and writes no state.

Exits 0 when every check passed; 69 when MAAS or Testflinger failed one (the last line names
which); 78 when the configuration is invalid."""

# Enough to tell a flaky answer from a dead or misconfigured service, without a long wait.
CHECK_CONFIG_RETRY = RetryPolicy(attempts=2, timeout_s=10.0, wait_initial_s=0.5, wait_max_s=2.0)

# What trying one service printed, and what failed if anything did.
_Trial = tuple[list[str], str | None]


def _add_operator_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    status = _command(
        commands,
        "status",
        "show each agent's health and recent checks, rack incidents and drift",
        "rackwatch status tor3-a --config /etc/rackwatch/config.toml",
    )
    _explain(status, STATUS_HELP)
    status.add_argument("racks", nargs="*", metavar="RACK", help="default: every known rack")
    _config_option(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--unhealthy",
        action="store_true",
        help="list only what needs a person; exit 1 when anything does",
    )
    status.set_defaults(handler=cmd_status)

    history = _command(
        commands,
        "history",
        "show an agent's checks, newest first",
        "rackwatch history tor3-a-m07 --limit 50",
    )
    _explain(history, HISTORY_HELP)
    history.add_argument("agent", metavar="AGENT", help="the agent's name, as status lists it")
    history.add_argument(
        "--limit", type=_positive_int, default=20, metavar="N", help="show N checks (default: 20)"
    )
    _config_option(history)
    history.add_argument("--json", action="store_true", help="print the checks as JSON")
    history.set_defaults(handler=cmd_history)

    check_config = _command(
        commands,
        "check-config",
        "validate the configuration and try MAAS and Testflinger with it",
        "rackwatch check-config --config /etc/rackwatch/config.toml",
    )
    _explain(check_config, CHECK_CONFIG_HELP)
    _config_option(check_config)
    check_config.set_defaults(handler=cmd_check_config)


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_state_settings(args.config)
    named: list[str] = [check_rack_name(rack) for rack in args.racks]
    state_file = settings.state_file
    now = utc_now()
    if not state_file.exists():
        _refuse_unknown_racks(named, settings.racks, [])
        if not args.json:
            print(f"no checks recorded yet: {state_file} does not exist")
            return 0
        racks = [_rack_status(settings, rack, None, {}, now) for rack in named or settings.racks]
        print(report.status_json([] if args.unhealthy else racks))
        return 0
    try:
        with Store.open_readonly(state_file) as store, store.reading():
            recorded = store.racks()
            _refuse_unknown_racks(named, settings.racks, recorded)
            names = named or [*settings.racks, *(r for r in recorded if r not in settings.racks)]
            health = {agent: known for agent, (_, known) in store.health().items()}
            racks = [_rack_status(settings, rack, store, health, now) for rack in names]
    except StoreError as exc:
        return _fail(str(exc), EXIT_NOINPUT)
    if args.unhealthy:
        racks = report.needing_a_person(racks)
    if args.json:
        print(report.status_json(racks))
    elif args.unhealthy:
        print(report.unhealthy_text(racks, now))
    elif not racks:
        print(f"no racks: none configured, and none recorded in {state_file}")
    else:
        print(report.status_text(racks, now))
    # With --unhealthy, what is listed needs a person: exit 1, for cron mail or a Nagios check.
    return 1 if args.unhealthy and racks else 0


def _rack_status(
    settings: StateSettings,
    rack: str,
    store: Store | None,
    health: Mapping[str, AgentHealth],
    now: datetime,
) -> report.RackStatus:
    """The rack as the state file records it; never checked without a store."""
    last_cycle = store.last_cycle(rack) if store else None
    agents = store.agent_states(rack) if store else []
    due = None
    if rack in settings.racks:
        due = next_check(
            rack,
            last_cycle.started_at if last_cycle else None,
            now=now,
            interval=settings.schedule.interval,
            jitter=settings.schedule.jitter,
        )
    return report.RackStatus(
        rack,
        last_cycle,
        due,
        agents,
        incident=store.open_incident(rack) if store else None,
        health=health,
        trends=store.trends([state.agent for state in agents]) if store else {},
    )


def _refuse_unknown_racks(
    named: Sequence[str], configured: Sequence[str], recorded: Sequence[str]
) -> None:
    unknown = [rack for rack in named if rack not in configured and rack not in recorded]
    if unknown:
        listed = ", ".join(repr(rack) for rack in unknown)
        raise UsageError(f"unknown rack {listed}: not in the configuration and never checked")


def cmd_history(args: argparse.Namespace) -> int:
    settings = load_state_settings(args.config)
    state_file = settings.state_file
    if not state_file.exists():
        return _fail(f"no checks recorded yet: {state_file} does not exist", 1)
    try:
        with Store.open_readonly(state_file) as store:
            checks = store.history(args.agent, limit=args.limit)
    except StoreError as exc:
        return _fail(str(exc), EXIT_NOINPUT)
    if not checks:
        return _fail(f"no checks of agent {args.agent!r} in {state_file}", 1)
    if args.json:
        print(report.history_json(args.agent, checks))
    else:
        print(report.history_text(args.agent, checks))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    logs.configure("error", secrets=settings.secret_values())  # the lines below say what went wrong
    racks = report.plural(len(settings.racks), "rack")
    print(f"config: {settings.config_path}: valid ({racks}, state file {settings.state_file})")
    try:
        failed = asyncio.run(_try_services(settings))
    except KeyboardInterrupt:
        return _fail("check-config interrupted", EXIT_INTERRUPTED)
    if failed:
        return _fail(f"check-config: failed: {', '.join(failed)}", EXIT_UNAVAILABLE)
    return 0


async def _try_services(settings: Settings) -> list[str]:
    """Try every configured rack and Testflinger at once; print their lines; answer what failed."""
    async with connect(settings, CHECK_CONFIG_RETRY) as clients:

        async def maas(rack: str) -> _Trial:
            try:
                machines = await clients.maas.machines(rack)
            except UpstreamError as exc:
                return [f"maas: {rack}: {exc}"], f"maas {rack}"
            return [f"maas: {rack}: {report.plural(len(machines), 'machine')}"], None

        async def testflinger() -> _Trial:
            client_id = settings.testflinger.client_id
            try:
                await clients.testflinger.log_in()
            except UpstreamError as exc:
                return [f"testflinger: login as {client_id}: {exc}"], "testflinger login"
            if client_id:
                said = [f"testflinger: logged in as {client_id}"]
            else:
                said = ["testflinger: anonymous (no client_id configured)"]
            try:
                agents = await clients.testflinger.agents()
            except UpstreamError as exc:
                return [*said, f"testflinger: agents: {exc}"], "testflinger agents"
            return [*said, f"testflinger: {report.plural(len(agents), 'agent')}"], None

        trials = await asyncio.gather(*(maas(rack) for rack in settings.racks), testflinger())
    if not settings.racks:
        print("maas: not tried: the configuration lists no racks (racks = [...])")
    for lines, _ in trials:
        print("\n".join(lines))
    return [failure for _, failure in trials if failure]


def _explain(parser: argparse.ArgumentParser, text: str) -> None:
    """Give a command a description laid out by hand, with the example epilog kept as it is."""
    parser.description = text
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


# The alerts commands: alerts test.

ALERTS_TEST_HELP = """\
Send one test message to the webhook in alerts.webhook_url (a Mattermost or Slack incoming
webhook), naming this host. Prints "sent", or why the webhook failed; never the URL, which
carries the webhook's token.

Exits 0 when the webhook accepted the message; 69 when it failed; 78 when alerts.webhook_url
is not set or the configuration is invalid."""


def _add_alerts_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    group = _command(
        commands,
        "alerts",
        "work with the webhook that health changes are announced to",
        "rackwatch alerts test --config /etc/rackwatch/config.toml",
    )
    actions = group.add_subparsers(title="actions", required=True, metavar="ACTION")
    test = _command(
        actions,
        "test",
        "send a test message to the configured webhook",
        "rackwatch alerts test --config /etc/rackwatch/config.toml",
    )
    _explain(test, ALERTS_TEST_HELP)
    _config_option(test)
    test.set_defaults(handler=cmd_alerts_test)


def cmd_alerts_test(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    logs.configure("error", secrets=settings.secret_values())  # the line below says what failed
    webhook_url = settings.alerts.webhook_url.get_secret_value()
    if not webhook_url:
        return _fail("alerts.webhook_url is not set: there is no webhook to test", EXIT_CONFIG)

    async def send() -> None:
        async with make_session() as session:
            await alerts.send_test(webhook_url, session)

    try:
        asyncio.run(send())
    except UpstreamError as exc:
        return _fail(f"alerts test: {exc}", EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        return _fail("alerts test interrupted", EXIT_INTERRUPTED)
    print("sent")
    return 0
