#!/usr/bin/env python3
"""Hello, Golem: one task that asks a provider for its date.

    python examples/hello.py

Runs on the embedded local network by default (no daemon, no setup); the worker is the one
from Golem's documentation, unchanged.
"""

import asyncio
from typing import AsyncIterable

from workgen import Golem, Task, WorkContext, vm


async def worker(context: WorkContext, tasks: AsyncIterable[Task]):
    async for task in tasks:
        script = context.new_script()
        future_result = script.run("/bin/sh", "-c", "date")
        yield script
        task.accept_result(result=await future_result)


async def main() -> None:
    package = await vm.repo(min_mem_gib=0.5, min_storage_gib=2.0)
    async with Golem(budget=1.0) as golem:
        async for completed in golem.execute_tasks(worker, [Task(data=None)], payload=package):
            print(completed.result.stdout, end="")


if __name__ == "__main__":
    asyncio.run(main())
