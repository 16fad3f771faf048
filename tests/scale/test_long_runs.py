"""A long run holds flat memory: what a finished task or batch leaves behind is released, on the
requestor's side and the provider's (the local network runs both in this process, so the heap
measured here is all of it)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from workgen import Golem, LocalNetwork, Task, WorkContext, vm
from workgen.requestor.display import RunSummary

WARM_UP = 1100  # past every bounded record (1024 ids at most)
MEASURED = 2000
# What may seem to remain per task once warm: far below the 5.6 KiB a task used to leave
# behind. Not zero: a bounded record that keeps its newest entries (the run summary's last
# finished task ids) fills its hash table for a while before the table is rebuilt, a
# fluctuation of some kilobytes that the long window spreads thin.
ALLOWED_PER_TASK = 64


async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
    async for task in tasks:
        script = context.new_script()
        script.run("/bin/true")
        yield script
        task.accept_result(None)


def _heap() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.watchdog(180)
@pytest.mark.parametrize("summary", [False, True], ids=["engine", "with-run-summary"])
async def test_the_heap_stops_growing_over_a_long_job(summary: bool) -> None:
    checkpoints: dict[int, int] = {}

    def data() -> Iterator[Task[Any, Any]]:
        for i in range(WARM_UP + MEASURED + 1):
            if i in (WARM_UP, WARM_UP + MEASURED):
                checkpoints[i] = _heap()
            yield Task(i)

    tracemalloc.start()
    try:
        consumer = RunSummary() if summary else (lambda e: None)
        async with Golem(budget=10, backend=LocalNetwork(1),
                         event_consumer=consumer) as golem:
            done = 0
            async for _ in golem.execute_tasks(worker, data(), payload=await vm.repo(),
                                               max_workers=1):
                done += 1
    finally:
        tracemalloc.stop()
    assert done == WARM_UP + MEASURED + 1
    growth = checkpoints[WARM_UP + MEASURED] - checkpoints[WARM_UP]
    assert growth < ALLOWED_PER_TASK * MEASURED, (
        f"the heap grew {growth} bytes over {MEASURED} tasks ({growth / MEASURED:.0f} per task)")
