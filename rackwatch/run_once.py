"""One cycle of the named racks, as `rackwatch run-once` and `rackwatch demo` run it.

The racks are held for the cycle (a dry run holds none, on a throwaway state file), the cycle
is `check.run_cycle` with the live progress line on a terminal, and the alerts it queued are
delivered after it; the configuration's warnings are logged once before it. The command prints
the reports. May import: `alerts`, `check`, `clients`, `config`, `config_warnings`, `locks`,
`progress` and `store`.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from pathlib import Path

import structlog

from rackwatch import alerts
from rackwatch.check import RackReport, racks_holding, run_cycle
from rackwatch.clients import RetryPolicy, connect
from rackwatch.config import Settings
from rackwatch.config_warnings import config_warnings
from rackwatch.errors import StoreError, UsageError
from rackwatch.locks import RackLocks
from rackwatch.progress import Progress
from rackwatch.store import Store

log = structlog.get_logger("rackwatch.run_once")


@contextmanager
def held_state_file(
    settings: Settings,
    racks: Sequence[str],
    *,
    dry_run: bool,
    wait: bool,
    on_wait: Callable[[str, str], None],
) -> Iterator[Path]:
    """The state file to check the racks on, with the racks held until the block ends.

    A dry run records nothing: it works on a throwaway state file and holds no rack.

    Raises:
        RackHeldError: another rackwatch holds a rack, and `wait` is not set.
    """
    if dry_run:
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch) / "dry-run.db"
        return
    with RackLocks(settings.state_file, "run-once").hold(racks, wait=wait, on_wait=on_wait):
        yield settings.state_file


async def check_racks(
    settings: Settings,
    racks: Sequence[str],
    state_file: Path,
    *,
    dry_run: bool = False,
    retry: RetryPolicy | None = None,
    agents: Sequence[str] | None = None,
) -> list[RackReport]:
    """One cycle with the live progress line on a terminal, then the alerts it queued.

    With `agents`, a partial cycle of only those agents of the racks.
    """
    for line in config_warnings(settings, settings.config_mode):
        log.warning("config.warning", detail=line)
    progress = Progress(racks) if sys.stderr.isatty() else None
    shown: AbstractAsyncContextManager[None] = progress.ticking() if progress else nullcontext()
    with Store.open(state_file) as store:
        async with connect(settings, retry) as clients, shown:
            reports = await run_cycle(
                settings,
                racks,
                store=store,
                maas=clients.maas,
                testflinger=clients.testflinger,
                dry_run=dry_run,
                on_progress=progress.update if progress else None,
                agents=agents,
            )
        if not dry_run:
            # Announce this run's health changes (and any left over); never fails the run.
            await alerts.deliver_outbox(
                store,
                settings.alerts,
                testflinger_url=settings.testflinger.web_base,
                timeout_s=alerts.RUN_ONCE_DELIVERY_TIMEOUT_S,
            )
        return reports


def jobs_left(state_file: Path) -> int:
    """How many jobs the state file records as unfinished; 0 when it cannot be read."""
    try:
        with Store.open_readonly(state_file) as store:
            return len(store.unfinished())
    except StoreError:
        return 0


async def racks_of_agents(
    settings: Settings, agents: Sequence[str], racks: Sequence[str]
) -> list[str]:
    """The racks among `racks` that hold the named agents' machines, in the order given.

    Raises:
        UsageError: a name that none of the racks holds.
    """
    async with connect(settings, RetryPolicy.PROBE) as clients:
        holding = await racks_holding(agents, racks, clients.maas)
    missing = [name for name, found in holding.items() if not found]
    if missing:
        listed = ", ".join(repr(name) for name in missing)
        among = ", ".join(racks)
        raise UsageError(f"no machine named {listed} in the racks checked ({among})")
    return [rack for rack in racks if any(rack in found for found in holding.values())]
