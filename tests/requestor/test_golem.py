"""The requestor end to end, on both networks: the embedded local network and a devnet of real
yagna daemons (``net``). Real providers, real sandboxes, real money on the network's books."""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from support.networks import Network, Recorder
from workgen import (
    ActivityLost, BatchTimeoutError, BudgetExhausted, CommandExecutionError, Golem,
    JobTimeoutError, NoProvidersError, ProviderFilter, Task, TaskStatus, WorkContext, events,
    vm,
)
from workgen.requestor.strategy import default_strategy


PAYLOAD = vm.repo(min_mem_gib=0.5)


async def date_worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
    async for task in tasks:
        script = context.new_script()
        future_result = script.run("/bin/sh", "-c", "date")
        yield script
        task.accept_result(result=await future_result)


async def collect(g: Golem, worker: Any, data: Any, **kw: Any) -> list[Task[Any, Any]]:
    return [t async for t in g.execute_tasks(worker, data, payload=PAYLOAD, **kw)]


async def test_the_documentation_worker_runs_unchanged(net: Network) -> None:
    rec = Recorder()
    async with net.golem(rec) as g:
        (task,) = await collect(g, date_worker, [Task(data=None)])
    assert task.status is TaskStatus.ACCEPTED
    assert task.result.success and task.result.return_code == 0
    assert "UTC" in task.result.stdout or ":" in task.result.stdout
    (invoice,) = rec.of(events.InvoiceAccepted)
    assert invoice.amount > 0


async def test_several_providers_work_at_once(net: Network) -> None:
    rec = Recorder()
    barrier = asyncio.Barrier(3)

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            if task.data < 3:
                await barrier.wait()  # passes only when three activities work at the same time
            script = context.new_script()
            out = script.run("/bin/echo", str(task.data))
            yield script
            task.accept_result((await out).stdout)

    async with net.golem(rec, providers=3) as g:
        done = await collect(g, worker, range(12))
    assert sorted(int(t.result) for t in done) == list(range(12))
    assert len({t.provider_name for t in done}) == 3
    assert len(rec.of(events.AgreementCreated)) == 3


async def test_a_failing_worker_s_task_goes_to_another_activity(net: Network) -> None:
    rec = Recorder()
    activities: dict[int, list[str]] = {}

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            activities.setdefault(task.data, []).append(context.id)
            if task.data == 0 and task.attempts == 1:
                raise RuntimeError("worker bug on the first try")
            script = context.new_script()
            script.run("/bin/true")
            yield script
            task.accept_result(task.data)

    async with net.golem(rec) as g:
        done = await collect(g, worker, range(4))
    assert sorted(t.result for t in done) == [0, 1, 2, 3]
    first, second = activities[0]
    assert first != second
    (retried,) = rec.of(events.TaskRetried)
    assert "worker bug" in retried.reason
    assert rec.of(events.ActivityFailed)


async def test_a_command_that_always_fails_uses_up_its_retries_and_is_reported(net: Network) -> None:
    rec = Recorder()

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script()
            script.run("/bin/sh", "-c", f"[ {task.data} -ne 1 ] || {{ echo no >&2; exit 7; }}")
            yield script
            task.accept_result(task.data)

    async with net.golem(rec) as g:
        done = await collect(g, worker, range(3), max_retries=2)
    assert sorted(t.result for t in done) == [0, 2]
    (failed,) = g.failed_tasks
    assert failed.data == 1 and failed.status is TaskStatus.FAILED
    assert failed.attempts == 3
    assert "return code 7" in (failed.reason or "") and "no" in (failed.reason or "")
    (event,) = rec.of(events.TaskFailed)
    assert event.task_id == failed.id


async def test_killed_execution_unit_is_activity_lost_and_the_task_completes_elsewhere(net: Network) -> None:
    rec = Recorder()
    killed: list[str] = []

    def kill_first_long_script(event: events.Event) -> None:
        if isinstance(event, events.ScriptSent) and not killed and "sleep 30" in str(
                event.commands):
            killed.append(event.activity_id)
            net.kill_sandbox(event.activity_id, rec.providers[event.activity_id])

    rec.on_event.append(kill_first_long_script)
    seen: list[BaseException] = []

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script()
            command = "sleep 30" if task.attempts == 1 else "echo survived"
            out = script.run("/bin/sh", "-c", command)
            try:
                yield script
            except ActivityLost as exc:
                seen.append(exc)
                raise
            task.accept_result((await out).stdout)

    async with net.golem(rec) as g:
        (task,) = await collect(g, worker, ["x"])
    assert task.result == "survived\n" and task.attempts == 2
    assert len(seen) == 1 and killed


async def test_failed_command_is_thrown_in_at_yield_and_later_commands_are_skipped(net: Network) -> None:
    rec = Recorder()
    caught: list[Any] = []

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script()
            script.run("/bin/sh", "-c", "exit 3")
            after = script.run("/bin/echo", "never")
            try:
                yield script
            except CommandExecutionError as exc:
                caught.append((exc.result.return_code, exc.index))
                with pytest.raises(Exception, match="did not run"):
                    await after
                task.reject_result("command failed", retry=False)
                continue
            task.accept_result()

    async with net.golem(rec) as g:
        assert await collect(g, worker, ["x"]) == []
    assert caught == [(3, 0)]
    (failed,) = g.failed_tasks
    assert failed.status is TaskStatus.REJECTED and failed.reason == "command failed"


@pytest.mark.parametrize("command, code", [
    # A failure that only says "timed out" is the command's failure, not the script's timeout.
    ("echo 'connect: timed out' >&2; exit 3", 3),
    # A command killed by a signal: 128 + N, as a shell reports it, on both networks.
    ("kill -9 $$", 137),
])
async def test_a_failed_command_s_code_and_kind_come_from_its_unit_not_its_text(
        net: Network, command: str, code: int) -> None:
    caught: list[BaseException] = []

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script(timeout=30)
            script.run("/bin/sh", "-c", command)
            try:
                yield script
            except Exception as exc:
                caught.append(exc)
            task.accept_result()

    async with net.golem(Recorder()) as g:
        await collect(g, worker, ["x"])
    (error,) = caught
    assert type(error) is CommandExecutionError, error
    assert error.result.return_code == code


async def test_script_timeout_raises_batch_timeout_at_yield(net: Network) -> None:
    rec = Recorder()
    caught: list[BaseException] = []

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script(timeout=0.5)
            script.run("/bin/sleep", "30")
            try:
                yield script
            except BatchTimeoutError as exc:
                caught.append(exc)
                task.reject_result("too slow")
                continue
            task.accept_result()

    async with net.golem(rec) as g:
        await collect(g, worker, ["x"])
    assert len(caught) == 1


async def test_a_timed_out_script_does_not_hold_up_later_tasks(net: Network) -> None:
    rec = Recorder()
    timed_out: list[str] = []

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script(timeout=1 if task.data == 0 else None)
            script.run("/bin/sh", "-c", "sleep 30" if task.data == 0 else "echo ok")
            try:
                yield script
            except BatchTimeoutError:
                timed_out.append(context.id)
                task.reject_result("too slow", retry=False)
                continue
            task.accept_result(context.id)

    async with net.golem(rec, providers=1) as g:
        done = await collect(g, worker, range(3), max_workers=1)
    assert sorted(t.data for t in done) == [1, 2] and len(timed_out) == 1
    destroyed = [e.activity_id for e in rec.of(events.ActivityDestroyed)]
    if net.kind == "local":
        # The command was killed: the activity goes on with the next tasks.
        assert {t.result for t in done} == set(timed_out)
    else:
        # yagna cannot stop a batch: its activity is ended, which stops it, and the next
        # tasks get a new one.
        assert timed_out[0] in destroyed and timed_out[0] not in {t.result for t in done}


async def test_job_timeout_ends_the_job_and_reports_its_tasks(net: Network) -> None:
    rec = Recorder()

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script()
            script.run("/bin/sleep", "30")
            yield script
            task.accept_result()

    # Long enough for the tasks to start (offers take seconds to travel on the devnet).
    timeout = 1.0 if net.kind == "local" else 20.0
    async with net.golem(rec) as g:
        with pytest.raises(JobTimeoutError):
            await collect(g, worker, range(3), timeout=timeout)
        assert len(g.failed_tasks) == 3
    assert rec.of(events.AgreementTerminated)


async def test_constraints_no_offer_satisfies_are_a_clear_error(net: Network) -> None:
    rec = Recorder()
    async with net.golem(rec) as g:
        with pytest.raises(NoProvidersError, match="golem.inf.mem.gib>=512"):
            async for _ in g.execute_tasks(date_worker, [Task(None)],
                                           payload=vm.repo(min_mem_gib=512)):
                pass


async def test_every_provider_refused_is_a_clear_error_with_their_reasons(net: Network) -> None:
    rec = Recorder()
    nobody = ProviderFilter(default_strategy(), allow=["nobody"])
    async with net.golem(rec, strategy=nobody) as g:
        with pytest.raises(NoProvidersError, match="rejected by the market strategy") as info:
            async for _ in g.execute_tasks(date_worker, [Task(None)], payload=PAYLOAD):
                pass
    assert "no provider took the demand" in str(info.value)
    assert not rec.of(events.AgreementCreated)


async def test_budget_is_never_exceeded(net: Network) -> None:
    rec = Recorder()
    # The two providers together cost at most 0.0013 a second: 0.003 buys a few seconds of work.
    async with net.golem(rec, budget=0.003) as g:
        with pytest.raises(BudgetExhausted):
            async for _ in g.execute_tasks(sleepy_worker, range(1000), payload=PAYLOAD):
                pass
    paid = sum((e.amount for e in rec.of(events.InvoiceAccepted)), Decimal(0))
    assert Decimal(0) < paid <= Decimal("0.003")
    assert net.paid(e.agreement_id for e in rec.of(events.AgreementCreated)) == paid
    assert g.budget.reserved == g.budget.paid == paid  # every reservation settled
    assert g.failed_tasks


async def sleepy_worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
    async for task in tasks:
        script = context.new_script()
        script.run("/bin/sleep", "0.3")
        yield script
        task.accept_result()


async def test_cancelling_a_running_job_cleans_up_and_pays_for_work_done(net: Network) -> None:
    rec = Recorder()
    started = asyncio.Event()
    rec.on_event.append(lambda e: started.set() if isinstance(e, events.TaskStarted) else None)

    async def run() -> None:
        async with net.golem(rec) as g:
            async for _ in g.execute_tasks(sleepy_worker, range(1000), payload=PAYLOAD):
                pass

    runner = asyncio.ensure_future(run())
    await started.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    created = {e.agreement_id for e in rec.of(events.AgreementCreated)}
    terminated = {e.agreement_id for e in rec.of(events.AgreementTerminated)}
    invoiced = {e.agreement_id for e in rec.of(events.InvoiceAccepted)}
    assert created and created == terminated == invoiced


async def test_breaking_out_of_the_loop_shuts_the_job_down(net: Network) -> None:
    rec = Recorder()
    async with net.golem(rec) as g:
        async for _ in g.execute_tasks(date_worker, range(1000), payload=PAYLOAD):
            break
    created = {e.agreement_id for e in rec.of(events.AgreementCreated)}
    assert created == {e.agreement_id for e in rec.of(events.AgreementTerminated)}


@pytest.mark.watchdog(300)
async def test_thousands_of_tasks_in_one_job_with_bounded_memory(net: Network) -> None:
    counts: Counter[str] = Counter()

    def count(event: events.Event) -> None:
        counts[type(event).__name__] += 1

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script()
            script.run("/bin/true")
            yield script
            task.accept_result()

    # The devnet runs about a tenth as many tasks a second (bench/scripts.py).
    total = 10_000 if net.kind == "local" else 2_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = 0
    async with net.golem(count, budget=10) as g:
        async for _ in g.execute_tasks(worker, (i for i in range(total)), payload=PAYLOAD):
            n += 1
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert n == total and counts["TaskAccepted"] == total
    assert grown_mib < 60, f"memory grew by {grown_mib:.0f} MiB"


@pytest.mark.watchdog(120)
async def test_a_task_longer_than_one_reservation_step_is_not_cut_off(net: Network) -> None:
    rec = Recorder()

    async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = context.new_script()
            script.run("/bin/sleep", "12")  # past the first reservation of about 10 s
            yield script
            task.accept_result("slept")

    async with net.golem(rec, providers=1) as g:
        (task,) = await collect(g, worker, ["x"])
    assert task.result == "slept" and task.attempts == 1
