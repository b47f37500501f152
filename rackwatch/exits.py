"""The exit codes of the `rackwatch` command, in one table, and the code a run-once ends with.

They follow sysexits where one fits. May import: `check` (for its report type).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rackwatch.check import RackReport


class ExitCode(IntEnum):
    """What `rackwatch` exits with."""

    OK = 0  # all good; for `run`: stopped by a signal
    # run-once: a check failed; status --unhealthy: something needs a person; history: no
    # check of the agent recorded
    FAILURE = 1
    USAGE = 2
    NOINPUT = 66  # EX_NOINPUT: the state file cannot be read
    UNAVAILABLE = 69  # EX_UNAVAILABLE: a rack could not be checked, or a service tried failed
    CANTCREAT = 73  # EX_CANTCREAT: the state file cannot be created
    IOERR = 74  # EX_IOERR: the daemon's state file was lost or stays unusable
    TEMPFAIL = 75  # EX_TEMPFAIL: another rackwatch process is checking the rack
    CONFIG = 78  # EX_CONFIG: bad configuration
    INTERRUPTED = 130  # 128 + SIGINT
    BROKEN_PIPE = 141  # 128 + SIGPIPE: what read the output went away (`status | head`)


def of_cycle(reports: Sequence[RackReport]) -> ExitCode:
    """UNAVAILABLE when a rack could not be checked, FAILURE when a check failed, else OK."""
    if any(r.cycle.status == "error" for r in reports):
        return ExitCode.UNAVAILABLE
    if any(c.outcome is not None and c.outcome.is_failure for r in reports for c in r.checks):
        return ExitCode.FAILURE
    return ExitCode.OK
