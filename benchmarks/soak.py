"""Soak benchmark of the daemon: `rackwatch run` for many short cycles on a simulated lab.

The lab is served by this process; the daemon runs as a process of its own, checking every rack
every `--interval` seconds until each has finished `--cycles` cycles. Its RSS and open file
descriptors are sampled once it is warm (after the first few cycles) and again at the end. Its
idle CPU is measured twice: in the gaps between cycles (no cycle of any rack unfinished in the
state file), and over a quiet spell after a SIGHUP has moved the next cycle an hour away. Run
from the project root:

    python3 -m uv run python benchmarks/soak.py               # 200 cycles at 2 s: about 7 minutes
    python3 -m uv run python benchmarks/soak.py --cycles 10

Exit status: 0 when every target is met, every check passed and the daemon exited 0; else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rackwatch.simlab import Lab, LabUrls, uniform_lab

WARM_CYCLES = 5  # the start sample: imports done, the first sessions made and closed
GROWTH_TARGET_PCT = 10.0
IDLE_CPU_TARGET_PCT = 1.0
SAMPLE_S = 0.05  # how often the state file and the daemon's CPU time are read
QUIET_S = 10.0
# A footprint is taken this long into a gap: a cycle's sessions close just after the state file
# records its end, and a sample at that moment can catch their sockets still open.
SETTLE_S = 0.2
PROVISION_S = 0.3  # the lab's job time
PICKUP_S = 0.05  # the lab's pickup, setup and cleanup time
# Variables that would override the benchmark's configuration file or talk to systemd.
DROPPED_PREFIXES = ("RACKWATCH_", "MAAS_", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_")


@dataclass(frozen=True)
class Footprint:
    """The daemon's memory, open files and CPU time used, at one moment."""

    rss_kb: int
    cpu_s: float
    fds: Counter[str]  # by what they point at, the inode numbers of sockets and pipes left out


@dataclass(frozen=True)
class Progress:
    """The cycles in the state file: finished ones per rack, and how many have started."""

    finished: dict[str, int]
    started: int

    @property
    def idle(self) -> bool:
        return self.started == sum(self.finished.values())


@dataclass
class IdleMeter:
    """CPU and wall time summed between samples with no cycle running at either end."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    last: tuple[float, float, int] | None = None  # wall, CPU, cycles started at the last sample

    def add(self, before: Progress, at: float, cpu: float, after: Progress) -> None:
        # The CPU reading sits between two readings of the state file, so a cycle starting
        # meanwhile keeps the sample out; so does one that started and ended between samples.
        if not (before.idle and after.idle and before.started == after.started):
            self.last = None
            return
        if self.last is not None and self.last[2] == after.started:
            self.wall_s += at - self.last[0]
            self.cpu_s += cpu - self.last[1]
        self.last = (at, cpu, after.started)


@dataclass
class Daemon:
    """The daemon under test, seen through /proc, its state file and its stderr."""

    process: asyncio.subprocess.Process
    state_file: Path
    racks: list[str]
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    logged: int = 0

    def query(self, sql: str) -> dict[str, int]:
        """Rows of (name, count); none while the file is being created."""
        try:
            with sqlite3.connect(f"file:{self.state_file}?mode=ro", uri=True) as db:
                return {str(key): int(count) for key, count in db.execute(sql)}
        except sqlite3.Error:
            return {}

    def progress(self) -> Progress:
        counts = self.query(
            "SELECT rack, count(finished_at) FROM cycles GROUP BY rack"
            " UNION ALL SELECT '', count(*) FROM cycles"
        )
        return Progress({rack: counts.get(rack, 0) for rack in self.racks}, counts.get("", 0))

    def cpu_s(self) -> float:
        """User + system CPU time, all threads (fields 14 and 15 of /proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def footprint(self) -> Footprint:
        proc = Path(f"/proc/{self.process.pid}")
        status = (proc / "status").read_text().splitlines()
        [rss_kb] = [int(line.split()[1]) for line in status if line.startswith("VmRSS:")]
        fds: Counter[str] = Counter()
        for fd in (proc / "fd").iterdir():
            try:
                fds[re.sub(r":\[\d+\]$", "", str(fd.readlink()))] += 1
            except OSError:  # closed since the listing
                continue
        return Footprint(rss_kb, self.cpu_s(), fds)

    async def footprint_in_gap(self) -> Footprint:
        """The footprint SETTLE_S into a gap between cycles."""
        while True:
            before = await self.watch(lambda p: p.idle, None)
            await asyncio.sleep(SETTLE_S)
            footprint = self.footprint()
            if self.progress() == before:
                return footprint

    async def drain_log(self) -> None:
        """Read stderr as it comes, so that a full pipe never blocks the daemon."""
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.logged += 1
            self.log_tail.append(line.decode(errors="replace").rstrip())

    async def watch(self, done: Callable[[Progress], bool], meter: IdleMeter | None) -> Progress:
        """Sample every SAMPLE_S until `done`; raises if the daemon exits meanwhile."""
        while self.process.returncode is None:
            before = self.progress()
            at, cpu = time.monotonic(), self.cpu_s()
            after = self.progress()
            if meter is not None:
                meter.add(before, at, cpu, after)
            if done(after):
                return after
            await asyncio.sleep(SAMPLE_S)
        raise RuntimeError(f"the daemon exited early with code {self.process.returncode}")


def write_config(path: Path, lab: Lab, urls: LabUrls, interval: str) -> None:
    path.write_text(
        f"racks = {json.dumps(lab.rack_names)}\n"
        f"state_file = {json.dumps(str(path.with_name('state.db')))}\n"
        f"[schedule]\ninterval = {json.dumps(interval)}\njitter = 0\n"
        f"[maas]\nurl = {json.dumps(urls.maas)}\napi_key = {json.dumps(lab.maas_api_key)}\n"
        f"[testflinger]\nurl = {json.dumps(urls.testflinger)}\n"
        "[check]\npoll_interval = 0.1\njob_timeout = 20\n"
    )


async def soak(lab: Lab, args: argparse.Namespace) -> bool:
    """Serve the lab, run the daemon on it, measure it and print the figures; True if all met."""
    with tempfile.TemporaryDirectory(prefix="rackwatch-soak-") as scratch:
        config = Path(scratch) / "rackwatch.toml"
        async with lab.serve() as urls:
            write_config(config, lab, urls, f"{args.interval:g}s")
            env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_PREFIXES)}
            command = ["run", "--config", str(config), "--log-format", "json"]
            process = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "rackwatch", *command, "--log-level", "warning"],
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            daemon = Daemon(process, config.with_name("state.db"), lab.rack_names)
            draining = asyncio.create_task(daemon.drain_log())
            started = time.monotonic()
            between = IdleMeter()
            try:
                async with asyncio.timeout(2 * args.cycles * args.interval + 120):
                    warm = await daemon.watch(
                        lambda p: p.idle and min(p.finished.values()) >= WARM_CYCLES, None
                    )
                    first = await daemon.footprint_in_gap()
                    end = await daemon.watch(
                        lambda p: p.idle and min(p.finished.values()) >= args.cycles, between
                    )
                    last = await daemon.footprint_in_gap()
                    wall = time.monotonic() - started

                    # Move the next cycle an hour away; let the reload, and any cycle started
                    # just before it, settle.
                    write_config(config, lab, urls, "1h")
                    process.send_signal(signal.SIGHUP)
                    await asyncio.sleep(1.0)
                    quiet = await daemon.watch(lambda p: p.idle, None)
                    quiet_at, quiet_cpu = time.monotonic(), daemon.cpu_s()
                    await asyncio.sleep(QUIET_S)
                    quiet_wall = time.monotonic() - quiet_at
                    quiet_cpu = daemon.cpu_s() - quiet_cpu
                    quiet_held = daemon.progress().started == quiet.started
                process.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(process.wait(), timeout=15)
                await draining
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        outcomes = daemon.query("SELECT coalesce(outcome, '-'), count(*) FROM checks GROUP BY 1")
        statuses = daemon.query("SELECT coalesce(status, '-'), count(*) FROM cycles GROUP BY 1")

    all_passed = list(outcomes) == ["passed"]
    print(
        f"rackwatch run: {len(lab.rack_names)} racks x {args.per_rack} agents,"
        f" every {args.interval:g} s, {args.cycles} cycles per rack"
        f" (provision {PROVISION_S:g} s, pickup {PICKUP_S:g} s, poll 0.1 s, log level warning)"
    )
    print(f"  wall time: {wall:.1f} s to the end sample; cores: {os.cpu_count()}")
    print(f"  cycles: {sum(statuses.values())} in all, by status {statuses}")
    cpu, cycles = last.cpu_s - first.cpu_s, sum(end.finished.values()) - sum(warm.finished.values())
    print(f"  daemon CPU from start to end sample: {cpu:.2f} s, {1000 * cpu / cycles:.1f} ms/cycle")
    print(f"  jobs submitted: {len(lab.submissions):,}; checks by outcome: {outcomes}")
    print(f"  every check passed: {'yes' if all_passed else 'NO'}")
    print(f"  daemon log lines (warning and above): {daemon.logged}")
    print(f"  daemon exit code after SIGTERM: {code}")
    print(f"  samples: start at finished cycles {warm.finished}, end at {end.finished}")
    print()
    met = [
        growth("RSS", first.rss_kb, last.rss_kb, "kB"),
        growth("open fds", first.fds.total(), last.fds.total(), "fds"),
        idle_cpu("idle CPU, between", between.cpu_s, between.wall_s),
        idle_cpu(f"idle CPU, quiet {QUIET_S:g} s", quiet_cpu, quiet_wall),
    ]
    if not quiet_held:
        print("  a cycle ran during the quiet spell: its figure is not one of pure idle")
    if first.fds != last.fds:
        print(f"  fds at start: {dict(first.fds)}\n  fds at end:   {dict(last.fds)}")
    if daemon.log_tail:
        print("\nthe daemon's last log lines:\n" + "\n".join(daemon.log_tail))
    return all(met) and all_passed and quiet_held and code == 0


def row(name: str, value: str, target: str, met: bool) -> bool:
    print(f"  {name:<22}{value:<48}{target:<10}{'PASS' if met else 'MISS'}")
    return met


def growth(name: str, start: int, end: int, unit: str) -> bool:
    pct = 100 * (end - start) / start
    value = f"{start:,} {unit} -> {end:,} {unit} ({pct:+.1f}%)"
    return row(name, value, f"<= {GROWTH_TARGET_PCT:g}%", pct <= GROWTH_TARGET_PCT)


def idle_cpu(name: str, cpu_s: float, wall_s: float) -> bool:
    pct = 100 * cpu_s / wall_s if wall_s else float("nan")
    value = f"{pct:.3f}% of a core ({cpu_s:.2f} CPU s in {wall_s:.1f} s)"
    return row(name, value, f"< {IDLE_CPU_TARGET_PCT:g}%", pct < IDLE_CPU_TARGET_PCT)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=200, help="cycles per rack")
    parser.add_argument("--interval", type=float, default=2.0, help="schedule.interval, seconds")
    parser.add_argument("--racks", type=int, default=2)
    parser.add_argument("--per-rack", type=int, default=5, help="agents per rack")
    args = parser.parse_args(argv)
    if args.cycles <= WARM_CYCLES:
        parser.error(f"--cycles must be more than the {WARM_CYCLES} warm-up cycles")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    lab = uniform_lab(
        args.racks, args.per_rack, provision_seconds=PROVISION_S, pickup_seconds=PICKUP_S
    )
    return 0 if asyncio.run(soak(lab, args)) else 1


if __name__ == "__main__":
    sys.exit(main())
