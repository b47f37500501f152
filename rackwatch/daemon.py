"""`rackwatch run`: one long-running process that checks every rack on its schedule.

APScheduler 3 fires one job per rack every `schedule.interval`; the job only starts the rack's
cycle as a task of ours, so that a rack never runs twice at once and a stop can leave every
in-flight job recorded for the next start. Each cycle holds the rack's lock (`rackwatch.locks`)
while it runs, so that no other rackwatch process checks the rack meanwhile; a rack another
process holds is waited for, and the waiting counts as the rack's running cycle. Signals only
set flags (uvicorn's pattern): SIGTERM/SIGINT stop, a second one exits at once, SIGHUP re-reads
the configuration.

The daemon has one HTTP session for its whole life. Its MAAS and Testflinger clients are built
once over it, and built again only when a reload changes their settings; cycles in flight go on
with the clients they started with. Alert deliveries share the session too.

The daemon never carries on with a state file it cannot trust: when the file is deleted or
replaced under it, or when `STORE_FAILURES_TO_EXIT` cycles in a row fail on it, it stops and
`serve` answers `ExitCode.IOERR`, so that systemd restarts it on a file opened afresh.

The daemon tells systemd how it is doing through sd_notify: READY=1, WATCHDOG=1, STOPPING=1
and a STATUS= line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from rackwatch import alerts, retention
from rackwatch.check import RackReport, run_cycle
from rackwatch.clients import Clients, RetryPolicy, make_clients, make_session
from rackwatch.config import Settings, load_settings
from rackwatch.config_warnings import config_warnings
from rackwatch.errors import ConfigError, StoreError
from rackwatch.exits import ExitCode
from rackwatch.locks import Lease, RackLocks
from rackwatch.metrics import MetricsEndpoint
from rackwatch.model import utc_now
from rackwatch.schedule import next_check
from rackwatch.store import Store
from rackwatch.tracking import Watch
from rackwatch.web import start_listener

log = structlog.get_logger("rackwatch.daemon")

STORE_FAILURES_TO_EXIT = 3  # cycles in a row ending with a StoreError
STATE_FILE_CHECK_S = 2.0  # how often the state file is looked at, besides before each cycle
HELD_RACK_POLL_S = 1.0  # how often a rack another process holds is tried again
PRUNE_EVERY = timedelta(hours=1)  # how often the state file is pruned (rackwatch.retention)
PRUNE_FIRST = timedelta(minutes=1)  # the first pruning, after the start


def sd_notify(*states: str) -> bool:
    """Tell systemd about our state; a no-op when not started by systemd with Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the event loop on a peer that reads slowly: drop the message instead.
            sock.setblocking(False)
            sock.sendto("\n".join(states).encode(), address)
    except OSError as exc:
        log.warning("daemon.notify_failed", error=str(exc))
        return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog period systemd asked for, in seconds; None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000


class Daemon:
    """Owns the scheduler, the state file, the HTTP session and the cycles in flight."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self._config_path = config_path
        self._retry = retry
        self._clock = clock
        self._limiter = asyncio.Semaphore(settings.check.concurrency)
        self._locks = RackLocks(settings.state_file, "run")
        self._cycles: dict[str, asyncio.Task[None]] = {}
        self._skipped: dict[str, str] = {}  # the reason each rack's firings are skipped for
        self._waiting: set[str] = set()  # racks whose cycle waits for another process to let go
        self._last: dict[str, RackReport] = {}
        self._stop = asyncio.Event()
        self._signals = 0
        self._store: Store | None = None
        self._session: aiohttp.ClientSession | None = None
        self._clients: Clients | None = None  # built over the session, from `settings`
        self._watch: Watch | None = None  # what the cycles over `_clients` read together
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the opened state file
        self._store_failures = 0  # cycles in a row that ended with a StoreError
        self._code = ExitCode.OK
        self.failure: str | None = None  # why the daemon exits with ExitCode.IOERR, in one line
        self._metrics: MetricsEndpoint | None = None  # the listener (pages, /metrics), if any
        self._deliveries: set[asyncio.Task[None]] = set()  # alert deliveries in flight
        self._delivery_lock = asyncio.Lock()
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    async def serve(self) -> int:
        """Run until stopped; the exit code: 0, or ExitCode.IOERR with `failure` saying why."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        state_file = self.settings.state_file
        with Store.open(state_file) as store:
            # Closed once `_shutdown` has cancelled the cycles and deliveries that use it.
            async with make_session() as session:
                self._store = store
                self._session = session
                self._connect()
                self._file_id = _file_id(state_file)
                if (address := self.settings.listen) is not None:
                    # One listener: the pages and /api, /metrics and /healthz.
                    self._metrics = await start_listener(
                        store,
                        address,
                        is_running=lambda: self._scheduler.running and not self._stop.is_set(),
                        configured=lambda: self.settings,
                        setting="web.listen" if self.settings.web.listen else "metrics.listen",
                    )
                self._schedule_all()
                self._schedule_pruning()
                self._scheduler.start()
                log.info("daemon.started", racks=self.settings.racks, pid=os.getpid())
                for line in config_warnings(self.settings, self.settings.config_mode):
                    log.warning("config.warning", detail=line)
                sd_notify("READY=1", f"STATUS={self._status()}")
                watchdog = asyncio.create_task(self._watchdog())
                watch = asyncio.create_task(self._watch_state_file())
                await self._stop.wait()
                await self._shutdown(watchdog, watch)
        return self._code

    def stop(self) -> None:
        self._stop.set()

    def _connect(self) -> None:
        """Build the clients from `settings`, over the one session and the shared limiter."""
        if self._session is None:  # a reload before serve() opened it: serve() builds them
            return
        retry = self._retry or RetryPolicy.DEFAULT
        self._clients = make_clients(self.settings, self._session, retry, limiter=self._limiter)
        store = self._store
        assert store is not None
        self._watch = Watch(
            self._clients.testflinger,
            on_error=lambda exc: store.count("upstream_errors", exc.service),
        )

    # -- scheduling -------------------------------------------------------------------------

    def _schedule_all(self) -> None:
        for rack in self.settings.racks:
            self._schedule(rack)

    def _schedule(self, rack: str) -> None:
        """(Re)schedule the rack from its last cycle: the rest of its interval, or now."""
        assert self._store is not None
        last = self._store.last_cycle(rack)
        schedule = self.settings.schedule
        now = self._clock()
        if last is not None and last.finished_at is None and rack not in self._cycles:
            due = now  # cut short by a crash or a stop: run again, resuming its jobs first
        else:
            due = next_check(
                rack,
                last.started_at if last else None,
                now=now,
                interval=schedule.interval,
                jitter=schedule.jitter,
            )
        self._scheduler.add_job(
            self._fire,
            IntervalTrigger(seconds=schedule.interval.total_seconds(), timezone=UTC),
            args=[rack],
            id=f"check:{rack}",
            name=f"check {rack}",
            next_run_time=due,
            replace_existing=True,
        )
        log.info("rack.scheduled", rack=rack, next_check=due.isoformat())

    async def _fire(self, rack: str) -> None:
        """The scheduler's job: start the rack's cycle unless it is still running."""
        if self._stop.is_set():
            return
        if rack in self._waiting:
            self._skip(rack, "still waiting for another rackwatch", logging.INFO)
            return
        if rack in self._cycles:
            self._skip(rack, "the previous cycle is still running", logging.WARNING)
            return
        self._skipped.pop(rack, None)
        assert self._clients is not None and self._watch is not None
        cycle = self._cycle(rack, self.settings, self._clients, self._watch)
        task = asyncio.create_task(cycle, name=f"cycle {rack}")
        self._cycles[rack] = task
        task.add_done_callback(lambda _: self._cycles.pop(rack, None))

    def _schedule_pruning(self) -> None:
        """Prune the state file every PRUNE_EVERY, the first time PRUNE_FIRST after the start."""
        self._scheduler.add_job(
            self._prune,
            IntervalTrigger(seconds=PRUNE_EVERY.total_seconds(), timezone=UTC),
            id="prune",
            name="prune the state file",
            next_run_time=self._clock() + PRUNE_FIRST,
            replace_existing=True,
        )

    async def _prune(self) -> None:
        """The scheduler's job: prune in short steps, which the checks run between."""
        assert self._store is not None
        try:
            await retention.prune(
                self._store,
                now=self._clock(),
                keep_checks=self.settings.history.keep_checks,
                should_stop=self._stop.is_set,
            )
        except StoreError as exc:  # the next run tries again; cycles count the file's failures
            log.error("state.prune_failed", error=str(exc))

    def _skip(self, rack: str, reason: str, level: int) -> None:
        """Log a skipped firing once for as long as the reason stays the same."""
        if self._skipped.get(rack) == reason:
            return
        self._skipped[rack] = reason
        log.log(level, "cycle.skipped", rack=rack, reason=reason)

    async def _cycle(self, rack: str, settings: Settings, clients: Clients, watch: Watch) -> None:
        """One cycle of the rack, holding its lock from before the first request to the end.

        The cycles over the same clients share their `watch`: its listings, searches and job
        tracking.
        """
        assert self._store is not None
        try:
            with await self._hold(rack):
                if not self._state_file_ok():
                    return
                [report] = await run_cycle(
                    settings,
                    [rack],
                    store=self._store,
                    maas=clients.maas,
                    testflinger=clients.testflinger,
                    clock=self._clock,
                    watch=watch,
                )
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            self._store_failed(rack, exc)
            return
        except Exception:
            # A cycle must never take the daemon down; the next one will try again.
            log.exception("cycle.crashed", rack=rack)
            return
        self._store_failures = 0
        self._last[rack] = report
        sd_notify(f"STATUS={self._status()}")
        if settings.alerts.webhook_url.get_secret_value():
            self._start_alert_delivery(settings)

    async def _hold(self, rack: str) -> Lease:
        """The rack's lock; while another process holds it, the wait is the rack's cycle."""
        lease = self._locks.try_hold(rack)
        if lease is not None:
            return lease
        self._waiting.add(rack)
        sd_notify(f"STATUS={self._status()}")

        def held(holder: str) -> None:
            log.info("rack.held", rack=rack, holder=holder)

        try:
            lease = await self._locks.hold_waiting(rack, poll_s=HELD_RACK_POLL_S, on_held=held)
        finally:
            self._waiting.discard(rack)
        log.info("rack.freed", rack=rack)
        return lease

    # -- the state file ---------------------------------------------------------------------

    async def _watch_state_file(self) -> None:
        """Look at the state file every few seconds, also in the middle of a cycle."""
        while True:
            await asyncio.sleep(STATE_FILE_CHECK_S)
            if not self._state_file_ok():
                return

    def _state_file_ok(self) -> bool:
        """Whether the daemon can go on with its state file.

        The first time the file is found gone or replaced, this logs it and stops the daemon.
        Once the daemon exits for its state file (lost or unusable), always False.
        """
        if self.failure is not None:
            return False
        path = self.settings.state_file
        try:
            file_id = _file_id(path)
        except FileNotFoundError:
            what = "deleted"
        except OSError as exc:
            what = f"made unreachable ({exc.strerror})"
        else:
            if file_id == self._file_id:
                return True
            what = "replaced by another file"
        log.error("daemon.state_file_lost", state_file=str(path), what=what)
        self._exit(
            f"state file {path} was {what} while the daemon ran;"
            " exiting so that a restart opens it afresh"
        )
        return False

    def _store_failed(self, rack: str, exc: StoreError) -> None:
        """A cycle ended with a StoreError: log it, and exit when it keeps happening."""
        self._store_failures += 1
        log.error(
            "cycle.store_failed", rack=rack, error=str(exc), failures_in_a_row=self._store_failures
        )
        if not self._state_file_ok() or self._store_failures < STORE_FAILURES_TO_EXIT:
            return
        path = self.settings.state_file
        error = str(exc).removeprefix(f"state file {path}: ")
        log.error(
            "daemon.state_file_unusable",
            state_file=str(path),
            error=error,
            failures_in_a_row=self._store_failures,
        )
        self._exit(
            f"state file {path} is unusable, exiting after {self._store_failures} failed cycles"
            f" in a row: {error}"
        )

    def _exit(self, failure: str) -> None:
        """Stop the daemon, which then exits with ExitCode.IOERR."""
        self._code = ExitCode.IOERR
        self.failure = failure
        self._stop.set()

    # -- alerts -----------------------------------------------------------------------------

    def _start_alert_delivery(self, settings: Settings) -> None:
        """Send the alert outbox beside the checks: a failing webhook only delays its alerts."""
        task = asyncio.create_task(self._deliver_alerts(settings), name="alerts")
        self._deliveries.add(task)  # a reference, so that the task is not garbage-collected
        task.add_done_callback(self._deliveries.discard)

    async def _deliver_alerts(self, settings: Settings) -> None:
        assert self._store is not None
        # One run at a time, so that no alert is sent twice; each run reads the outbox anew.
        async with self._delivery_lock:
            await alerts.deliver_outbox(
                self._store,
                settings.alerts,
                testflinger_url=settings.testflinger.web_base,
                timeout_s=alerts.DAEMON_DELIVERY_TIMEOUT_S,
                session=self._session,
                retry=self._retry or RetryPolicy.DELIVERY,
                now=self._clock,
            )

    # -- signals ----------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("daemon.forced_exit", signal=signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("daemon.stopping", signal=signal.Signals(signum).name)
        self._stop.set()

    def _on_reload_signal(self) -> None:
        try:
            settings = load_settings(self._config_path)
        except ConfigError as exc:
            log.error("daemon.reload_failed", error=str(exc), kept="the running configuration")
            return
        old, self.settings = self.settings, settings
        for key in ("state_file", "metrics", "web"):
            if getattr(settings, key) != getattr(old, key):
                log.warning("daemon.restart_needed", reason=f"{key} changes at the next start")
        limited = settings.check.concurrency != old.check.concurrency
        if limited:
            self._limiter = asyncio.Semaphore(settings.check.concurrency)
        if limited or (settings.maas, settings.testflinger) != (old.maas, old.testflinger):
            self._connect()
        for rack in set(old.racks) - set(settings.racks):
            self._scheduler.remove_job(f"check:{rack}")
        if settings.schedule != old.schedule:
            self._schedule_all()
        else:
            for rack in set(settings.racks) - set(old.racks):
                self._schedule(rack)
        log.info(
            "daemon.reloaded",
            racks=settings.racks,
            added=sorted(set(settings.racks) - set(old.racks)),
            removed=sorted(set(old.racks) - set(settings.racks)),
        )
        sd_notify(f"STATUS={self._status()}")

    # -- systemd ----------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Ping systemd from the event loop, so that a blocked loop gets us restarted."""
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _status(self) -> str:
        racks = self.settings.racks
        parts = [f"{len(racks)} rack{'s' if len(racks) != 1 else ''}"]
        jobs = [
            job
            for job in self._scheduler.get_jobs()
            if job.next_run_time is not None and job.id.startswith("check:")
        ]
        if jobs:
            soonest = min(jobs, key=lambda job: job.next_run_time)
            rack = soonest.args[0]
            parts.append(f"next {rack} at {soonest.next_run_time:%H:%M:%S} UTC")
        if checking := sorted(set(self._cycles) - self._waiting):
            parts.append("checking " + ", ".join(checking))
        if self._waiting:
            parts.append("waiting for " + ", ".join(sorted(self._waiting)))
        if self._last:
            report = max(self._last.values(), key=lambda r: r.cycle.started_at)
            failures = sum(1 for c in report.checks if c.outcome and c.outcome.is_failure)
            parts.append(
                f"last {report.rack} {report.cycle.status} "
                f"({len(report.checks)} agents, {failures} failed)"
            )
        return "; ".join(parts)

    async def _shutdown(self, *helpers: asyncio.Task[None]) -> None:
        """Stop starting cycles and stop waiting on jobs: they stay recorded for the next start."""
        sd_notify("STOPPING=1", f"STATUS=stopping{': ' + self.failure if self.failure else ''}")
        self._scheduler.shutdown(wait=False)
        for helper in helpers:
            helper.cancel()
        in_flight = list(self._cycles.values())
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, *helpers, return_exceptions=True)
        # After the cycles, which start them. Undelivered alerts stay in the outbox.
        deliveries = list(self._deliveries)
        for task in deliveries:
            task.cancel()
        await asyncio.gather(*deliveries, return_exceptions=True)
        if self._metrics is not None:  # it reads the state file, which closes next
            await self._metrics.stop()
        assert self._store is not None
        left: int | None = None  # unknown when the file is lost or unreadable
        if self._code != ExitCode.IOERR:
            try:
                left = len(self._store.unfinished())
            except StoreError as exc:
                log.error("daemon.state_file_unreadable", error=str(exc))
        log.info(
            "daemon.stopped",
            cycles_interrupted=len(in_flight),
            jobs_left_recorded=left,
            exit_code=self._code,
        )


def _file_id(path: Path) -> tuple[int, int]:
    """What tells one file from another at the same path: (st_dev, st_ino)."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino
