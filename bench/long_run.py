"""Benchmark: memory over a long job. N tasks of ``/bin/true`` through ``execute_tasks`` on the
local network (P providers, the default progress display writing to nowhere), with the
process's resident memory (RSS) at every fifth of the run, next to the RSS of the same process
once Golem has started and before any task ran (the baseline). Target: flat after warm-up,
at most 250 MiB at 100,000 tasks.

    .venv/bin/python bench/long_run.py [-n 100000] [--providers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from workgen import Golem, LocalNetwork, ProgressDisplay, Task, WorkContext, vm


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
    async for task in tasks:
        script = context.new_script()
        script.run("/bin/true")
        yield script
        task.accept_result(None)


async def main(n: int, providers: int) -> None:
    marks = {n * k // 5 for k in range(1, 6)}
    rows: list[tuple[int, float, float]] = []
    started = time.perf_counter()

    def data() -> Iterator[int]:
        for i in range(1, n + 1):
            yield i
            if i in marks:
                rows.append((i, rss_mib(), time.perf_counter() - started))

    display = ProgressDisplay(io.StringIO(), live=False)
    async with Golem(budget=1000, backend=LocalNetwork(providers=providers),
                     event_consumer=display) as golem:
        baseline = rss_mib()
        started = time.perf_counter()
        async for _ in golem.execute_tasks(worker, data(), payload=await vm.repo(),
                                           max_workers=providers):
            pass
    print(f"tasks: {n}, providers: {providers}")
    print(f"baseline RSS (Golem started, no task yet): {baseline:7.1f} MiB")
    for i, rss, at in rows:
        print(f"RSS at {i:>8} tasks: {rss:7.1f} MiB  (x{rss / baseline:.2f} baseline; "
              f"{i / at:6.0f} tasks/s so far)")
    if len(rows) >= 3:
        (i1, r1, _), (i2, r2, _) = rows[1], rows[-1]
        print(f"growth after the first two fifths: {(r2 - r1) * 1024 * 1024 / (i2 - i1):.1f} "
              "bytes per task")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--providers", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.providers))
