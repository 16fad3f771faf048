"""A daemon dies mid-job, on a devnet of the test's own: the requestor's (one clear
``BackendUnavailable``, every task accounted for, no hang) or a provider's (its in-flight task
goes to another provider at once, not after a script timeout, and the job completes)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.networks import stop_test_devnet
from workgen import Golem, Task, TaskStatus, WorkContext, events, vm
from workgen.backends.yagna import Yagna
from workgen.devnet import Devnet
from workgen.errors import BackendUnavailable

TASKS = 12


@pytest.fixture
def devnet(tmp_path: Path) -> Iterator[Devnet]:
    net = Devnet(tmp_path / "devnet")
    net.up(2)
    try:
        net.start_providers()
        yield net
    finally:
        stop_test_devnet(net)


async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
    async for task in tasks:
        script = context.new_script()
        done = script.run("/bin/sh", "-c", "sleep 0.3; echo ok")
        yield script
        task.accept_result((await done).stdout)


async def run_and_kill(net: Devnet, pid: int) -> tuple[list[Any], Golem, list[Any],
                                                        BaseException | None]:
    """Run TASKS tasks; kill ``pid`` once the third is accepted."""
    state = net.state()
    node = state.requestor
    seen: list[Any] = []
    tasks = [Task(i) for i in range(TASKS)]
    accepted: list[Any] = []
    error: BaseException | None = None
    backend = Yagna(api_url=node.api_url, appkey=node.appkey, gsb_url=node.gsb_url,
                    subnet=state.subnet)
    golem = Golem(budget=1, backend=backend, event_consumer=seen.append, invoice_timeout=5)
    try:
        async with golem:
            async for task in golem.execute_tasks(worker, tasks, payload=await vm.repo(),
                                                  max_workers=2, timeout=240):
                accepted.append(task.data)
                if len(accepted) == 3:
                    os.kill(pid, signal.SIGKILL)
    except Exception as exc:
        error = exc
    return tasks, golem, seen, error


@pytest.mark.timeout(200)
@pytest.mark.watchdog(180)
async def test_the_requestor_daemon_dying_is_one_clear_error_and_no_task_is_lost(
        devnet: Devnet) -> None:
    requestor = devnet.state().requestor
    tasks, golem, seen, error = await run_and_kill(devnet, requestor.process.pid)
    assert isinstance(error, BackendUnavailable), repr(error)
    assert requestor.api_url in str(error) and "is the daemon running" in str(error)
    # Each task is accepted, failed with a reason, or was never started (still waiting).
    for task in tasks:
        assert task.status in (TaskStatus.ACCEPTED, TaskStatus.FAILED, TaskStatus.WAITING), task
        if task.status is TaskStatus.FAILED:
            assert task in golem.failed_tasks and "unreachable" in (task.reason or "")
    assert sum(t.status is TaskStatus.ACCEPTED for t in tasks) >= 3
    (finished,) = [e for e in seen if isinstance(e, events.JobFinished)]
    assert finished.error is not None and "unreachable" in finished.error


@pytest.mark.timeout(200)
@pytest.mark.watchdog(150)
async def test_a_provider_daemon_dying_moves_its_task_to_another_provider_promptly(
        devnet: Devnet) -> None:
    """The task on the dying provider runs a command far longer than the watchdog, with no
    script timeout: only noticing the provider is gone gets it to the other provider."""
    state = devnet.state()
    victim = state.providers[0]
    name = f"devnet-{victim.name}"
    killed = asyncio.Event()

    async def stalling_worker(context: WorkContext,
                              tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            stall = context.provider_name == name and not killed.is_set()
            script = context.new_script()
            done = script.run("/bin/sh", "-c", "sleep 600" if stall else "echo ok")
            if stall:
                # Killed once the command runs (the yield sends it and waits for it).
                asyncio.get_running_loop().call_later(
                    0, lambda: (os.kill(victim.process.pid, signal.SIGKILL), killed.set()))
            yield script
            task.accept_result((await done).stdout)

    seen: list[Any] = []
    tasks = [Task(i) for i in range(6)]
    node = state.requestor
    backend = Yagna(api_url=node.api_url, appkey=node.appkey, gsb_url=node.gsb_url,
                    subnet=state.subnet)
    # The default invoice timeout (30 s): the gone provider's invoice is not waited for.
    async with Golem(budget=1, backend=backend, event_consumer=seen.append) as golem:
        accepted = [t async for t in golem.execute_tasks(stalling_worker, tasks,
                                                          payload=await vm.repo(),
                                                          max_workers=2, timeout=600)]
        job_done = time.monotonic()
    closing = time.monotonic() - job_done
    assert closing < golem.invoice_timeout / 2, f"closing took {closing:.1f}s"
    missing = [e for e in seen if isinstance(e, events.PaymentMissing)]
    assert [e.provider_name for e in missing] == [name]
    paid = [e for e in seen if isinstance(e, events.InvoiceAccepted)]
    assert {e.provider_name for e in paid} == {f"devnet-{state.providers[1].name}"}
    assert killed.is_set(), "no task ran on the provider to kill"
    assert len(accepted) == len(tasks) and golem.failed_tasks == []
    (failed,) = [e for e in seen if isinstance(e, events.ActivityFailed)]
    assert failed.provider_name == name and "provider" in failed.reason, failed
    retried = [e for e in seen if isinstance(e, events.TaskRetried)]
    assert len(retried) == 1
    assert {e.provider_name for e in seen if isinstance(e, events.TaskAccepted)} == {
        f"devnet-{state.providers[1].name}"}
