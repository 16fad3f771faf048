"""Another workgen user on the same machine: runs short jobs on local networks of its own, one
after another, so sandboxes of its own come and go, until it is stopped (SIGTERM)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

from workgen import Golem, LocalNetwork, Task, WorkContext, vm
from workgen._aio import Signalled, until_signalled


async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
    async for task in tasks:
        script = context.new_script()
        script.run("/bin/sleep", "0.2")
        yield script
        task.accept_result(None)


async def main() -> None:
    rounds = 0
    while True:
        async with Golem(budget=1, backend=LocalNetwork(2),
                         event_consumer=lambda e: None) as golem:
            async for _ in golem.execute_tasks(worker, [Task(i) for i in range(4)],
                                               payload=await vm.repo(), max_workers=2):
                pass
        rounds += 1
        if rounds == 1:
            print("running", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(until_signalled(main()))
    except Signalled as stop:
        sys.exit(stop.exit_code)
