"""Benchmark of the web pages on a state file with a year of history for 2,000 agents.

It writes the year with `benchmarks.year.build_year` (2,000 agents in 20 racks, 4 checks a day
for 365 days: 2.9 M checks), serves the pages from it as `rackwatch web` does (the file opened
read-only for each request) on 127.0.0.1, and times each page from request to the last byte,
over HTTP: first on the whole year, unpruned, then pruned as the daemon prunes it
(`history.keep_checks`, 90 days). The client runs in the same process, so the CPU time printed
beside the wall time is the server's and the client's together.

Run from the project root:

    python3 -m uv run python benchmarks/web.py               # 2,000 agents, 365 days
    python3 -m uv run python benchmarks/web.py --agents 200  # a smaller file, quicker
    python3 -m uv run python benchmarks/web.py --copy YEAR.db # a copy of a year built before

Exit status: 0 when every page's median is under the target, 1 when one is not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from benchmarks.year import NOW, Built, build_year
from rackwatch.config import StateSettings
from rackwatch.retention import prune
from rackwatch.store import Store
from rackwatch.web import StateSource, pages_app

TARGET_MS = 100.0  # each page, median; "well under" is the aim
RUNS = 20


@dataclass(frozen=True)
class Timing:
    path: str
    first_ms: float  # the first request: the status read from the file, nothing cached yet
    wall_ms: list[float]
    cpu_ms: list[float]
    size: int

    def line(self) -> str:
        wall, cpu = sorted(self.wall_ms), sorted(self.cpu_ms)
        return (
            f"{self.path:<26} first {self.first_ms:6.1f} ms; then wall median"
            f" {statistics.median(wall):6.1f} ms, max {wall[-1]:6.1f} ms;"
            f" CPU median {statistics.median(cpu):7.1f} ms; {self.size / 1024:7.1f} KiB"
        )


async def time_pages(built: Built, paths: list[str]) -> list[Timing]:
    settings = StateSettings(racks=built.racks, state_file=built.path)
    server = TestServer(pages_app(StateSource(built.path), lambda: settings), host="127.0.0.1")
    await server.start_server()
    timings = []
    try:
        async with aiohttp.ClientSession() as session:
            for path in paths:
                url = str(server.make_url(path))
                walls, cpus, size, first = [], [], 0, 0.0
                for run in range(RUNS + 2):  # the first two warm the caches
                    wall, cpu = time.perf_counter(), time.process_time()
                    async with session.get(url) as response:
                        body = await response.read()
                        assert response.status == 200, (path, response.status, body[:200])
                    if run == 0:
                        first = (time.perf_counter() - wall) * 1000
                    if run >= 2:
                        walls.append((time.perf_counter() - wall) * 1000)
                        cpus.append((time.process_time() - cpu) * 1000)
                    size = len(body)
                timings.append(Timing(path, first, walls, cpus, size))
    finally:
        await server.close()
    return timings


def report(title: str, timings: list[Timing]) -> bool:
    load = ", ".join(f"{figure:.1f}" for figure in os.getloadavg())
    print(f"\n{title} (load average {load} on {os.cpu_count()} cores)")
    for timing in timings:
        print(f"  {timing.line()}")
    missed = [t.path for t in timings if statistics.median(t.wall_ms) >= TARGET_MS]
    print(f"  target: each page's median under {TARGET_MS:.0f} ms:", "missed" if missed else "met")
    return not missed


def _copied(year: Path, path: Path) -> Built:
    """A copy of a state file that build_year wrote (2,000 agents in 20 racks), as Built."""
    with sqlite3.connect(f"file:{year}?mode=ro", uri=True) as source, sqlite3.connect(path) as copy:
        source.backup(copy)
    with sqlite3.connect(path) as db:
        racks = [row[0] for row in db.execute("SELECT DISTINCT rack FROM cycles ORDER BY rack")]
        agents = [row[0] for row in db.execute("SELECT agent FROM health ORDER BY agent")]
        checks = db.execute("SELECT max(id) FROM checks").fetchone()[0]
        cycles = db.execute("SELECT count(*) FROM cycles").fetchone()[0]
    return Built(path, racks, agents, checks, cycles, NOW)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--racks", type=int, default=20)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument(
        "--copy", type=Path, metavar="YEAR.db", help="a copy of this unpruned build_year file"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rackwatch-web-bench-") as directory:
        began = time.perf_counter()
        path = Path(directory) / "state.db"
        if args.copy is not None:
            built = _copied(args.copy, path)
        else:
            built = build_year(path, agents=args.agents, racks=args.racks, days=args.days)
        print(
            f"built {built.path.stat().st_size / 2**20:,.0f} MiB: {len(built.agents):,} agents in"
            f" {len(built.racks)} racks, {built.checks:,} checks, {built.cycles:,} cycles,"
            f" in {time.perf_counter() - began:.0f} s"
        )
        agent = built.agents[len(built.agents) // 2]
        paths = [
            "/",
            "/?person=1",
            f"/racks/{built.racks[len(built.racks) // 2]}",
            f"/agents/{agent}",
            "/api/status",
            f"/api/agents/{agent}",
        ]
        ok = report(f"{args.days} days of checks, unpruned:", await time_pages(built, paths))
        with Store.open(built.path) as store:
            pruned = await prune(store, now=built.now, keep_checks=timedelta(days=90))
        print(f"\npruned {pruned.checks:,} checks older than 90 days in {pruned.seconds:.0f} s")
        ok = (
            report("pruned as the daemon keeps it (90 days):", await time_pages(built, paths))
            and ok
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
