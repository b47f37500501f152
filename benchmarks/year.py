"""Benchmark of a year's state file: its size after pruning, and the reads that must stay fast.

`build_year` writes a simulated year of checks into a state file with bulk SQL that writes what
the Store writes (its schema, its time and provision-log encodings, its marks and counts), much
faster than a year of cycles would. The benchmark then prunes it as the daemon does
(`rackwatch.retention.prune`, in batches) and measures, on the pruned file:

- the file's size;
- `rackwatch status` as a process (wall and CPU), and `build_status` in this process; and, printed
  not judged, `status` as a process on an empty state file of the same racks: what Python's
  start and rackwatch's imports cost before the file has a say; and of that, Python importing
  pydantic-settings alone, with which rackwatch reads its configuration;
- one /metrics scrape: an HTTP GET of a daemon's endpoint; and the collector's `collect()`,
  which reads the per-agent gauges when a rack cycle starts or ends (printed, not judged);
- a daemon's start until /healthz answers;
- the time the pruning took and its longest single transaction.

The processes run rackwatch installed as on a lab host (`installed`).

Run from the project root:

    python3 -m uv run python benchmarks/year.py               # 2,000 agents, 365 days
    python3 -m uv run python benchmarks/year.py --agents 200  # a smaller file, quicker

Exit status: 0 when every target is met, 1 when one is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks import installed
from rackwatch.config import ScheduleSettings
from rackwatch.metrics import StateCollector
from rackwatch.model import Outcome, utc_now
from rackwatch.retention import prune
from rackwatch.status import build_status
from rackwatch.store import Store
from rackwatch.store._db import as_stamp, as_text
from rackwatch.store.marks import refresh_marks
from rackwatch.store.records import pack_log

# Of every 1,000 checks of an agent in good order: the rest pass.
MIX = (
    (Outcome.FAILED, 20),
    (Outcome.TIMED_OUT, 6),
    (Outcome.BUSY, 30),
    (Outcome.OFFLINE, 20),
    (Outcome.ERROR, 10),
    (Outcome.STALE, 4),
    (Outcome.NO_QUEUE, 2),
)
JUDGED = (Outcome.PASSED, Outcome.FAILED, Outcome.TIMED_OUT)
SKIP_DETAILS = {
    Outcome.BUSY: "state provision (job of another user)",
    Outcome.OFFLINE: "state offline",
    Outcome.ERROR: "testflinger GET /v1/agents/data answered 502",
    Outcome.STALE: "waiting, but last heard from 3h 10m ago",
    Outcome.NO_QUEUE: "no queue of its own (queues: shared-pool)",
}
BAD_AGENTS = 0.02  # the share of agents that fail one check in three
NOW = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Built:
    """What `build_year` wrote."""

    path: Path
    racks: list[str]
    agents: list[str]
    checks: int
    cycles: int
    now: datetime  # the end of the simulated year: the time to prune and read it at


def build_year(
    path: Path,
    *,
    agents: int = 2000,
    racks: int = 20,
    days: int = 365,
    checks_per_day: int = 4,
    now: datetime = NOW,
    seed: int = 11,
) -> Built:
    """Write a simulated year into a new state file at `path`, unpruned, and say what it holds.

    `agents` agents in `racks` racks ("rack-00" ... with agents "rack-00-m000" ...), each rack
    checked `checks_per_day` times a day for `days` days up to `now`. Most checks pass; some
    fail with a provision log excerpt, some time out, and the rest are skips (busy, offline,
    stale, no queue) or errors; a few agents are bad and fail often. Health, its transitions,
    rack incidents and delivered alerts go with them. The file is written in the Store's own
    schema and encodings, so `Store.open`, `rackwatch status` and the daemon read it as one of
    their own; prune it with `rackwatch.retention.prune` as the daemon would.

    2,000 agents over 365 days (2.9 M checks) take about a minute to write.
    """
    if path.exists():
        raise FileExistsError(f"{path} exists: build_year writes a new state file")
    rng = random.Random(seed)  # noqa: S311 - a simulation, not a secret
    per_rack = max(1, agents // racks)
    rack_names = [f"rack-{r:02d}" for r in range(racks)]
    fleet = {rack: [f"{rack}-m{m:03d}" for m in range(per_rack)] for rack in rack_names}
    bad = {agent for names in fleet.values() for agent in names if rng.random() < BAD_AGENTS}
    Store.open(path).close()  # the schema, migrated
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")  # 256 MiB: the indexes grow in every page
    conn.execute("BEGIN IMMEDIATE")
    every = [agent for names in fleet.values() for agent in names]
    conn.executemany("INSERT INTO agents (name) VALUES (?)", [(agent,) for agent in every])
    numbers = dict(conn.execute("SELECT name, id FROM agents").fetchall())
    writer = _Writer(conn, rng, bad, numbers)
    start = now - timedelta(days=days)
    step = timedelta(days=1) / checks_per_day
    for number in range(days * checks_per_day):
        at = start + number * step
        for index, rack in enumerate(rack_names):
            writer.cycle(rack, fleet[rack], at + timedelta(minutes=3 * index))
    writer.finish(now)
    refresh_marks(conn, every)
    conn.execute(
        "INSERT INTO outcomes (rack, outcome, checks) SELECT rack, outcome, count(*)"
        " FROM check_rows WHERE outcome IS NOT NULL GROUP BY rack, outcome"
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return Built(path, rack_names, every, writer.checks, writer.cycles, now)


class _Writer:
    """Writes the rows of each cycle as the Store would, keeping each agent's health."""

    def __init__(
        self, conn: sqlite3.Connection, rng: random.Random, bad: set[str], numbers: dict[str, int]
    ) -> None:
        self.conn = conn
        self.numbers = numbers  # agent -> its number in `agents`
        self.rng = rng
        self.bad = bad
        self.checks = 0
        self.cycles = 0
        self.health: dict[str, tuple[str, str, str, str | None, str]] = {}  # agent -> row
        self.failing: dict[str, int] = {}  # judged failures in a row
        self.incident: dict[str, int] = {}  # rack -> its open incident's id
        self.rows: list[tuple[object, ...]] = []

    def cycle(self, rack: str, agents: list[str], at: datetime) -> None:
        rng = self.rng
        end = at + timedelta(minutes=rng.uniform(20, 70))
        cursor = self.conn.execute(
            "INSERT INTO cycles (rack, started_at, finished_at, status, error)"
            " VALUES (?, ?, ?, ?, NULL)",
            (rack, as_text(at), as_text(end), "ok"),
        )
        cycle_id = cursor.lastrowid
        assert cycle_id is not None
        self.cycles += 1
        # About once a month per rack, a switch fails: most of the rack fails at once.
        lab_failure = rng.random() < 1 / 120
        outcomes = [self._outcome(agent, lab_failure) for agent in agents]
        failures = sum(1 for outcome in outcomes if outcome.is_failure)
        for agent, outcome in zip(agents, outcomes, strict=True):
            self.rows.append(self._check(cycle_id, rack, agent, outcome, at))
        self.checks += len(agents)
        if len(self.rows) >= 50_000:
            self._flush()
        self._settle(cycle_id, rack, agents, outcomes, end, in_incident=failures * 2 >= len(agents))

    def _outcome(self, agent: str, lab_failure: bool) -> Outcome:
        rng = self.rng
        if lab_failure and rng.random() < 0.8:
            return Outcome.FAILED
        if agent in self.bad and rng.random() < 1 / 3:
            return Outcome.FAILED
        draw = rng.randrange(1000)
        for outcome, share in MIX:
            if draw < share:
                return outcome
            draw -= share
        return Outcome.PASSED

    def _check(
        self, cycle_id: int, rack: str, agent: str, outcome: Outcome, at: datetime
    ) -> tuple[object, ...]:
        rng = self.rng
        created = as_stamp(at) + rng.randrange(30_000_000)  # the Store's stamps: microseconds
        job_id: bytes | None = None
        submitted = log = status = None
        detail = ""
        finished = created
        if outcome in JUDGED:
            job_id = rng.randbytes(16)  # a UUID as the Store keeps one (pack_job)
            submitted = created + rng.randrange(200_000, 2_000_000)
            if outcome is Outcome.TIMED_OUT:
                finished = submitted + 7_200_000_000
                detail = "not ended within 2h; cancelled"
                log = _provision_log(rng, agent, at) if rng.random() < 0.5 else None
            else:
                finished = submitted + rng.randrange(900_000_000, 3_900_000_000)
                status = 0 if outcome is Outcome.PASSED else rng.choice((1, 1, 1, 46, 247))
                if outcome is Outcome.FAILED:
                    log = _provision_log(rng, agent, at)
                    last = log.rsplit("\n", 1)[-1]
                    detail = f"provisioning exited {status} (device connector error): {last}"
        else:
            detail = SKIP_DETAILS[outcome]
        return (
            cycle_id,
            rack,
            self.numbers[agent],
            "",  # the machine: the agent's own name (pack_name)
            "" if job_id else None,  # the queue: the agent's own, when it got a job
            job_id,
            str(outcome),
            detail,
            status,
            created,
            submitted,
            finished,
            "Deployed" if outcome is not Outcome.FAILED else "Failed deployment",
            pack_log(log),
        )

    def _settle(
        self,
        cycle_id: int,
        rack: str,
        agents: list[str],
        outcomes: list[Outcome],
        at: datetime,
        *,
        in_incident: bool,
    ) -> None:
        """Health, transitions, incidents and an alert, roughly as the ledger records them."""
        conn = self.conn
        at_text = as_text(at)
        changed = []
        if in_incident and rack not in self.incident:
            cursor = conn.execute(
                "INSERT INTO incidents (rack, opened_at, reason) VALUES (?, ?, ?)",
                (rack, at_text, "most agents of the rack failed at once"),
            )
            assert cursor.lastrowid is not None
            self.incident[rack] = cursor.lastrowid
            changed.append({"kind": "incident_opened", "rack": rack})
        elif not in_incident and rack in self.incident:
            conn.execute(
                "UPDATE incidents SET closed_at = ? WHERE id = ?", (at_text, self.incident[rack])
            )
            del self.incident[rack]
            changed.append({"kind": "incident_closed", "rack": rack})
        if rack in self.incident:
            conn.execute(
                "UPDATE cycles SET incident_id = ? WHERE id = ?", (self.incident[rack], cycle_id)
            )
        else:
            for agent, outcome in zip(agents, outcomes, strict=True):
                change = self._assess(agent, rack, outcome, at_text)
                if change is not None:
                    before, after, reason = change
                    conn.execute(
                        "INSERT INTO transitions (cycle_id, rack, agent, before, after, at,"
                        " reason, job_id) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                        (cycle_id, rack, agent, before, after, at_text, reason),
                    )
                    changed.append({"kind": after, "rack": rack, "agent": agent})
        if changed:
            body = {"text": f"{rack}: {len(changed)} changes", "events": changed}
            conn.execute(
                "INSERT INTO alerts (cycle_id, rack, created_at, body, attempts, delivered_at)"
                " VALUES (?, ?, ?, ?, 1, ?)",
                (cycle_id, rack, at_text, json.dumps(body), at_text),
            )

    def _assess(
        self, agent: str, rack: str, outcome: Outcome, at: str
    ) -> tuple[str, str, str] | None:
        if outcome not in JUDGED:
            return None
        state, *_ = self.health.get(agent, ("unknown", "", "", None, ""))
        if outcome is Outcome.PASSED:
            self.failing[agent] = 0
            after = "healthy"
        else:
            self.failing[agent] = self.failing.get(agent, 0) + 1
            after = "unhealthy" if self.failing[agent] >= 2 else state
        reason = f"{outcome}: {'passed' if outcome is Outcome.PASSED else 'failed twice'}"
        if after == state:
            return None
        self.health[agent] = (after, rack, at, None, str(outcome))
        return state, after, reason

    def _flush(self) -> None:
        self.conn.executemany(
            "INSERT INTO check_rows (cycle_id, rack, agent_id, machine, queue, job_id, outcome,"
            " detail,"
            " provision_status, created_at, submitted_at, finished_at, maas_status,"
            " provision_log) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.rows,
        )
        self.rows.clear()

    def finish(self, now: datetime) -> None:
        self._flush()
        self.conn.executemany(
            "INSERT INTO health (agent, state, rack, since, job_id, outcome, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, '')",
            [(agent, *row) for agent, row in self.health.items()],
        )


def _provision_log(rng: random.Random, agent: str, at: datetime) -> str:
    """A failed provisioning's excerpt as rackwatch keeps it: its last lines that say something."""
    lines = list(_log_lines(rng, agent, at - timedelta(minutes=12)))
    return "\n".join(lines[-rng.randint(8, 20) :])


def _log_lines(rng: random.Random, agent: str, at: datetime) -> Iterator[str]:
    steps = [
        f"INFO: Starting provisioning of {agent} with MAAS",
        "INFO: Releasing machine from previous allocation",
        "INFO: Acquiring machine",
        f"INFO: Deploying {agent} with distro noble (kernel ga-24.04)",
        "INFO: MAAS deployment status: Deploying",
        "INFO: Waiting for the machine to power on (ipmi)",
        "INFO: MAAS deployment status: Deploying (curtin install)",
        "INFO: curtin: running 'curtin block-meta simple'",
        "INFO: curtin: extracting image to /tmp/tmpx8a2/target",
        "INFO: curtin: installing kernel linux-generic",
        "INFO: curtin: running 'grub-install --target=x86_64-efi'",
        "WARNING: curtin: grub-install: warning: EFI variables are not supported",
        f'ERROR: MAAS deployment of {agent} failed: status "Failed deployment"'
        " (curtin: grub-install failed)",
        "ERROR: Provisioning failed: device connector exited 1",
    ]
    for step in steps:
        at += timedelta(seconds=rng.uniform(3, 90))
        yield f"{at:%Y-%m-%d %H:%M:%S} {step}"


# -- the benchmark ---------------------------------------------------------------------------

SIZE_TARGET_MB = 150.0
STATUS_TARGET_S = 0.2
SCRAPE_TARGET_S = 0.020
START_TARGET_S = 0.5


@dataclass(frozen=True)
class Timed:
    wall_s: float
    cpu_s: float


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--racks", type=int, default=20)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--keep-days", type=int, default=90, help="history.keep_checks, in days")
    parser.add_argument("--dir", type=Path, help="where to write the state file (default: a temp)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rackwatch-year-") as temp:
        folder = args.dir or Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        args.installed = installed.build(Path(temp) / "venv")
        return _run(args, folder)


def _run(args: argparse.Namespace, folder: Path) -> int:
    path = folder / "state.db"
    for stale in folder.glob("state.db*"):
        stale.unlink()
    print(f"load average at start: {_load()}; {os.cpu_count()} cores")
    began = time.perf_counter()
    built = build_year(path, agents=args.agents, racks=args.racks, days=args.days, now=utc_now())
    print(
        f"built: {built.checks:,} checks, {built.cycles:,} cycles of {len(built.agents):,} agents"
        f" in {len(built.racks)} racks over {args.days} days, in {time.perf_counter() - began:.1f} s;"
        f" {_mb(path):.1f} MB unpruned"
    )
    with Store.open(path) as store:
        report = asyncio.run(
            prune(store, now=built.now, keep_checks=timedelta(days=args.keep_days))
        )
        kept = store.outcome_totals()
    print(
        f"pruned: {report.checks:,} checks summarised by day and {report.history:,} other rows"
        f" in {report.steps} transactions, {report.seconds:.1f} s in all; longest transaction"
        f" {report.longest_step_s * 1000:.0f} ms"
    )
    unvacuumed = _mb(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("VACUUM")
    size = _mb(path)
    print(
        f"state file: {size:.1f} MB (target ≤ {SIZE_TARGET_MB:.0f} MB), as a file pruned all"
        f" year takes it; {unvacuumed:.1f} MB right after the first pruning of the year, whose"
        f" freed pages new checks reuse ({sum(kept.values()):,} checks counted)"
    )
    config = _write_config(folder, built, path)
    status_process = min(
        (_status_process(args.installed, config) for _ in range(3)), key=lambda t: t.wall_s
    )
    status_inline = min((_status_inline(path, built) for _ in range(3)), key=lambda t: t.wall_s)
    print(
        f"status: {status_process.wall_s:.3f} s wall, {status_process.cpu_s:.3f} s CPU as a"
        f" process; {status_inline.wall_s:.3f} s wall, {status_inline.cpu_s:.3f} s CPU"
        f" in-process (target ≤ {STATUS_TARGET_S} s)"
    )
    # The same racks with no history: what the process costs before the file has a say.
    empty = folder / "empty.db"
    for stale in folder.glob("empty.db*"):
        stale.unlink()
    Store.open(empty).close()
    floor = min(
        (_status_process(args.installed, _write_config(folder, built, empty)) for _ in range(3)),
        key=lambda t: t.wall_s,
    )
    print(
        f"  status as a process on an empty state file: {floor.wall_s:.3f} s wall,"
        f" {floor.cpu_s:.3f} s CPU (Python's start and rackwatch's imports)"
    )
    settings_import = min(
        (
            _process([str(args.installed.python), "-c", "import pydantic_settings"])
            for _ in range(3)
        ),
        key=lambda t: t.wall_s,
    )
    print(
        f"  of which Python starting and importing pydantic-settings alone: "
        f"{settings_import.wall_s:.3f} s wall, {settings_import.cpu_s:.3f} s CPU"
    )
    collect = min((_collect(path, built) for _ in range(5)), key=lambda t: t.wall_s)
    # Twice: the first start also reads what the daemon imports into the page cache.
    start, first_scrape, scrape = min(
        (_daemon(args.installed, config) for _ in range(2)), key=lambda started: started[0]
    )
    print(
        f"/metrics: HTTP scrape {scrape * 1000:.1f} ms wall, median of 5"
        f" (target ≤ {SCRAPE_TARGET_S * 1000:.0f} ms); the first after the daemon's start"
        f" {first_scrape * 1000:.1f} ms, which reads the per-agent gauges, as the first after"
        f" a rack cycle starts or ends does: collect() {collect.wall_s * 1000:.1f} ms wall,"
        f" {collect.cpu_s * 1000:.1f} ms CPU, then writing them out"
    )
    print(f"daemon start until /healthz answers: {start:.3f} s (target ≤ {START_TARGET_S} s)")
    print(f"load average at end: {_load()}")
    missed = [
        name
        for name, figure, target in (
            ("state file size", size, SIZE_TARGET_MB),
            ("status as a process", status_process.wall_s, STATUS_TARGET_S),
            ("status in-process", status_inline.wall_s, STATUS_TARGET_S),
            ("HTTP scrape", scrape, SCRAPE_TARGET_S),
            ("daemon start", start, START_TARGET_S),
        )
        if figure > target
    ]
    print("every target met" if not missed else f"missed: {', '.join(missed)}")
    return 1 if missed else 0


def _write_config(folder: Path, built: Built, state_file: Path) -> Path:
    """A configuration of the built racks and `state_file`, with a MAAS and Testflinger nobody
    answers at: the racks were checked less than an interval ago, so no cycle starts while
    measured."""
    port = _free_port()
    config = folder / f"{state_file.stem}.toml"
    config.write_text(f"""
racks = {json.dumps(built.racks)}
state_file = "{state_file}"
[maas]
url = "http://127.0.0.1:9/MAAS/"
api_key = "a:b:c"
[testflinger]
url = "http://127.0.0.1:9/"
[web]
listen = "127.0.0.1:{port}"
""")
    config.chmod(0o600)
    return config


def _status_process(rackwatch: installed.Installed, config: Path) -> Timed:
    return _process(rackwatch.command("status", "--config", str(config), "--json"))


def _process(command: list[str]) -> Timed:
    """The wall and CPU time of running `command`, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=installed.environment(), check=False)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, cpu)


def _status_inline(path: Path, built: Built) -> Timed:
    began, cpu = time.perf_counter(), time.process_time()
    with Store.open_readonly(path) as store:
        racks = build_status(store, built.racks, ScheduleSettings(), utc_now())
    assert sum(len(rack.agents) for rack in racks) == len(built.agents)
    return Timed(time.perf_counter() - began, time.process_time() - cpu)


def _collect(path: Path, built: Built) -> Timed:
    with Store.open_readonly(path) as store:
        collector = StateCollector(store, lambda: built.racks)
        began, cpu = time.perf_counter(), time.process_time()
        metrics = collector.collect()
        timed = Timed(time.perf_counter() - began, time.process_time() - cpu)
    [health] = [m for m in metrics if m.name == "rackwatch_agent_health"]
    assert len(health.samples) == 4 * len(built.agents)
    return timed


def _daemon(rackwatch: installed.Installed, config: Path) -> tuple[float, float, float]:
    """Start `rackwatch run`: the seconds until /healthz answers, then those of its first
    /metrics scrape (which builds the per-agent gauges) and the median of the next five."""
    listen = next(
        line.split('"')[1] for line in config.read_text().splitlines() if line.startswith("listen")
    )
    base = f"http://{listen}"
    began = time.perf_counter()
    daemon = subprocess.Popen(
        rackwatch.command("run", "--config", str(config)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=installed.environment(),
    )
    try:
        while not _answers(f"{base}/healthz"):
            if daemon.poll() is not None:
                raise SystemExit(f"rackwatch run exited {daemon.returncode}")
            time.sleep(0.005)
        start = time.perf_counter() - began
        scrapes = []
        for _ in range(6):
            at = time.perf_counter()
            metrics = f"{base}/metrics"
            with urllib.request.urlopen(metrics, timeout=10) as answer:  # noqa: S310 - http only
                answer.read()
            scrapes.append(time.perf_counter() - at)
        return start, scrapes[0], statistics.median(scrapes[1:])
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - http only
            return bool(answer.status == 200)
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) / 1e6


def _load() -> str:
    return " ".join(f"{figure:.2f}" for figure in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
