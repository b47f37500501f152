"""`rackwatch run`: one long-running process that checks every rack on its schedule.

APScheduler 3 fires one job per rack every `schedule.interval`; the job only starts the rack's
cycle as a task of ours, so that a rack never runs twice at once and a stop can leave every
in-flight job recorded for the next start. Signals only set flags (uvicorn's pattern):
SIGTERM/SIGINT stop, a second one exits at once, SIGHUP re-reads the configuration.

The daemon tells systemd how it is doing through sd_notify: READY=1, WATCHDOG=1, STOPPING=1
and a STATUS= line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from rackwatch import alerts
from rackwatch.check import Checker, CheckPlan, RackReport
from rackwatch.clients import RetryPolicy, connect
from rackwatch.config import Settings, load_settings
from rackwatch.errors import ConfigError
from rackwatch.metrics import MetricsEndpoint, start_metrics
from rackwatch.schedule import next_check
from rackwatch.store import Store

log = structlog.get_logger("rackwatch.daemon")


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
    """Owns the scheduler, the state file and the cycles in flight."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self._config_path = config_path
        self._retry = retry
        self._clock = clock
        self._limiter = asyncio.Semaphore(settings.check.concurrency)
        self._cycles: dict[str, asyncio.Task[None]] = {}
        self._last: dict[str, RackReport] = {}
        self._stop = asyncio.Event()
        self._signals = 0
        self._store: Store | None = None
        self._metrics: MetricsEndpoint | None = None  # /metrics and /healthz, when configured
        self._deliveries: set[asyncio.Task[None]] = set()  # alert deliveries in flight
        self._delivery_lock = asyncio.Lock()
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    async def serve(self) -> int:
        """Run until stopped; the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        with Store.open(self.settings.state_file) as store:
            self._store = store
            if (address := self.settings.metrics.address) is not None:
                self._metrics = await start_metrics(
                    store,
                    address,
                    is_running=lambda: self._scheduler.running and not self._stop.is_set(),
                    racks=lambda: self.settings.racks,
                )
            self._schedule_all()
            self._scheduler.start()
            log.info("daemon.started", racks=self.settings.racks, pid=os.getpid())
            sd_notify("READY=1", f"STATUS={self._status()}")
            watchdog = asyncio.create_task(self._watchdog())
            await self._stop.wait()
            await self._shutdown(watchdog)
        return 0

    def stop(self) -> None:
        self._stop.set()

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
        if rack in self._cycles:
            log.warning("cycle.skipped", rack=rack, reason="the previous cycle is still running")
            return
        task = asyncio.create_task(self._cycle(rack, self.settings), name=f"cycle {rack}")
        self._cycles[rack] = task
        task.add_done_callback(lambda _: self._cycles.pop(rack, None))

    async def _cycle(self, rack: str, settings: Settings) -> None:
        assert self._store is not None
        try:
            async with connect(settings, self._retry, limiter=self._limiter) as clients:
                checker = Checker(
                    maas=clients.maas,
                    testflinger=clients.testflinger,
                    store=self._store,
                    plan=CheckPlan.from_settings(settings),
                    clock=self._clock,
                )
                [report] = await checker.run([rack])
        except asyncio.CancelledError:
            raise
        except Exception:
            # A cycle must never take the daemon down; the next one will try again.
            log.exception("cycle.crashed", rack=rack)
            return
        self._last[rack] = report
        sd_notify(f"STATUS={self._status()}")
        if settings.alerts.webhook_url.get_secret_value():
            self._start_alert_delivery(settings)

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
                settings,
                timeout_s=alerts.DAEMON_DELIVERY_TIMEOUT_S,
                retry=self._retry or alerts.DELIVERY_RETRY,
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
        for key in ("state_file", "metrics"):
            if getattr(settings, key) != getattr(old, key):
                log.warning("daemon.restart_needed", reason=f"{key} changes at the next start")
        if settings.check.concurrency != old.check.concurrency:
            self._limiter = asyncio.Semaphore(settings.check.concurrency)
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
        jobs = [job for job in self._scheduler.get_jobs() if job.next_run_time is not None]
        if jobs:
            soonest = min(jobs, key=lambda job: job.next_run_time)
            rack = soonest.args[0]
            parts.append(f"next {rack} at {soonest.next_run_time:%H:%M:%S} UTC")
        if self._cycles:
            parts.append("checking " + ", ".join(sorted(self._cycles)))
        if self._last:
            report = max(self._last.values(), key=lambda r: r.cycle.started_at)
            failures = sum(1 for c in report.checks if c.outcome and c.outcome.is_failure)
            parts.append(
                f"last {report.rack} {report.cycle.status} "
                f"({len(report.checks)} agents, {failures} failed)"
            )
        return "; ".join(parts)

    async def _shutdown(self, watchdog: asyncio.Task[None]) -> None:
        """Stop starting cycles and stop waiting on jobs: they stay recorded for the next start."""
        sd_notify("STOPPING=1", "STATUS=stopping")
        self._scheduler.shutdown(wait=False)
        watchdog.cancel()
        in_flight = list(self._cycles.values())
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, watchdog, return_exceptions=True)
        # After the cycles, which start them. Undelivered alerts stay in the outbox.
        deliveries = list(self._deliveries)
        for task in deliveries:
            task.cancel()
        await asyncio.gather(*deliveries, return_exceptions=True)
        if self._metrics is not None:  # it reads the state file, which closes next
            await self._metrics.stop()
        assert self._store is not None
        left = len(self._store.unfinished())
        log.info("daemon.stopped", cycles_interrupted=len(in_flight), jobs_left_recorded=left)
