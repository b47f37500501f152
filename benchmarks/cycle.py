"""Benchmark of check cycles: `rackwatch run-once` over large simulated labs.

The lab is served by this process; rackwatch runs as a process of its own, so the wall time,
CPU and peak memory measured are rackwatch's alone. Both share the machine's cores, so the
lab's own CPU is printed too. rackwatch runs installed as on a lab host (`installed`): without
the test tools, its bytecode compiled.

By default it runs 20 agents (one per rack, for what any run costs), 2,000 agents (20 racks of
100) at two poll intervals, then 10,000 agents (20 racks of 500), 20 s of provisioning each,
and judges issue 11's targets: Testflinger
requests per agent at 2,000 agents (logins not counted), rackwatch's CPU per agent per check,
wall / (T + poll) at 10,000 agents, where T is the lab's job time end to end (pickup, setup,
provisioning and cleanup, as the lab plays it), and the time from rackwatch's start to the lab
receiving the first job at 10,000 agents. Beside each run it prints the floor of its
submissions on this machine (`post_floor`): the same jobs posted to a fresh lab like it with
bare aiohttp, from a process of their own; the summary gives each run's CPU per check as a
multiple of the CPU of one such POST, a figure that the machine's speed cancels out of. Run from
the project root:

    python3 -m uv run python benchmarks/cycle.py
    python3 -m uv run python benchmarks/cycle.py --racks 20 --per-rack 100 --poll-interval 2

(the second: one run of the lab given, with its own figures only).

Exit status: 0 when every target is met, 1 when one is missed or the jobs did not all pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import installed
from rackwatch.simlab import Lab, LabUrls, uniform_lab
from rackwatch.simlab.lab import SimAgent

PEAK_RSS_TARGET_MB = 150.0  # at 2,000 agents
WALL_TARGET_FACTOR = 1.5  # the cycle may take this many times one job's provisioning and a poll
REQUESTS_PER_AGENT_TARGET = 2.1  # Testflinger requests, logins not counted, at 2,000 agents
CPU_PER_AGENT_TARGET_MS = 1.0  # rackwatch's CPU per agent per check
WALL_PER_JOB_TARGET = 1.10  # wall / (T + poll), at 10,000 agents
FIRST_JOB_TARGET_S = 1.0  # from rackwatch's start to the lab receiving the first job
LOGIN_ROUTE = "POST /v1/oauth2/token"
POST_FLOOR = Path(__file__).resolve().parent / "post_floor.py"


@dataclass(frozen=True)
class Measured:
    """What one run-once process did and cost."""

    exit_code: int
    startup_s: tuple[float, float]  # `rackwatch --version`: with bytecode cached, and without
    wall_s: float
    cpu_s: float  # user + sys
    sys_s: float  # of which sys
    peak_rss_mb: float
    lab_cpu_s: float  # this process: the lab, and reading rackwatch's output
    others_cpu_s: float | None  # every other process on the machine, where /proc/stat tells
    requests: Counter[str]
    report: dict[str, Any]  # run-once --json, or {} when it printed none
    stderr: str
    first_job_s: float | None  # from starting rackwatch to the lab storing the first job
    last_job_s: float | None  # and the last

    def testflinger_requests(self) -> int:
        """Requests to Testflinger, logins not counted."""
        return sum(
            count
            for route, count in self.requests.items()
            if route.split(" ", 1)[-1].startswith("/v1") and route != LOGIN_ROUTE
        )


class JobClock:
    """Times each job from its submission to its end (cleanup done), as the lab plays it.

    The lab keeps no timestamps, so this wraps its submit_job and its private _finish step.
    """

    def __init__(self, lab: Lab) -> None:
        self.seconds: list[float] = []
        self.first: float | None = None  # time.perf_counter() of the first job stored
        self.last: float | None = None  # and of the last
        self._started: dict[str, float] = {}
        submit, finish = lab.submit_job, lab._finish

        def timed_submit(body: dict[str, Any], job_id: str | None = None) -> str:
            if self.first is None:
                self.first = time.perf_counter()
            stored = submit(body, job_id)
            self.last = time.perf_counter()
            self._started.setdefault(stored, time.monotonic())
            return stored

        def timed_finish(agent: SimAgent) -> None:
            job = agent.job
            finish(agent)
            if job is not None and job.job_id in self._started:
                self.seconds.append(time.monotonic() - self._started.pop(job.job_id))

        setattr(lab, "submit_job", timed_submit)  # noqa: B010 - mypy forbids assigning a method
        setattr(lab, "_finish", timed_finish)  # noqa: B010


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot; None off Linux."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def write_config(folder: Path, lab: Lab, urls: LabUrls, args: argparse.Namespace) -> Path:
    racks = ", ".join(json.dumps(rack) for rack in lab.rack_names)
    config = folder / "rackwatch.toml"
    config.write_text(
        f"racks = [{racks}]\n"
        f"state_file = {json.dumps(str(folder / 'state.db'))}\n"
        "[maas]\n"
        f"url = {json.dumps(urls.maas)}\n"
        f"api_key = {json.dumps(lab.maas_api_key)}\n"
        "[testflinger]\n"
        f"url = {json.dumps(urls.testflinger)}\n"
        "[check]\n"
        f"poll_interval = {args.poll_interval}\n"
        f"concurrency = {args.concurrency}\n"
        f"job_timeout = {10 * args.provision_seconds}\n"
    )
    return config


def startup_seconds(rackwatch: installed.Installed, env: dict[str, str]) -> float:
    """Wall time of `rackwatch --version`: starting Python and importing rackwatch."""
    started = time.perf_counter()
    command = rackwatch.command("--version")
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


@dataclass(frozen=True)
class Floor:
    """A job posted to each queue of a lab with bare aiohttp, from a process of its own."""

    wall_s: float  # from the first POST to the last answer
    cpu_s: float


async def post_floor(args: argparse.Namespace) -> Floor:
    """Serve a fresh lab like the run's and post a job to each of its queues (`post_floor.py`)."""
    lab = uniform_lab(args.racks, args.per_rack, provision_seconds=args.provision_seconds)
    queues = "\n".join(machine.hostname for rack in lab.racks for machine in rack.machines)
    async with lab.serve() as urls:
        process = await asyncio.create_subprocess_exec(
            str(args.installed.python),
            str(POST_FLOOR),
            urls.testflinger,
            str(args.concurrency),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=installed.environment(),
        )
        stdout, stderr = await process.communicate(queues.encode())
    if process.returncode != 0:
        raise SystemExit(f"post_floor.py exited {process.returncode}: {stderr.decode()}")
    return Floor(**json.loads(stdout))


async def run_once(lab: Lab, clock: JobClock, args: argparse.Namespace) -> Measured:
    """Serve the lab and run one `rackwatch run-once --json` process against it."""
    with tempfile.TemporaryDirectory(prefix="rackwatch-bench-") as scratch:
        env = installed.environment()
        uncached = installed.uncached(env, Path(scratch))
        startup_seconds(args.installed, env)  # reads the compiled modules into the page cache
        startup = (startup_seconds(args.installed, env), startup_seconds(args.installed, uncached))
        async with lab.serve() as urls:
            config = write_config(Path(scratch), lab, urls, args)
            command = ["run-once", "--config", str(config), "--json", "--log-level", "warning"]
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            lab_cpu = time.process_time()
            busy = machine_busy_seconds()
            started = time.perf_counter()
            process = await asyncio.create_subprocess_exec(
                *args.installed.command(*command, profile=args.profile),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=scratch,  # not the project's root, whose rackwatch python -m would import
            )
            stdout, stderr = await process.communicate()
            wall = time.perf_counter() - started
            lab_cpu = time.process_time() - lab_cpu
            busy_end = machine_busy_seconds()
    # The child has been reaped: its usage is now in RUSAGE_CHILDREN (ru_maxrss in KiB on Linux).
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - children.ru_utime - children.ru_stime
    try:
        report = json.loads(stdout) if stdout.strip() else {}
    except ValueError:
        report = {}
    return Measured(
        first_job_s=None if clock.first is None else clock.first - started,
        last_job_s=None if clock.last is None else clock.last - started,
        exit_code=process.returncode if process.returncode is not None else -1,
        startup_s=startup,
        wall_s=wall,
        cpu_s=cpu,
        sys_s=usage.ru_stime - children.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        lab_cpu_s=lab_cpu,
        others_cpu_s=None if busy is None or busy_end is None else busy_end - busy - cpu - lab_cpu,
        requests=Counter(lab.requests),
        report=report,
        stderr=stderr.decode(errors="replace"),
    )


def row(name: str, value: str, target: str, met: bool) -> bool:
    print(f"  {name:<16}{value:<34}{target:<26}{'PASS' if met else 'MISS'}")
    return met


def spread(values: Sequence[float]) -> str:
    if not values:
        return "none measured"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s"


def print_results(
    args: argparse.Namespace, run: Measured, job_seconds: list[float], floor: Floor
) -> bool:
    """Print the figures next to their targets; True when the run is valid and meets them all."""
    agents = args.racks * args.per_rack
    figures = Figures.of(args, run, job_seconds, floor)
    job_s, poll_s = args.provision_seconds, args.poll_interval
    checks = [a for rack in run.report.get("racks", []) for a in rack.get("agents", [])]
    outcomes = Counter(str(check.get("outcome")) for check in checks)
    seen = [float(c["duration_s"]) for c in checks if c.get("duration_s") is not None]
    valid = run.exit_code == 0 and outcomes["passed"] == agents == len(checks)

    wall_target = WALL_TARGET_FACTOR * (job_s + poll_s)  # an end is seen up to a poll late
    total_requests = run.testflinger_requests()
    per_agent = figures.requests_per_agent

    print(
        f"rackwatch run-once: {args.racks} racks x {args.per_rack} = {agents} agents, "
        f"provision {job_s:g} s, pickup {args.pickup_seconds:g} s, poll every {poll_s:g} s, "
        f"concurrency {args.concurrency}"
    )
    print(f"  cores: {os.cpu_count()}, shared by rackwatch and the simulated lab (this process)")
    print(
        f"  startup (rackwatch --version): {run.startup_s[0]:.2f} s with bytecode cached, "
        f"{run.startup_s[1]:.2f} s without (compiling every module)"
    )
    print(f"  exit code {run.exit_code}; outcomes: {dict(outcomes) or 'none'}")
    print(f"  every agent passed: {'yes' if valid else 'NO - the figures below measure nothing'}")
    print(f"  job time: provision {job_s:g} s; lab end-to-end {spread(job_seconds)}")
    print(f"            submitted-to-seen-ended by rackwatch {spread(seen)}")
    print()
    wall, rss = run.wall_s, run.peak_rss_mb
    met = [
        row(
            "wall time",
            f"{wall:.2f} s = {wall / (job_s + poll_s):.2f} x (job + poll)",
            f"<= {wall_target:g} s ({WALL_TARGET_FACTOR:g} x)",
            wall <= wall_target,
        ),
        row(
            "peak RSS", f"{rss:.1f} MB", f"<= {PEAK_RSS_TARGET_MB:g} MB", rss <= PEAK_RSS_TARGET_MB
        ),
        row(
            "requests/agent",
            f"{per_agent:.3f} ({total_requests} to Testflinger)",
            f"<= {REQUESTS_PER_AGENT_TARGET:g} (logins not counted)",
            per_agent <= REQUESTS_PER_AGENT_TARGET,
        ),
        row(
            "CPU/agent",
            f"{figures.cpu_ms_per_agent:.3f} ms (user+sys)",
            f"<= {CPU_PER_AGENT_TARGET_MS:g} ms",
            figures.cpu_ms_per_agent <= CPU_PER_AGENT_TARGET_MS,
        ),
    ]
    if figures.wall_per_job is not None:
        print(
            f"  {'wall/(T+poll)':<16}{figures.wall_per_job:.3f}"
            f" (T = {figures.lab_job_s:.2f} s, the lab's median job end to end)"
        )
    if run.first_job_s is not None:
        print(f"  {'first job':<16}{run.first_job_s:.2f} s after rackwatch started", end="")
        print("" if run.last_job_s is None else f"; the last {run.last_job_s:.2f} s after")
    print(
        f"  {'POSTs alone':<16}{floor.wall_s:.2f} s, {1e6 * floor.cpu_s / agents:.0f} µs of CPU each"
        " (the same jobs, bare aiohttp, a process of its own)"
    )
    if job_seconds:
        # The lab's job also picks up, sets up and cleans up around the provisioning: measured
        # against that whole job, the same figures read differently. Shown, not judged.
        lab_job = statistics.median(job_seconds)
        print(
            f"  {'vs lab job':<16}{lab_job:.2f} s end to end: wall = {wall / lab_job:.2f} x;"
            f" requests target 2 + {lab_job:.2f}/{poll_s:g} + 1 = {2 + lab_job / poll_s + 1:.2f}"
        )
    print(
        f"  {'CPU (user+sys)':<16}{run.cpu_s:.2f} s = {1000 * run.cpu_s / agents:.2f} ms/agent"
        f" (sys {run.sys_s:.2f} s)   (the lab's process: {run.lab_cpu_s:.2f} s)"
    )
    if run.others_cpu_s is not None:
        print(f"  other processes used {max(0.0, run.others_cpu_s):.2f} CPU s meanwhile (noise)")
    print()
    print("  requests by route:")
    for route, count in run.requests.most_common():
        print(f"    {count:>7}  {count / agents:>6.3f}/agent  {route}")
    if run.exit_code != 0 or not valid:
        print("\nrackwatch's stderr (last lines):")
        print("\n".join(run.stderr.strip().splitlines()[-20:]))
    return valid and all(met)


@dataclass(frozen=True)
class Figures:
    """One run's figures that issue 11 sets targets for."""

    agents: int
    poll_s: float
    requests_per_agent: float  # to Testflinger, logins not counted
    cpu_s: float
    cpu_ms_per_agent: float
    lab_job_s: float | None  # T: the lab's median job, submission to cleanup done
    wall_per_job: float | None  # wall / (T + poll)
    first_job_s: float | None
    last_job_s: float | None
    floor: Floor  # the same jobs posted alone
    valid: bool  # every agent passed

    @classmethod
    def of(
        cls, args: argparse.Namespace, run: Measured, job_seconds: list[float], floor: Floor
    ) -> Figures:
        agents = args.racks * args.per_rack
        checks = [a for rack in run.report.get("racks", []) for a in rack.get("agents", [])]
        passed = sum(1 for check in checks if check.get("outcome") == "passed")
        lab_job = statistics.median(job_seconds) if job_seconds else None
        return cls(
            agents=agents,
            poll_s=args.poll_interval,
            requests_per_agent=run.testflinger_requests() / agents,
            cpu_s=run.cpu_s,
            cpu_ms_per_agent=1000 * run.cpu_s / agents,
            lab_job_s=lab_job,
            wall_per_job=None if lab_job is None else run.wall_s / (lab_job + args.poll_interval),
            first_job_s=run.first_job_s,
            last_job_s=run.last_job_s,
            floor=floor,
            valid=run.exit_code == 0 and passed == agents == len(checks),
        )


def measure(args: argparse.Namespace) -> tuple[bool, Figures]:
    """One run on a uniform lab as `args` describe it, its figures printed."""
    lab = uniform_lab(
        args.racks,
        args.per_rack,
        provision_seconds=args.provision_seconds,
        pickup_seconds=args.pickup_seconds,
    )
    clock = JobClock(lab)
    run = asyncio.run(run_once(lab, clock, args))
    floor = asyncio.run(post_floor(args))
    met = print_results(args, run, clock.seconds, floor)
    return met, Figures.of(args, run, clock.seconds, floor)


def judge(name: str, value: float | None, target: float, unit: str = "") -> bool:
    """One line of the summary: the figure, its target, and whether it is met."""
    met = value is not None and value <= target
    shown = "not measured" if value is None else f"{value:.3f}{unit}"
    print(f"  {name:<52}{shown:<16}<= {target:g}{unit:<6}{'PASS' if met else 'MISS'}")
    return met


def suite(args: argparse.Namespace) -> int:
    """2,000 agents at each poll interval, then 10,000 agents; issue 11's targets judged.

    First a run of 20 agents (one per rack) measures what a run costs whatever its size
    (starting, importing, the survey and the cycle's own work); each run's CPU per check beyond
    that is printed beside the target, which is judged on the whole run.
    """
    runs: list[tuple[bool, Figures]] = []
    first = args.poll_intervals[0]
    for agents, poll in [(20, first), *((2000, p) for p in args.poll_intervals), (10000, first)]:
        one = argparse.Namespace(**vars(args))
        one.racks, one.per_rack, one.poll_interval = 20, agents // 20, poll
        if agents == 20:
            print("what any run costs (the targets below are for large labs, not this one):")
        runs.append(measure(one))
        print()
    fixed, small, large = runs[0][1], [f for _, f in runs[1:-1]], runs[-1][1]
    runs = runs[1:]
    print(f"issue 11 targets ({os.cpu_count()} cores shared by rackwatch and the lab):")
    met = [all(ok for ok, _ in runs), all(f.valid for _, f in runs)]
    for f in small:
        met.append(
            judge(
                f"Testflinger requests/agent, 2,000 agents, poll {f.poll_s:g} s",
                f.requests_per_agent,
                REQUESTS_PER_AGENT_TARGET,
            )
        )
    for f in [*small, large]:
        met.append(
            judge(
                f"rackwatch CPU/agent/check, {f.agents:,} agents, poll {f.poll_s:g} s",
                f.cpu_ms_per_agent,
                CPU_PER_AGENT_TARGET_MS,
                " ms",
            )
        )
        beyond = 1000 * (f.cpu_s - fixed.cpu_s) / (f.agents - fixed.agents)
        print(f"    {'of which each check beyond a run of 20 agents':<50}{beyond:.3f} ms")
        # The machine's speed cancels out of this one: the same POST, with nothing else.
        per_post = 1000 * f.floor.cpu_s / f.agents
        print(
            f"    {'the whole run, in bare aiohttp POSTs of its jobs':<50}"
            f"{f.cpu_ms_per_agent / per_post:.1f} x ({per_post:.3f} ms each)"
        )
    print(f"    (the run of 20 agents: {fixed.cpu_s:.2f} s of CPU)")
    t = f"T {large.lab_job_s:.2f} s" if large.lab_job_s is not None else "T unknown"
    met.append(
        judge(
            f"wall/(T+poll), 10,000 agents, {t}, poll {large.poll_s:g} s",
            large.wall_per_job,
            WALL_PER_JOB_TARGET,
        )
    )
    if large.last_job_s is not None:
        print(
            f"    {'the last job out':<50}{large.last_job_s:.2f} s after rackwatch started;"
            f" the same jobs posted alone take {large.floor.wall_s:.2f} s (bare aiohttp)"
        )
    met.append(
        judge("first job after start, 10,000 agents", large.first_job_s, FIRST_JOB_TARGET_S, " s")
    )
    return 0 if all(met) else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--racks", type=int, help="one run of this many racks (default: the suite)")
    parser.add_argument("--per-rack", type=int, default=100, help="agents per rack")
    parser.add_argument("--provision-seconds", type=float, default=20.0, help="the job time")
    parser.add_argument("--pickup-seconds", type=float, default=0.2, help="also setup, cleanup")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="check.poll_interval")
    parser.add_argument(
        "--poll-intervals",
        type=float,
        nargs="+",
        default=[2.0, 10.0],
        help="the suite's poll intervals at 2,000 agents; the first is also the 10,000 agents'",
    )
    parser.add_argument("--concurrency", type=int, default=50, help="check.concurrency")
    parser.add_argument(
        "--profile", metavar="FILE", help="run rackwatch under cProfile, its stats written to FILE"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rackwatch-installed-") as folder:
        args.installed = installed.build(Path(folder))
        if args.racks is None:
            return suite(args)
        met, _ = measure(args)
        return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
