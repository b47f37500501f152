"""The Prometheus endpoint: `/metrics` from the state file, `/healthz` from the scheduler.

Every scrape reads the state file through the daemon's own Store, so the figures are the
recorded ones and a restart neither loses nor zeroes them. The daemon is one asyncio thread
and the handlers run in its loop, so the synchronous store is called directly. A scrape never
reads the checks' history: each agent's marks (kept current as each check is written) are read
once per cycle of its rack, and each scrape reads each rack's latest cycle and incident and the
counts of outcomes, so it costs the same whatever history the file keeps.

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

import os
from collections.abc import Callable, Iterable, Sequence

import structlog
from aiohttp import hdrs, web
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
    """Reads the metrics from the state file at each scrape: each rack's latest cycle and
    incident and the counts of outcomes; each agent's marks once per cycle of its rack, when
    the cycle starts and when it ends (about 0.1 s at 2,000 agents).

    The per-agent and per-rack gauges cover `racks()` (by default, every rack in the state
    file): a rack taken out of the configuration leaves no incident open in the metrics.
    """

    def __init__(self, store: Store, racks: RackList | None = None) -> None:
        self._store = store
        self._racks = racks
        # The per-agent gauges, built once per cycle: what each rack's latest cycle was when
        # they were built, and them.
        self._agents_of: tuple[object, ...] | None = None
        self._agents: list[Metric] = []

    def collect(self) -> list[Metric]:
        # One read transaction: every figure of a scrape comes from the same state.
        with self._store.reading():
            self.agents_key()
            return self._agents + self.other_metrics()

    def agents_key(self) -> tuple[object, ...]:
        """What the per-agent gauges were built from; they are built again when it changed."""
        with self._store.reading():
            racks = self._rack_names()
            cycles = self._cycles_of(racks)
            if cycles != self._agents_of:
                self._agents, self._agents_of = self._agent_metrics(racks), cycles
        return cycles

    def agent_metrics(self) -> list[Metric]:
        """The per-agent gauges as `agents_key()` last built them."""
        return self._agents

    def other_metrics(self) -> list[Metric]:
        """The per-rack gauges and the counters, read afresh."""
        with self._store.reading():
            metrics = self._rack_metrics(self._rack_names())
            metrics.append(self._checks_metric())
            metrics.append(self._upstream_metric())
        return metrics

    def _rack_names(self) -> list[str]:
        return list(self._racks()) if self._racks is not None else self._store.racks()

    def _cycles_of(self, racks: Sequence[str]) -> tuple[object, ...]:
        """Each rack's latest cycle, partial or not, as it stands: the per-agent gauges change
        as a cycle's checks are written, and are read again once it starts or ends."""
        latest = [self._store.last_cycle(rack, partial=True) for rack in racks]
        return tuple(racks), tuple((c.id, c.status) if c else None for c in latest)

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
            for figures in self._store.agent_figures(rack):
                agent = figures.agent
                current = recorded[agent][1].state if agent in recorded else Health.UNKNOWN
                for each in Health:
                    health.add_metric([rack, agent, each], 1.0 if each is current else 0.0)
                if figures.last_check_at is not None:
                    last_check.add_metric([rack, agent], figures.last_check_at.timestamp())
                failures.add_metric([rack, agent], figures.consecutive_failures)
                if figures.last_provision_s is not None:
                    provision.add_metric([rack, agent], figures.last_provision_s)
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

    def count_checks(self) -> dict[tuple[str, str], int]:
        """The checks ended, by (rack, outcome), as the state file counts them."""
        return self._store.outcome_totals()

    def _checks_metric(self) -> Metric:
        checks = CounterMetricFamily(
            "rackwatch_checks_total",
            "Checks ended, by rack and outcome.",
            labels=["rack", "outcome"],
        )
        for (rack, outcome), value in sorted(self.count_checks().items()):
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


class _Part:
    """A registry's collector: some of a StateCollector's metrics."""

    def __init__(self, metrics: Callable[[], list[Metric]]) -> None:
        self.collect = metrics


def metrics_app(collector: StateCollector, is_running: Callable[[], bool]) -> web.Application:
    """The web application: /metrics from the collector, /healthz from `is_running()`.

    The per-agent gauges are written out as text once per `collector.agents_key()` and format
    asked for (that text is most of a scrape's cost); the rest is written at each scrape.
    """
    agents, others = CollectorRegistry(auto_describe=False), CollectorRegistry(auto_describe=False)
    agents.register(_Part(collector.agent_metrics))
    others.register(_Part(collector.other_metrics))
    agents_exposition = make_aiohttp_handler(agents, disable_compression=True)
    others_exposition = make_aiohttp_handler(others)
    written: dict[str, bytes] = {}  # by format asked for: the per-agent gauges as text
    written_for: list[tuple[object, ...]] = []  # the agents_key() they were written for

    async def metrics(request: web.Request) -> web.StreamResponse:
        try:
            key = collector.agents_key()
            if written_for != [key]:
                written.clear()
                written_for[:] = [key]
            asked = ",".join(request.headers.getall(hdrs.ACCEPT, [])) + "?" + request.query_string
            if asked not in written:
                part = await agents_exposition(request)
                assert isinstance(part, web.Response) and isinstance(part.body, bytes)
                text = part.body
                written[asked] = text.removesuffix(b"# EOF\n")  # OpenMetrics ends once, below
            response = await others_exposition(request)
            assert isinstance(response, web.Response) and isinstance(response.body, bytes)
            response.body = written[asked] + response.body
            return response
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
    # No access log: a scrape every few seconds would bury the events that matter.
    runner = web.AppRunner(metrics_app(collector, is_running), access_log=None)
    endpoint = MetricsEndpoint(runner)
    port = await listen(runner, address, "metrics.listen")
    log.info("metrics.listening", host=address[0], port=port)
    return endpoint


async def listen(runner: web.AppRunner, address: tuple[str, int], setting: str) -> int:
    """Start `runner` on `address`; the port it listens on (the one chosen for port 0).

    Raises ConfigError naming `setting` (where the address came from) if it cannot listen.
    """
    await runner.setup()
    host, port = address
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"{setting}: cannot listen on {host} port {port}: {_why(exc)}") from exc
    listening: int = runner.addresses[0][1]
    return listening


def _why(exc: OSError) -> str:
    """Why it cannot listen, as the system says it ("Address already in use"): asyncio's own
    message names the first address it tried."""
    return os.strerror(exc.errno) if exc.errno else str(exc)
