"""The budget's reservations and the task queue, alone."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from workgen import Task, TaskStatus
from workgen.protocol.pricing import LinearPricing
from workgen.requestor.budget import Budget
from workgen.requestor.queue import TaskQueue

PER_SECOND = LinearPricing.from_prices({"golem.usage.duration_sec": 0.01}, fixed=0.1)


def test_reservations_never_exceed_the_budget_and_closing_gives_back_the_rest() -> None:
    budget = Budget(Decimal("1"))
    first = budget.open(PER_SECOND)
    second = budget.open(PER_SECOND)
    assert first is not None and second is not None
    ahead = 10.0
    while first.ensure(ahead):  # grow until the budget says no
        ahead *= 2
    assert budget.reserved <= budget.total
    assert not second.ensure(10_000)  # nothing left for a long stretch
    assert budget.reserved <= budget.total
    first.close(Decimal("0.25"))
    assert budget.paid == Decimal("0.25")
    assert budget.reserved == Decimal("0.25") + second.reserved
    first.close(Decimal("0.5"))  # a second close changes nothing
    assert budget.paid == Decimal("0.25")


def test_an_agreement_the_budget_cannot_start_gets_no_reservation() -> None:
    budget = Budget(Decimal("0.05"))
    assert budget.open(PER_SECOND) is None  # the fixed price alone is over it
    assert budget.reserved == 0


def test_the_deadline_is_when_the_cost_bound_meets_the_reservation() -> None:
    budget = Budget(Decimal("1"))
    reservation = budget.open(PER_SECOND)
    assert reservation is not None
    deadline = reservation.deadline()
    assert deadline is not None
    elapsed = deadline - reservation.started
    assert reservation.bound(elapsed) <= reservation.reserved
    free = Budget(Decimal("1")).open(LinearPricing.from_prices({}, fixed=0.1))
    assert free is not None and free.deadline() is None  # a fixed price never runs out


async def test_the_queue_reads_lazily_and_retries_first() -> None:
    read: list[int] = []

    def data():  # type: ignore[no-untyped-def]
        for i in range(3):
            read.append(i)
            yield i

    queue = TaskQueue(data())
    first = await queue.get()
    assert first is not None and first.data == 0 and read == [0]
    first._start("p")
    await queue.put_back(first)
    again = await queue.get()
    assert again is first  # a task put back goes before new ones
    assert read == [0]


async def test_a_queue_of_nothing_is_finished_and_bad_data_is_a_type_error() -> None:
    queue = TaskQueue([])
    assert await queue.get() is None and queue.finished
    with pytest.raises(TypeError):
        TaskQueue(42)  # type: ignore[arg-type]


async def test_a_caller_holding_every_task_out_is_not_left_waiting() -> None:
    queue = TaskQueue([Task(1)])
    task = await queue.get()
    assert task is not None and task.status is TaskStatus.WAITING
    async with asyncio.timeout(5):
        assert await queue.get(holding=1) is None
