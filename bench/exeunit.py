"""Benchmark: commands per second through one sandboxed activity vs. raw asyncio subprocesses.

Runs N commands ``/bin/sh -c date`` with the same concurrency two ways, in one process and one
run: through one execution unit (each command its own one-command batch, output captured, in
the activity's bubblewrap sandbox) and through ``asyncio.create_subprocess_exec`` with piped
output. Prints both rates and their ratio (target: sandboxed >= raw).

    .venv/bin/python bench/exeunit.py [-n 2000] [-c 8]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from workgen.protocol.exescript import AtEnd, Capture, Deploy, Run, Start
from workgen.provider.exeunit.unit import ExeUnit

COMMAND = ("/bin/sh", "-c", "date")


async def through_exeunit(n: int, concurrency: int) -> float:
    async with ExeUnit() as unit:
        setup = unit.exec([Deploy(), Start()])
        await unit.batch(setup).finished.wait()
        run = Run(COMMAND[0], COMMAND[1:], capture=Capture(stdout=AtEnd(), stderr=AtEnd()))
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                batch_id = unit.exec([run])
                batch = unit.batch(batch_id)
                await batch.finished.wait()
                assert batch.results[0].ok, batch.results

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(one())
        return n / (time.perf_counter() - start)


async def through_raw_asyncio(n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec(
                *COMMAND, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            await proc.communicate()
            assert proc.returncode == 0

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(one())
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="commands per measurement")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    args = parser.parse_args()
    sandboxed, raw = [], []
    for _ in range(args.rounds):  # alternate, so drift on a shared machine hits both alike
        raw.append(asyncio.run(through_raw_asyncio(args.n, args.concurrency)))
        sandboxed.append(asyncio.run(through_exeunit(args.n, args.concurrency)))
    best_s, best_r = max(sandboxed), max(raw)
    print(f"commands: {args.n} x {args.rounds} rounds, concurrency {args.concurrency}")
    print(f"raw asyncio subprocess : {best_r:8.1f} commands/s  (rounds: "
          + ", ".join(f"{r:.0f}" for r in raw) + ")")
    print(f"sandboxed exe unit     : {best_s:8.1f} commands/s  (rounds: "
          + ", ".join(f"{r:.0f}" for r in sandboxed) + ")")
    print(f"ratio sandboxed / raw  : {best_s / best_r:8.2f}  (target >= 1.00)")


if __name__ == "__main__":
    main()
