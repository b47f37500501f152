"""Kill test of the daemon: SIGKILL `rackwatch run` at random moments, then count what went wrong.

The lab is served by this process and carries out job submissions one at a time, slowly, and
even after the client has given up (a `LATE` fault with `serial`), so that kills land before,
during and after POSTs whose answers never arrive. The daemon runs as a process of its own; it
is killed `--kills` times at random moments, started again each time, and at the end left to
finish (then stopped with SIGTERM). Three figures, each of which must be 0:

    duplicates   jobs stored while their queue already held an unfinished job, plus job ids
                 stored more than once
    lost         agents never checked: no passed check of theirs in the state file
    untracked    jobs the lab stored that the state file does not know, or knows without an
                 outcome once the daemon has finished

Run from the project root:

    python3 -m uv run python benchmarks/kill.py                # 20 kills: about a minute
    python3 -m uv run python benchmarks/kill.py --kills 5 --seed 7

Exit status: 0 when all three figures are 0 and the daemon's last run exited 0; else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rackwatch.simlab import Fault, FaultKind, Lab, LabUrls, uniform_lab

RACKS, PER_RACK = 2, 4
PROVISION_S, PICKUP_S = 0.3, 0.05
POST_DELAY_S = 0.25  # each POST is stored this long after the previous one
CLIENT_TIMEOUT_S = 0.6  # so that most POSTs of a cycle get no answer in time
FINISH_TIMEOUT_S = 60.0
DROPPED_PREFIXES = ("RACKWATCH_", "MAAS_", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_")
# A job is unfinished until it ends "complete"; a cancelled job is unfinished while an agent
# still runs it (Testflinger cannot stop a provisioning).
_ENDED = frozenset({"complete", "completed"})


@dataclass(frozen=True)
class Figures:
    kills: int
    jobs: int
    duplicates: int
    lost: int
    untracked: int
    last_exit: int

    @property
    def ok(self) -> bool:
        return self.duplicates == self.lost == self.untracked == self.last_exit == 0


def write_config(path: Path, lab: Lab, urls: LabUrls, state_file: Path) -> None:
    path.write_text(f"""
racks = {json.dumps(lab.rack_names)}
state_file = "{state_file}"
[schedule]
interval = "2s"
jitter = 0
[maas]
url = "{urls.maas}"
api_key = "{lab.maas_api_key}"
[testflinger]
url = "{urls.testflinger}"
timeout = "{CLIENT_TIMEOUT_S}s"
[check]
poll_interval = 0.1
job_timeout = 15
submit_grace = "4s"
""")


def count_duplicates(lab: Lab) -> list[str]:
    """Make the lab note every job stored while its queue already held an unfinished one."""
    seen: list[str] = []
    store = lab.submit_job

    def submit_job(body: dict[str, Any], job_id: str | None = None) -> str:
        queue = body["job_queue"]
        for agent in lab.agents_serving(queue):
            if agent.job is not None and agent.job.queue == queue:
                seen.append(f"{queue}: stored while {agent.job.job_id} runs")
        for earlier in lab.submissions_for(queue):
            for job in lab.jobs(str(earlier.get("job_id"))):
                if job.state == "waiting":
                    seen.append(f"{queue}: stored while {job.job_id} waits")
        return store(body, job_id)

    lab.submit_job = submit_job  # type: ignore[method-assign]
    return seen


async def start(config: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_PREFIXES)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rackwatch",
        "run",
        "--config",
        str(config),
        "--log-format",
        "json",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )


def checks(state_file: Path) -> list[sqlite3.Row]:
    try:
        with sqlite3.connect(f"file:{state_file}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            return db.execute("SELECT agent, job_id, outcome FROM checks").fetchall()
    except sqlite3.Error:
        return []  # not created yet, or mid-migration


def finished_cycles(state_file: Path) -> int:
    try:
        with sqlite3.connect(f"file:{state_file}?mode=ro", uri=True) as db:
            query = "SELECT count(*) FROM cycles WHERE finished_at IS NOT NULL"
            return int(db.execute(query).fetchone()[0])
    except sqlite3.Error:
        return 0


def settled(lab: Lab, state_file: Path) -> bool:
    """Every agent passed at least once, nothing is unfinished, and the lab is idle."""
    rows = checks(state_file)
    passed = {row["agent"] for row in rows if row["outcome"] == "passed"}
    unfinished = any(row["outcome"] is None for row in rows)
    busy = any(agent.job is not None for agent in lab.agents.values())
    return passed >= set(lab.agents) and not unfinished and not busy


async def run(kills: int, seed: int, scratch: Path) -> Figures:
    rng = random.Random(seed)  # noqa: S311 - repeatable kill times, no secret
    lab = uniform_lab(RACKS, PER_RACK, provision_seconds=PROVISION_S, pickup_seconds=PICKUP_S)
    slow = Fault(FaultKind.LATE, "testflinger", "/v1/job", "POST", None, delay=POST_DELAY_S)
    lab.inject(replace(slow, serial=True))
    duplicates = count_duplicates(lab)
    config, state_file = scratch / "rackwatch.toml", scratch / "state.db"
    async with lab.serve() as urls:
        write_config(config, lab, urls, state_file)
        for _ in range(kills):
            process = await start(config)
            await asyncio.sleep(rng.uniform(0.3, 3.0))
            process.send_signal(signal.SIGKILL)
            await process.wait()
        # The last run finishes a cycle of each rack of its own before it is stopped.
        before = finished_cycles(state_file)
        process = await start(config)
        try:
            async with asyncio.timeout(FINISH_TIMEOUT_S):
                while not (  # noqa: ASYNC110 - polling the effects of another process
                    finished_cycles(state_file) >= before + RACKS and settled(lab, state_file)
                ):
                    await asyncio.sleep(0.1)
        except TimeoutError:
            pass  # the figures say what is missing
        process.send_signal(signal.SIGTERM)
        last_exit = await asyncio.wait_for(process.wait(), timeout=20)
        stored = [
            job
            for job_id in {str(b["job_id"]) for b in lab.submissions}
            for job in lab.jobs(job_id)
        ]

    rows = checks(state_file)
    recorded = {row["job_id"]: row["outcome"] for row in rows if row["job_id"]}
    ids = [job.job_id for job in stored]
    twice = len(ids) - len(set(ids))
    passed = {row["agent"] for row in rows if row["outcome"] == "passed"}
    untracked = sum(1 for job_id in set(ids) if recorded.get(job_id) is None)
    return Figures(
        kills=kills,
        jobs=len(ids),
        duplicates=len(duplicates) + twice,
        lost=len(set(lab.agents) - passed),
        untracked=untracked,
        last_exit=last_exit,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        figures = asyncio.run(run(args.kills, args.seed, Path(scratch)))
    print(
        f"{figures.kills} SIGKILLs, {figures.jobs} jobs stored: "
        f"duplicates {figures.duplicates}, lost {figures.lost}, untracked {figures.untracked}; "
        f"last run exited {figures.last_exit}"
    )
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
