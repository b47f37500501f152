"""The floor of a check cycle's submissions: a job posted to each queue with bare aiohttp.

`cycle.py` runs it as a process of its own, with the Python of the installed rackwatch,
against a fresh simulated lab that its own process serves, as it serves rackwatch's: what the
POSTs alone cost on this machine, with none of rackwatch's own work (no state file, no MAAS, no
tracking). It prints one line of JSON: the wall time from the first POST to the last answer,
and the process's CPU over that time.

    python benchmarks/post_floor.py TESTFLINGER_URL CONCURRENCY < queues  # one a line
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

import aiohttp

JOB = {"provision_data": {"distro": "noble"}, "tags": ["rackwatch"]}  # rackwatch's default


async def post_all(base: str, queues: list[str], concurrency: int) -> dict[str, float]:
    slots = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def post(queue: str) -> None:
            job = {**JOB, "job_queue": queue, "job_id": str(uuid.uuid4())}
            async with slots, session.post(f"{base}v1/job", json=job) as answer:
                answer.raise_for_status()
                await answer.json()

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(post(queue) for queue in queues))
        return {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}


def main(argv: list[str]) -> int:
    base, concurrency = argv[0], int(argv[1])
    queues = sys.stdin.read().split()
    print(json.dumps(asyncio.run(post_all(base, queues, concurrency))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
