"""The Prometheus endpoint: `/metrics` from the state file, `/healthz` from the scheduler.

Every scrape reads the state file through the daemon's own Store, so the figures are the
recorded ones and a restart neither loses nor zeroes them. The daemon is one asyncio thread
and the handlers run in its loop, so the synchronous store is called directly.

    gauges, per agent {rack, agent}:
      rackwatch_agent_health{state}                 1 for its state, 0 for the other three
      rackwatch_agent_last_check_timestamp_seconds  when its latest check ended
      rackwatch_agent_consecutive_failures          failed or timed out since its last pass
      rackwatch_agent_last_provision_seconds        its latest passed job, submission to end
    gauges, per rack {rack}:
      rackwatch_rack_incident                       1 while the rack has an open incident
      rackwatch_rack_last_cycle_timestamp_seconds   when its latest complete cycle ended
      rackwatch_rack_cycle_duration_seconds         how long that cycle took
    counters:
      rackwatch_checks_total{rack, outcome}         checks ended
      rackwatch_upstream_errors_total{service}      MAAS or Testflinger calls that failed

The upstream errors are the `upstream_errors` counters of the state file, one per service,
which the check cycle adds to. This module may import: aiohttp, prometheus_client, structlog,
and rackwatch's store, health and errors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import structlog
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from rackwatch.errors import ConfigError, StoreError
from rackwatch.model import Health
from rackwatch.store import Store

log = structlog.get_logger("rackwatch.metrics")

UPSTREAM_ERRORS = "upstream_errors"  # the name of the state file's counters, by service
SERVICES = ("maas", "testflinger")  # always shown, so that a first error is an increase

RackList = Callable[[], Iterable[str]]


class StateCollector:
    """Reads the metrics from the state file at each scrape.

    The per-agent and per-rack gauges cover `racks()` (by default, every rack in the state
    file): a rack taken out of the configuration leaves no incident open in the metrics.
    """

    def __init__(self, store: Store, racks: RackList | None = None) -> None:
        self._store = store
        self._racks = racks
        # checks_total is a running total read from the ids it has not counted yet: counting
        # every check at every scrape would read the whole history each time.
        self._checks: Counter[tuple[str, str]] = Counter()
        self._checks_above = 0
        self._checks_unfinished: frozenset[int] = frozenset()

    def collect(self) -> list[Metric]:
        # One read transaction: every figure of a scrape comes from the same state.
        with self._store.reading():
            racks = list(self._racks()) if self._racks is not None else self._store.racks()
            metrics = self._agent_metrics(racks) + self._rack_metrics(racks)
            metrics.append(self._checks_metric())
            metrics.append(self._upstream_metric())
        return metrics

    def _agent_metrics(self, racks: Sequence[str]) -> list[Metric]:
        labels = ["rack", "agent"]
        health = GaugeMetricFamily(
            "rackwatch_agent_health",
            "The agent's health: 1 for its current state, 0 for the others.",
            labels=[*labels, "state"],
        )
        last_check = GaugeMetricFamily(
            "rackwatch_agent_last_check_timestamp_seconds",
            "When the agent's latest check ended, in seconds since the epoch.",
            labels=labels,
        )
        failures = GaugeMetricFamily(
            "rackwatch_agent_consecutive_failures",
            "The agent's checks failed or timed out since its last pass.",
            labels=labels,
        )
        provision = GaugeMetricFamily(
            "rackwatch_agent_last_provision_seconds",
            "How long the agent's latest passed job took, from submission to its end.",
            labels=labels,
        )
        recorded = self._store.health()
        for rack in racks:
            states = self._store.agent_states(rack)
            passes = self._store.last_passes([state.agent for state in states])
            for state in states:
                agent = state.agent
                current = recorded[agent][1].state if agent in recorded else Health.UNKNOWN
                for each in Health:
                    health.add_metric([rack, agent, each], 1.0 if each is current else 0.0)
                if state.last is not None and state.last.finished_at is not None:
                    last_check.add_metric([rack, agent], state.last.finished_at.timestamp())
                failures.add_metric([rack, agent], state.consecutive_failures)
                passed = passes.get(agent)
                if passed is not None and passed.duration_s is not None:
                    provision.add_metric([rack, agent], passed.duration_s)
        return [health, last_check, failures, provision]

    def _rack_metrics(self, racks: Sequence[str]) -> list[Metric]:
        incident = GaugeMetricFamily(
            "rackwatch_rack_incident",
            "1 while the rack has an open incident, else 0.",
            labels=["rack"],
        )
        last_cycle = GaugeMetricFamily(
            "rackwatch_rack_last_cycle_timestamp_seconds",
            "When the rack's latest complete cycle ended, in seconds since the epoch.",
            labels=["rack"],
        )
        duration = GaugeMetricFamily(
            "rackwatch_rack_cycle_duration_seconds",
            "How long the rack's latest complete cycle took.",
            labels=["rack"],
        )
        for rack in racks:
            incident.add_metric([rack], 0.0 if self._store.open_incident(rack) is None else 1.0)
            cycle = self._store.last_cycle(rack, statuses=("ok", "failures", "error"))
            if cycle is not None and cycle.finished_at is not None:
                last_cycle.add_metric([rack], cycle.finished_at.timestamp())
                elapsed = cycle.finished_at - cycle.started_at
                duration.add_metric([rack], elapsed.total_seconds())
        return [incident, last_cycle, duration]

    def count_checks(self) -> None:
        """Add the checks ended since the last count to the totals; the first count reads all."""
        counted = self._store.count_outcomes(
            above=self._checks_above, among=self._checks_unfinished
        )
        self._checks.update(counted.counts)
        self._checks_above = counted.above
        self._checks_unfinished = counted.unfinished

    def _checks_metric(self) -> Metric:
        self.count_checks()
        checks = CounterMetricFamily(
            "rackwatch_checks_total",
            "Checks ended, by rack and outcome.",
            labels=["rack", "outcome"],
        )
        for (rack, outcome), value in sorted(self._checks.items()):
            checks.add_metric([rack, outcome], value)
        return checks

    def _upstream_metric(self) -> Metric:
        counted = self._store.counters(UPSTREAM_ERRORS)
        errors = CounterMetricFamily(
            "rackwatch_upstream_errors_total",
            "MAAS or Testflinger calls that failed, retries included, by service.",
            labels=["service"],
        )
        for service in sorted(set(SERVICES) | set(counted)):
            errors.add_metric([service], counted.get(service, 0))
        return errors


def metrics_app(collector: StateCollector, is_running: Callable[[], bool]) -> web.Application:
    """The web application: /metrics from the collector, /healthz from `is_running()`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    exposition = make_aiohttp_handler(registry)

    async def metrics(request: web.Request) -> web.StreamResponse:
        try:
            return await exposition(request)
        except StoreError as exc:
            log.error("metrics.scrape_failed", error=str(exc))
            return web.Response(status=503, text=f"cannot read the state file: {exc}\n")

    async def healthz(request: web.Request) -> web.Response:
        if is_running():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="the scheduler is not running\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


class MetricsEndpoint:
    """The endpoint, listening."""

    def __init__(self, runner: web.AppRunner) -> None:
        self._runner = runner

    @property
    def port(self) -> int:
        """The port it listens on: the one chosen by the system when asked for port 0."""
        port: int = self._runner.addresses[0][1]
        return port

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_metrics(
    store: Store,
    address: tuple[str, int],
    is_running: Callable[[], bool],
    *,
    racks: RackList | None = None,
) -> MetricsEndpoint:
    """Listen on `address` (host, port). Raises ConfigError if it cannot be listened on."""
    collector = StateCollector(store, racks)
    # The first count reads every check (about half a second for 800,000): done here, before
    # the scheduler starts, rather than in a scrape while jobs are being followed.
    collector.count_checks()
    # No access log: a scrape every few seconds would bury the events that matter.
    runner = web.AppRunner(metrics_app(collector, is_running), access_log=None)
    await runner.setup()
    host, port = address
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"metrics.listen: cannot listen on {host} port {port}: {exc.strerror or exc}"
        ) from exc
    endpoint = MetricsEndpoint(runner)
    log.info("metrics.listening", host=host, port=endpoint.port)
    return endpoint
