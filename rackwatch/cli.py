"""The `rackwatch` command: parses arguments, builds the parts, prints, and maps errors to exit codes.

This is the only module that prints. Exit codes follow sysexits where one fits:
0 all good, 1 a check failed, 2 usage, 69 a rack could not be checked (EX_UNAVAILABLE),
73 the state file cannot be created (EX_CANTCREAT), 78 bad configuration (EX_CONFIG),
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

from rackwatch import __version__, logs, report
from rackwatch.check import Checker, CheckPlan, RackReport, Tally
from rackwatch.clients import RetryPolicy, check_rack_name, connect
from rackwatch.config import Settings, load_settings
from rackwatch.errors import ConfigError, StoreError, UsageError
from rackwatch.store import Store

EXIT_USAGE = 2
EXIT_CANTCREAT = 73
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
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rackwatch",
        description="Finds the bad machines of a MAAS + Testflinger lab before a real test run does.",
        epilog="Try it with no setup at all: rackwatch demo",
    )
    parser.add_argument("--version", action="version", version=f"rackwatch {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run_once = _command(
        commands,
        "run-once",
        "check racks once and wait for every job",
        "rackwatch run-once tor3-a --config ./rackwatch.toml",
    )
    run_once.add_argument("racks", nargs="*", metavar="RACK", help="default: every configured rack")
    _config_option(run_once)
    run_once.add_argument("--json", action="store_true", help="print the results as JSON")
    run_once.add_argument(
        "--dry-run", action="store_true", help="submit nothing; report 'ready' where a job would go"
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
    return parser


def cmd_run_once(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    racks: list[str] = list(args.racks or settings.racks)
    if not racks:
        raise UsageError("no rack named, and the configuration lists none (racks = [...])")
    for rack in racks:
        check_rack_name(rack)
    _configure_logs(args)
    with ExitStack() as stack:
        if args.dry_run:
            # A dry run records nothing: it works on a throwaway state file.
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            state_file = scratch / "dry-run.db"
        else:
            state_file = settings.state_file
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
                return await checker.run(racks)
            ticker = asyncio.create_task(progress.tick(lambda: checker.tally))
            try:
                return await checker.run(racks)
            finally:
                ticker.cancel()
                progress.clear()


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


def _configure_logs(args: argparse.Namespace, default: str | None = None) -> None:
    # On a terminal the progress line says what happens; logs say only what goes wrong.
    default = default or ("warning" if sys.stderr.isatty() else "info")
    logs.configure(args.log_level or default, args.log_format)


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
    parser.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")


def _fail(message: str, code: int) -> int:
    print(f"rackwatch: {message}", file=sys.stderr)
    return code
