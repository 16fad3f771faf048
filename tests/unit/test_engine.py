"""The requestor's engine (job, market, budget, payments) on ``MockBackend``: each of its
decisions tested in milliseconds, with no process, sandbox or daemon. The same behaviours run
end to end on the real networks in ``tests/requestor``."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from workgen import (
    BackendUnavailable, BudgetExhausted, Golem, NoProvidersError, ProgressDisplay, Task,
    TaskStatus, WorkContext, events, vm,
)
from workgen.protocol.pricing import LinearPricing
from workgen.testing import MockBackend, MockProvider


E = TypeVar("E", bound=events.Event)


class Run:
    """One job on a mock backend: what was accepted, failed, raised and emitted."""

    def __init__(self, backend: MockBackend, budget: float = 1.0) -> None:
        self.backend = backend
        self.budget = budget
        self.events: list[events.Event] = []
        self.accepted: list[Task[Any, Any]] = []
        self.failed: list[Task[Any, Any]] = []
        self.error: BaseException | None = None

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def __call__(self, worker: Any, data: list[Any], **options: Any) -> Run:
        async with Golem(budget=self.budget, backend=self.backend,
                         event_consumer=self.events.append) as golem:
            tasks = [d if isinstance(d, Task) else Task(d) for d in data]
            try:
                async for task in golem.execute_tasks(worker, tasks, payload=await vm.repo(),
                                                      **options):
                    self.accepted.append(task)
            except Exception as exc:
                self.error = exc
            self.failed = list(golem.failed_tasks)
        return self


async def echo(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
    async for task in tasks:
        script = context.new_script()
        out = script.run("/bin/echo", str(task.data))
        yield script
        task.accept_result((await out).stdout.strip())


async def test_every_task_is_done_and_every_agreement_paid() -> None:
    backend = MockBackend(2)
    run = await Run(backend)(echo, list(range(20)))
    assert run.error is None
    assert sorted(int(t.result) for t in run.accepted) == list(range(20))
    agreements = {e.agreement_id for e in run.of(events.AgreementCreated)}
    assert agreements and agreements == set(backend.terminated) == set(backend.invoices_paid)
    assert {e.agreement_id for e in run.of(events.InvoiceAccepted)} == agreements


async def test_a_lost_activity_gives_its_task_to_another_provider() -> None:
    backend = MockBackend([MockProvider("flaky", lose_activity_after=1), MockProvider("solid")])
    run = await Run(backend)(echo, list(range(6)), max_workers=2)
    assert run.error is None and len(run.accepted) == 6
    assert any(e.provider_name == "flaky" for e in run.of(events.ActivityFailed))
    assert {t.provider_name for t in run.accepted} >= {"solid"}


async def test_a_failing_command_is_retried_then_fails_with_its_reason() -> None:
    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script()
            script.run("/bin/sh", "-c", "echo no >&2; exit 5")
            yield script
            task.accept_result(None)

    run = await Run(MockBackend(1))(worker, ["x"], max_retries=2)
    assert run.accepted == [] and run.error is None
    (failed,) = run.failed
    assert failed.status is TaskStatus.FAILED and failed.attempts == 3
    assert "exited with 5" in (failed.reason or "") and "after 3 attempts" in (failed.reason or "")
    assert len(run.of(events.TaskRetried)) == 2


async def test_a_timed_out_script_is_a_batch_timeout_and_the_task_retried() -> None:
    attempts: list[int] = []

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            attempts.append(task.attempts)
            script = context.new_script(timeout=0.05)
            script.run("/bin/sleep", "0" if len(attempts) > 1 else "30")
            yield script
            task.accept_result("done")

    run = await Run(MockBackend(1))(worker, ["x"])
    assert [t.result for t in run.accepted] == ["done"] and attempts == [1, 2]
    (retried,) = run.of(events.TaskRetried)
    assert "timeout" in retried.reason


async def test_providers_that_all_refuse_end_the_job_with_their_reasons() -> None:
    backend = MockBackend([MockProvider("a", refuses="no thanks"),
                           MockProvider("b", approves=False)])
    run = await Run(backend)(echo, [1, 2])
    assert isinstance(run.error, NoProvidersError)
    assert "a: refused: no thanks" in str(run.error) and "b: rejected the agreement" in str(
        run.error)
    assert sorted(t.data for t in run.failed) == [1, 2]


async def test_no_matching_offer_is_no_providers_naming_the_constraints() -> None:
    run = await Run(MockBackend(0))(echo, [1])
    assert isinstance(run.error, NoProvidersError)
    assert "no provider's offer matched" in str(run.error) and "golem.inf.mem.gib" in str(
        run.error)


async def test_a_budget_too_small_for_any_work_is_exhausted_with_tasks_accounted_for() -> None:
    pricey = MockProvider("pricey", pricing=LinearPricing.from_prices({}, fixed=5.0))
    run = await Run(MockBackend([pricey]), budget=1.0)(echo, [1, 2, 3])
    assert isinstance(run.error, BudgetExhausted)
    assert run.accepted == [] and sorted(t.data for t in run.failed) == [1, 2, 3]


async def test_an_overcharging_invoice_is_rejected_and_nothing_paid() -> None:
    backend = MockBackend([MockProvider("greedy", overcharge=Decimal("0.5"))])
    run = await Run(backend)(echo, [1])
    assert len(run.accepted) == 1
    (rejected,) = run.of(events.InvoiceRejected)
    assert "over" in rejected.reason and backend.invoices_paid == {}


async def test_debit_notes_are_accepted_while_work_runs() -> None:
    backend = MockBackend(1, debit_note_interval=0.01)

    async def slow(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script()
            script.run("/bin/sleep", "0.1")
            yield script
            task.accept_result(None)

    run = await Run(backend)(slow, [1])
    assert run.error is None and run.of(events.DebitNoteAccepted)
    assert set(backend.debit_notes_accepted) == {e.agreement_id
                                                 for e in run.of(events.AgreementCreated)}


async def test_the_daemon_going_away_is_one_backend_unavailable_with_every_task_accounted_for(
        ) -> None:
    backend = MockBackend(1)

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            if task.data == 2:
                backend.go_away()
            script = context.new_script()
            out = script.run("/bin/echo", str(task.data))
            yield script
            task.accept_result((await out).stdout.strip())

    tasks = [Task(i) for i in range(6)]
    run = await Run(backend)(worker, tasks, max_workers=1)
    assert isinstance(run.error, BackendUnavailable) and "went away" in str(run.error)
    assert [t.data for t in run.accepted] == [0, 1]
    assert run.failed and all(t.reason for t in run.failed)
    # The rest were never started, and say so.
    assert all(t.status is TaskStatus.WAITING for t in tasks
               if t not in run.accepted and t not in run.failed)


async def test_golem_start_and_stop_from_different_tasks() -> None:
    backend = MockBackend(1)
    seen: list[events.Event] = []
    golem = Golem(budget=1, backend=backend, event_consumer=seen.append)
    await asyncio.create_task(golem.start())

    async def job() -> list[Any]:
        return [t.result async for t in golem.execute_tasks(echo, [Task(3)],
                                                            payload=await vm.repo())]

    assert await asyncio.create_task(job()) == ["3"]
    await asyncio.create_task(golem.stop())
    assert isinstance(seen[-1], events.GolemStopped) and backend.invoices_paid


@pytest.mark.parametrize("count", [1, 50])
async def test_data_is_read_lazily_as_workers_ask(count: int) -> None:
    read: list[int] = []

    def data() -> Any:
        for i in range(count):
            read.append(i)
            yield Task(i)

    backend = MockBackend(1)
    async with Golem(budget=1, backend=backend, event_consumer=lambda e: None) as golem:
        stream = golem.execute_tasks(echo, data(), payload=await vm.repo(), max_workers=1)
        first = await anext(stream)
        assert first.data == 0 and len(read) <= 3  # not all of it up front
        rest = [t async for t in stream]
    assert len(rest) == count - 1 and len(read) == count


async def test_the_run_summary_is_a_value_programs_can_read() -> None:
    backend = MockBackend(2)
    async with Golem(budget=1, backend=backend, event_consumer=lambda e: None) as golem:
        async for _ in golem.execute_tasks(echo, [Task(i) for i in range(6)],
                                           payload=await vm.repo()):
            pass
        summary = golem.summary()
    assert summary.tasks_accepted == 6 and summary.tasks_total == 6
    assert summary.currency == "MOCK"
    paid = {name: amount for name, amount in summary.cost_by_provider().items()}
    assert sum(paid.values()) == sum(backend.invoices_paid.values()) == summary.total_cost
    assert summary.progress() == (6, 6)  # the job's size was known from its list
    assert "6 tasks" in summary.render()


async def test_with_the_default_display_the_summary_is_the_display_s_own() -> None:
    display = ProgressDisplay(io.StringIO(), live=False)
    async with Golem(budget=1, backend=MockBackend(1), event_consumer=display) as golem:
        async for _ in golem.execute_tasks(echo, [Task(1), Task(2)], payload=await vm.repo()):
            pass
        assert golem.summary() is display.summary  # one aggregate, not two
        assert golem.summary().tasks_accepted == 2
