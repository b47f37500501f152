"""The Prometheus endpoint: real scrapes over HTTP on 127.0.0.1 of real state files."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from rackwatch.errors import ConfigError
from rackwatch.metrics import MetricsEndpoint, start_metrics
from rackwatch.model import Health, Outcome
from rackwatch.simlab import Behaviour
from rackwatch.store import Store
from tests.harness import Daemon, LabFactory, rack, until

B = Behaviour
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

Families = dict[str, list[Sample]]

TYPES = {
    "rackwatch_agent_health": "gauge",
    "rackwatch_agent_last_check_timestamp_seconds": "gauge",
    "rackwatch_agent_consecutive_failures": "gauge",
    "rackwatch_agent_last_provision_seconds": "gauge",
    "rackwatch_rack_incident": "gauge",
    "rackwatch_rack_last_cycle_timestamp_seconds": "gauge",
    "rackwatch_rack_cycle_duration_seconds": "gauge",
    "rackwatch_checks": "counter",  # the parser names a counter's family without "_total"
    "rackwatch_upstream_errors": "counter",
}


@asynccontextmanager
async def endpoint(
    store: Store,
    *,
    is_running: Callable[[], bool] = lambda: True,
    racks: Callable[[], Iterable[str]] | None = None,
) -> AsyncIterator[MetricsEndpoint]:
    served = await start_metrics(store, ("127.0.0.1", 0), is_running, racks=racks)
    try:
        yield served
    finally:
        await served.stop()


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def scrape(port: int) -> tuple[dict[str, str], Families]:
    """The type and the samples of each metric family served."""
    status, text = await get(port, "/metrics")
    assert status == 200, text
    families = list(text_string_to_metric_families(text))
    return {f.name: f.type for f in families}, {f.name: f.samples for f in families}


def values(families: Families, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The family's samples as {(label values, in the order given): value}."""
    return {tuple(s.labels[label] for label in labels): s.value for s in families[name]}


def health_of(families: Families, agent: str) -> dict[str, float]:
    samples = families["rackwatch_agent_health"]
    return {s.labels["state"]: s.value for s in samples if s.labels["agent"] == agent}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_two_cycles_show_as_gauges_and_counters_of_the_right_type(
    served: LabFactory,
) -> None:
    """After two real cycles, every metric has its type and the values the state file holds."""
    harness = await served(
        [rack("r1", B.PASS, B.FAIL, B.PASS, B.PASS), rack("r2", B.FAIL, B.FAIL, B.FAIL)]
    )
    await harness.cycle()
    await harness.cycle()

    with Store.open(harness.state_file) as store:
        async with endpoint(store) as served_metrics:
            types, families = await scrape(served_metrics.port)
        last = {agent: store.history(agent, 1)[0] for agent in ("r1-m1", "r1-m2", "r2-m1")}
        cycles = {name: store.last_cycle(name) for name in ("r1", "r2")}

    assert types == TYPES
    # One-hot: each agent has all four states, exactly one of them 1.
    agents = {s.labels["agent"] for s in families["rackwatch_agent_health"]}
    assert agents == {"r1-m1", "r1-m2", "r1-m3", "r1-m4", "r2-m1", "r2-m2", "r2-m3"}
    for agent in agents:
        states = health_of(families, agent)
        assert set(states) == {str(h) for h in Health}
        assert sorted(states.values()) == [0.0, 0.0, 0.0, 1.0]
    assert health_of(families, "r1-m1")["healthy"] == 1.0
    assert health_of(families, "r1-m2")["unhealthy"] == 1.0
    # Failures in a rack incident say nothing about the machines.
    assert health_of(families, "r2-m1")["unknown"] == 1.0

    failures = values(families, "rackwatch_agent_consecutive_failures", "agent")
    assert failures == {
        ("r1-m1",): 0.0,
        ("r1-m2",): 2.0,
        ("r1-m3",): 0.0,
        ("r1-m4",): 0.0,
        ("r2-m1",): 2.0,
        ("r2-m2",): 2.0,
        ("r2-m3",): 2.0,
    }
    assert values(families, "rackwatch_checks", "rack", "outcome") == {
        ("r1", "passed"): 6.0,
        ("r1", "failed"): 2.0,
        ("r2", "failed"): 6.0,
    }
    upstream = values(families, "rackwatch_upstream_errors", "service")
    assert upstream == {("maas",): 0.0, ("testflinger",): 0.0}
    assert values(families, "rackwatch_rack_incident", "rack") == {("r1",): 0.0, ("r2",): 1.0}

    # Only agents that passed have a provisioning time: their latest passed job's.
    provision = values(families, "rackwatch_agent_last_provision_seconds", "agent")
    assert set(provision) == {("r1-m1",), ("r1-m3",), ("r1-m4",)}
    assert provision[("r1-m1",)] == pytest.approx(last["r1-m1"].duration_s)
    last_check = values(families, "rackwatch_agent_last_check_timestamp_seconds", "agent")
    for agent, check in last.items():
        assert check.finished_at is not None
        assert last_check[(agent,)] == pytest.approx(check.finished_at.timestamp())
    cycle_at = values(families, "rackwatch_rack_last_cycle_timestamp_seconds", "rack")
    duration = values(families, "rackwatch_rack_cycle_duration_seconds", "rack")
    for name, cycle in cycles.items():
        assert cycle is not None and cycle.finished_at is not None
        assert cycle_at[(name,)] == pytest.approx(cycle.finished_at.timestamp())
        elapsed = (cycle.finished_at - cycle.started_at).total_seconds()
        assert duration[(name,)] == pytest.approx(elapsed)
        assert elapsed > 0


async def test_counters_survive_a_restart_and_count_on(served: LabFactory) -> None:
    """A new process reads the same counts from the state file, then adds only new checks."""
    harness = await served([rack("r1", B.PASS, B.FAIL)])
    await harness.cycle()
    with Store.open(harness.state_file) as store:
        store.count("upstream_errors", "maas")
        store.count("upstream_errors", "maas")
        store.count("upstream_errors", "testflinger")
        async with endpoint(store) as served_metrics:
            _, before = await scrape(served_metrics.port)

    with Store.open(harness.state_file) as store:
        async with endpoint(store) as served_metrics:
            _, after = await scrape(served_metrics.port)
            await harness.cycle()  # written through another connection, as by `run-once`
            _, later = await scrape(served_metrics.port)

    checks = values(before, "rackwatch_checks", "rack", "outcome")
    assert checks == {("r1", "passed"): 1.0, ("r1", "failed"): 1.0}
    assert values(after, "rackwatch_checks", "rack", "outcome") == checks
    upstream = values(before, "rackwatch_upstream_errors", "service")
    assert upstream == {("maas",): 2.0, ("testflinger",): 1.0}
    assert values(after, "rackwatch_upstream_errors", "service") == upstream
    assert health_of(after, "r1-m1") == health_of(before, "r1-m1")
    assert values(later, "rackwatch_checks", "rack", "outcome") == {
        ("r1", "passed"): 2.0,
        ("r1", "failed"): 2.0,
    }


async def test_a_check_is_counted_once_whether_it_ends_before_or_after_a_scrape(
    tmp_path: Path,
) -> None:
    """A job still running at a scrape is counted when it ends, and no check twice."""
    with Store.open(tmp_path / "state.db") as store:
        cycle = store.start_cycle("r1", NOW)
        job = store.begin_job(
            cycle, rack="r1", agent="a1", machine=None, queue="a1", job_id="j1", at=NOW
        )
        store.record_outcome(
            cycle, rack="r1", agent="a2", machine=None, outcome=Outcome.OFFLINE, at=NOW
        )
        async with endpoint(store) as served_metrics:
            _, first = await scrape(served_metrics.port)
            store.finish_check(job, outcome=Outcome.PASSED, at=NOW)
            store.record_outcome(
                cycle, rack="r1", agent="a3", machine=None, outcome=Outcome.FAILED, at=NOW
            )
            _, second = await scrape(served_metrics.port)
            _, third = await scrape(served_metrics.port)

    assert values(first, "rackwatch_checks", "rack", "outcome") == {("r1", "offline"): 1.0}
    expected = {("r1", "offline"): 1.0, ("r1", "passed"): 1.0, ("r1", "failed"): 1.0}
    assert values(second, "rackwatch_checks", "rack", "outcome") == expected
    assert values(third, "rackwatch_checks", "rack", "outcome") == expected


async def test_gauges_cover_the_racks_given_and_counters_every_rack(tmp_path: Path) -> None:
    """A rack left out of `racks` keeps no incident open; one never checked shows no incident."""
    with Store.open(tmp_path / "state.db") as store:
        for name in ("r1", "r2"):
            cycle_id = store.start_cycle(name, NOW)
            store.record_outcome(
                cycle_id, rack=name, agent=f"{name}-a", machine=None, outcome=Outcome.FAILED, at=NOW
            )
            store.finish_cycle(cycle_id, NOW, "failures")
        store.record_health(
            store.cycle(cycle_id),
            changes=[],
            incident_opened="the lab switch",
            incident_closed=False,
            alert=None,
            at=NOW,
        )
        async with endpoint(store, racks=lambda: ["r1", "r3"]) as served_metrics:
            _, families = await scrape(served_metrics.port)

    assert values(families, "rackwatch_rack_incident", "rack") == {("r1",): 0.0, ("r3",): 0.0}
    assert {s.labels["rack"] for s in families["rackwatch_agent_health"]} == {"r1"}
    cycle_at = values(families, "rackwatch_rack_last_cycle_timestamp_seconds", "rack")
    assert set(cycle_at) == {("r1",)}
    assert values(families, "rackwatch_checks", "rack", "outcome") == {
        ("r1", "failed"): 1.0,
        ("r2", "failed"): 1.0,
    }


async def test_healthz_is_200_while_the_scheduler_runs_and_503_otherwise(tmp_path: Path) -> None:
    """/healthz follows `is_running()` at each request."""
    running = True
    with Store.open(tmp_path / "state.db") as store:
        async with endpoint(store, is_running=lambda: running) as served_metrics:
            up = await get(served_metrics.port, "/healthz")
            running = False
            down = await get(served_metrics.port, "/healthz")
    assert up == (200, "ok\n")
    assert down[0] == 503


async def test_a_scrape_that_cannot_read_the_state_file_is_a_503(tmp_path: Path) -> None:
    """A store error answers 503 with its reason rather than a half-written page."""
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        async with endpoint(store) as served_metrics:
            with sqlite3.connect(path) as other:
                other.execute("DROP TABLE health")
            status, text = await get(served_metrics.port, "/metrics")
    assert status == 503
    assert "cannot read the state file" in text
    assert "no such table: health" in text


async def test_a_port_already_taken_is_a_configuration_error(tmp_path: Path) -> None:
    """Listening where something else listens raises ConfigError naming metrics.listen."""
    with Store.open(tmp_path / "state.db") as store:
        async with endpoint(store) as first:
            taken = r"metrics\.listen: cannot listen on 127\.0\.0\.1"
            with pytest.raises(ConfigError, match=taken):
                await start_metrics(store, ("127.0.0.1", first.port), lambda: True)


async def test_the_daemon_serves_metrics_while_it_runs(daemon: Daemon) -> None:
    """`rackwatch run` with [metrics] listen serves both paths, and closes them when it stops."""
    port = free_port()
    daemon.write_config(["r1"])
    daemon.config.write_text(
        daemon.config.read_text() + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    await daemon.start()
    # A rack's second cycle starts only once its first has ended.
    await until(lambda: daemon.cycles("r1") >= 2)
    healthz = await get(port, "/healthz")
    types, families = await scrape(port)
    code, events = await daemon.stop()

    assert code == 0
    assert healthz == (200, "ok\n")
    assert types == TYPES
    assert values(families, "rackwatch_checks", "rack", "outcome")[("r1", "passed")] >= 2
    assert health_of(families, "r1-m1")["healthy"] == 1.0
    assert health_of(families, "r1-m2")["healthy"] == 1.0
    assert values(families, "rackwatch_rack_incident", "rack") == {("r1",): 0.0}
    assert [e["port"] for e in events if e["event"] == "metrics.listening"] == [port]
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(port, "/healthz")


async def test_the_daemon_will_not_start_on_a_taken_port(daemon: Daemon) -> None:
    """A metrics port already in use stops `rackwatch run` with the configuration exit code."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon.config.write_text(
            daemon.config.read_text() + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        )
        process = await daemon.start()
        _, err = await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode == 78
    assert f"metrics.listen: cannot listen on 127.0.0.1 port {port}" in err.decode()
    assert daemon.cycles("r1") == 0
