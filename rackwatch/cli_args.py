"""The command line of `rackwatch`: each command, its arguments, and where its help comes from.

`build_parser` gives the parser; a parsed command names itself in `command` ("run-once",
"alerts test", ...), for `cli` to run it. May import: `cli_help` and the standard library.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeAlias

from rackwatch import __version__, cli_help
from rackwatch.config import split_address

Commands: TypeAlias = "argparse._SubParsersAction[_CommandParser]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rackwatch",
        description="Finds the bad machines of a MAAS + Testflinger lab before a real test run does.",
        epilog=(
            "Try it with no setup at all: rackwatch demo. Every command exits 141 when what"
            " reads its output goes away first (rackwatch status | head)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"rackwatch {__version__}")
    commands = parser.add_subparsers(
        title="commands", required=True, metavar="COMMAND", parser_class=_CommandParser
    )
    _add_check_commands(commands)
    _add_operator_commands(commands)
    _add_silence_commands(commands)
    _add_alerts_commands(commands)
    return parser


def _add_check_commands(commands: Commands) -> None:
    run = _command(commands, "run")
    _config_option(run)
    _log_options(run)

    run_once = _command(commands, "run-once")
    run_once.add_argument("racks", nargs="*", metavar="RACK", help="default: every configured rack")
    _config_option(run_once)
    run_once.add_argument("--json", action="store_true", help="print the results as JSON")
    run_once.add_argument(
        "--dry-run", action="store_true", help="submit nothing; report 'ready' where a job would go"
    )
    run_once.add_argument(
        "--agent",
        action="append",
        metavar="NAME",
        dest="agents",
        help="check only this agent (again for more); its rack is found among the racks",
    )
    run_once.add_argument(
        "--wait",
        action="store_true",
        help="wait for racks another rackwatch is checking, instead of exiting 75",
    )
    _log_options(run_once)

    demo = _command(commands, "demo")
    demo.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="keep its configuration and state file in DIR, a new or empty directory"
        " (default: a new temporary directory, kept)",
    )
    demo.add_argument("--json", action="store_true", help="print the final report as JSON")
    _log_options(demo)


def _add_operator_commands(commands: Commands) -> None:
    status = _command(commands, "status")
    status.add_argument("racks", nargs="*", metavar="RACK", help="default: every known rack")
    _config_option(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--unhealthy",
        action="store_true",
        help="list only what needs a person; exit 1 when anything does",
    )
    status.add_argument(
        "--wide",
        action="store_true",
        help="on a terminal too, show every column and every cell whole, however wide",
    )
    status.add_argument(
        "--watch",
        nargs="?",
        const=5.0,
        type=_seconds,
        metavar="SECONDS",
        help="redraw it in place every SECONDS (default: 5) until Ctrl-C; name racks before it",
    )

    history = _command(commands, "history")
    history.add_argument("agent", metavar="AGENT", help="the agent's name, as status lists it")
    history.add_argument(
        "--limit", type=_positive_int, default=20, metavar="N", help="show N checks (default: 20)"
    )
    _config_option(history)
    history.add_argument("--json", action="store_true", help="print the checks as JSON")
    history.add_argument(
        "--log", action="store_true", help="show each check's provision log whole, not its end"
    )

    _config_option(_command(commands, "check-config"))

    web = _command(commands, "web")
    _config_option(web)
    web.add_argument(
        "--listen",
        type=_address,
        metavar="HOST:PORT",
        help="where to serve the pages (default: web.listen, else 127.0.0.1:9464)",
    )
    _log_options(web)


def _add_silence_commands(commands: Commands) -> None:
    silence = _command(commands, "silence")
    silence.add_argument("agents", nargs="*", metavar="AGENT", help="an agent to silence")
    silence.add_argument(
        "--rack",
        action="append",
        default=[],
        dest="racks",
        metavar="RACK",
        help="silence every agent of the rack, and its incidents (again for more)",
    )
    silence.add_argument("--reason", metavar="TEXT", help="why: shown wherever the silence is")
    lasting = silence.add_mutually_exclusive_group()
    lasting.add_argument(
        "--for",
        dest="length",
        metavar="DURATION",
        help="how long, such as 2h, 3d or 1h30m (default: 7d; at most 90d)",
    )
    lasting.add_argument(
        "--until",
        metavar="TIME",
        help="until when, in ISO 8601, such as 2026-12-08T20:31 (UTC unless it has an offset)",
    )
    silence.add_argument(
        "--list", action="store_true", help="list the silences in force instead; nothing changes"
    )
    silence.add_argument("--json", action="store_true", help="with --list: print them as JSON")
    _config_option(silence)

    unsilence = _command(commands, "unsilence")
    unsilence.add_argument("agents", nargs="*", metavar="AGENT", help="an agent to unsilence")
    unsilence.add_argument(
        "--rack",
        action="append",
        default=[],
        dest="racks",
        metavar="RACK",
        help="end the rack's own silence (again for more)",
    )
    _config_option(unsilence)


def _add_alerts_commands(commands: Commands) -> None:
    group = _command(commands, "alerts")
    actions = group.add_subparsers(
        title="actions", required=True, metavar="ACTION", parser_class=_CommandParser
    )
    _config_option(_command(actions, "alerts test"))


class _CommandParser(argparse.ArgumentParser):
    """The parser of a command: an argument it does not know is a usage error of the command,
    with the command's own usage line, rather than the top-level parser's."""

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _command(commands: Commands, command: str) -> argparse.ArgumentParser:
    """The parser of `command` ("alerts test": `test` among `commands`), as `cli_help` says
    it; a parsed command names itself in `command`."""
    said = cli_help.COMMANDS[command]
    parser = commands.add_parser(
        command.split()[-1],
        help=said.summary,
        description=said.summary[0].upper() + said.summary[1:] + ".",
        epilog=f"example: {said.example}",
    )
    if said.text is not None:
        parser.description = said.text
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.set_defaults(command=command)
    return parser


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _address(text: str) -> tuple[str, int]:
    """HOST:PORT, the host an address or a name ([::1] in brackets); port 0 picks a free one."""
    try:
        return split_address(text, lowest_port=0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be HOST:PORT, e.g. 127.0.0.1:9464: {text!r}"
        ) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a number of seconds: {text!r} (name racks before --watch)"
        ) from None
    if not 0.1 <= value <= 86400:  # also NaN
        raise argparse.ArgumentTypeError(f"must be from 0.1 to 86400 seconds: {text}")
    return value
