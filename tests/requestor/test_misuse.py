"""A requestor's mistakes end in clear errors, never in a hang: a worker that is not an async
generator, one that takes tasks and never settles them, a script yielded twice, numbers and a
strategy that make no sense. On the local network (the checks are the requestor's own)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from workgen import Golem, Task, WorkContext, vm
from workgen.backends.local import LocalNetwork


async def run(worker: Any, count: int = 2, **options: Any
              ) -> tuple[list[Task[Any, Any]], list[Task[Any, Any]], BaseException | None]:
    """(accepted, failed, error) of a job of ``count`` tasks."""
    accepted: list[Task[Any, Any]] = []
    error: BaseException | None = None
    async with Golem(budget=1, backend=LocalNetwork(1), event_consumer=lambda e: None) as g:
        try:
            async for task in g.execute_tasks(worker, [Task(i) for i in range(count)],
                                              payload=await vm.repo(), **options):
                accepted.append(task)
        except Exception as exc:
            error = exc
        return accepted, list(g.failed_tasks), error


async def test_an_async_def_worker_without_yield_is_a_type_error_at_once() -> None:
    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> None:
        async for task in tasks:
            task.accept_result(None)

    accepted, failed, error = await run(worker)
    assert isinstance(error, TypeError) and "without 'yield'" in str(error)
    assert accepted == [] and failed == []  # nothing ran: the job never started


async def test_a_plain_function_worker_fails_the_job_with_every_task_accounted_for() -> None:
    def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> None:
        return None

    accepted, failed, error = await run(worker)
    assert isinstance(error, TypeError) and "not an async generator" in str(error)
    assert accepted == [] and sorted(t.data for t in failed) == [0, 1]
    assert all("not an async generator" in (t.reason or "") for t in failed)


async def test_tasks_a_worker_takes_and_never_settles_fail_with_a_reason() -> None:
    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for _ in tasks:
            pass  # takes every task, settles none
        yield context.new_script()

    accepted, failed, error = await run(worker, max_retries=1)
    assert error is None and accepted == []
    assert sorted(t.data for t in failed) == [0, 1]
    assert all("without accepting or rejecting" in (t.reason or "") for t in failed)


async def test_a_worker_may_take_several_tasks_before_settling_them() -> None:
    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        taken = [task async for task in tasks]  # all of them, then one script for them all
        script = context.new_script()
        outputs = [script.run("/bin/echo", str(task.data)) for task in taken]
        yield script
        for task, output in zip(taken, outputs, strict=True):
            task.accept_result((await output).stdout)

    accepted, failed, error = await run(worker, count=3)
    assert error is None and failed == []
    assert sorted(t.result for t in accepted) == ["0\n", "1\n", "2\n"]


async def test_yielding_a_sent_script_again_says_so() -> None:
    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script()
            output = script.run("/bin/echo", "once")
            yield script
            try:
                yield script
            except RuntimeError as exc:
                task.accept_result(f"{(await output).stdout.strip()}: {exc}")

    accepted, failed, error = await run(worker, count=1)
    assert error is None and failed == []
    (task,) = accepted
    assert task.result.startswith("once: ") and "already sent" in task.result


@pytest.mark.parametrize("options", [
    {"timeout": math.nan}, {"timeout": -1}, {"timeout": math.inf}, {"timeout": "60"},
    {"max_retries": math.nan}, {"max_retries": -1}, {"max_retries": 1.5},
    {"max_workers": 0}, {"max_workers": 2.5}, {"max_workers": True},
])
async def test_numbers_that_make_no_sense_are_refused_up_front(options: dict[str, Any]) -> None:
    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            yield context.new_script()
            task.accept_result(None)

    accepted, failed, error = await run(worker, **options)
    (name,) = options
    assert isinstance(error, ValueError) and name in str(error)
    assert accepted == [] and failed == []


@pytest.mark.parametrize("strategy", ["cheap", object(), 42])
def test_a_strategy_that_is_not_one_is_refused(strategy: Any) -> None:
    with pytest.raises(TypeError, match="strategy must be a MarketStrategy"):
        Golem(budget=1, strategy=strategy)


@pytest.mark.parametrize("value", [math.nan, 0, -5, "30"])
def test_an_invoice_timeout_that_makes_no_sense_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="invoice_timeout"):
        Golem(budget=1, invoice_timeout=value)

