#!/usr/bin/env python3
"""Judging results: a worker that rejects bad results for a retry and handles failing commands.

    python examples/retries.py

Each task asks for the square of a number, computed by ``expr`` on a provider. The worker checks
every answer: a command that fails is caught at the ``yield`` and the task is rejected (for good,
the input is bad); an answer that looks wrong is rejected with ``retry=True`` and runs again on
another try. Tasks that never succeed are reported at the end, not lost.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from workgen import CommandExecutionError, Golem, Task, WorkContext, vm

# The answer for 7 comes out wrong on its first try: the worker notices and asks again.
FLAKY = "7"


async def worker(context: WorkContext, tasks: AsyncIterator[Task]):
    async for task in tasks:
        number = task.data
        script = context.new_script(timeout=30)
        if number == FLAKY and task.attempts == 1:
            answer = script.run("/bin/sh", "-c", f"expr {number} + {number}")  # a wrong answer
        else:
            answer = script.run("/usr/bin/expr", number, "*", number)
        try:
            yield script
        except CommandExecutionError as error:
            # expr fails on input that is not a number: retrying would not help.
            task.reject_result(f"bad input {number!r}: {error.result.stderr.strip()}")
            continue
        value = int((await answer).stdout)
        if value != int(number) ** 2:
            task.reject_result(f"{number}^2 came out as {value}", retry=True)
            continue
        task.accept_result(result=value)


async def main() -> None:
    package = await vm.repo(min_mem_gib=0.5)
    data = ["2", "3", FLAKY, "twelve", "11"]
    async with Golem(budget=1.0) as golem:
        async for task in golem.execute_tasks(worker, [Task(d) for d in data], payload=package,
                                              max_retries=2):
            print(f"{task.data}^2 = {task.result} (attempts: {task.attempts})")
        for task in golem.failed_tasks:
            print(f"failed: {task.data!r}: {task.reason}")


if __name__ == "__main__":
    asyncio.run(main())
