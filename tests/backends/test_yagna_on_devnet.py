"""What only the yagna path has, on the session's devnet (real daemons, Python providers):
a provider agent killed outright, a provider that overbills, an allocation that must be renewed.

The behaviour both networks share is tested on both, through the ``net`` fixture, in
``tests/requestor``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from support.networks import OVERCHARGER, DevnetNet, Recorder, overcharger_subnet
from support.yagna import pid_alive
from workgen import (
    ActivityLost, BatchTimeoutError, CommandExecutionError, Golem, ProviderFilter, Task,
    TaskStatus, WorkContext, events, vm,
)
from workgen.devnet import Devnet
from workgen.requestor.strategy import default_strategy

PAYLOAD = vm.repo()


async def collect(g: Golem, worker: Any, data: Any, **kw: Any) -> list[Task[Any, Any]]:
    return [t async for t in g.execute_tasks(worker, data, payload=PAYLOAD, **kw)]


@pytest.mark.timeout(240)
async def test_a_provider_killed_mid_task_loses_the_task_to_another(test_devnet: Devnet) -> None:
    net = DevnetNet(test_devnet)
    rec = Recorder()
    seen: list[BaseException] = []
    killed = []

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script(timeout=10)
            if task.attempts == 1:
                script.run("/bin/sleep", "30")
                # Kill the provider agent's process as the command is sent.
                killed.append(net.agent(ctx.provider_name))
                os.kill(killed[-1].pid, signal.SIGKILL)
            else:
                script.run("/bin/echo", "survived")
            try:
                results = yield script
                await results
            except (ActivityLost, BatchTimeoutError, CommandExecutionError) as exc:
                seen.append(exc)
                raise
            task.accept_result(ctx.provider_name)

    try:
        async with net.golem(rec, providers=2, invoice_timeout=5) as g:
            (task,) = await collect(g, worker, ["x"], max_workers=1)
    finally:
        # Restart the killed agent, so later tests have their providers back.
        for agent in killed:
            if not pid_alive(agent.pid):
                test_devnet.start_agent(agent.name + "-again", agent.node, list(agent.argv))
    assert task.status is TaskStatus.ACCEPTED and task.attempts == 2
    assert seen and rec.of(events.TaskRetried)
    assert task.provider_name != f"devnet-{killed[0].node}"


@pytest.mark.timeout(120)
async def test_an_invoice_over_the_agreed_price_is_rejected(test_devnet: Devnet) -> None:
    rec = Recorder()
    # The overcharging provider offers on a subnet of its own.
    backend = DevnetNet(test_devnet).backend(subnet=overcharger_subnet(test_devnet))
    strategy = ProviderFilter(default_strategy(), allow=[OVERCHARGER])

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            script.run("/bin/sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
            yield script
            task.accept_result()

    async with Golem(budget=1, backend=backend, event_consumer=rec,
                     strategy=strategy, invoice_timeout=15) as g:
        await collect(g, worker, ["x"])
    rejected = rec.of(events.InvoiceRejected)
    assert rejected and "over" in rejected[0].reason
    assert not rec.of(events.InvoiceAccepted)
    assert all(e.amount > Decimal(0) for e in rejected)


@pytest.mark.timeout(180)
@pytest.mark.watchdog(160)
async def test_the_allocation_is_renewed_during_a_long_job(test_devnet: Devnet) -> None:
    rec = Recorder()
    yagna = DevnetNet(test_devnet).backend()
    # Shorter than the job (market start-up and a 40 s task): it must be renewed on the way,
    # as debit notes (every second) are accepted.
    yagna.allocation_term = timedelta(seconds=30)

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            script.run("/bin/sleep", "40")
            yield script
            task.accept_result()

    started = datetime.now(timezone.utc)
    async with Golem(budget=1, backend=yagna, event_consumer=rec) as g:
        done = await collect(g, worker, ["x"])
        assert len(done) == 1, [(t, t.reason) for t in g.failed_tasks]
        assert g.payments is not None
        allocation = g.payments.allocation
        assert allocation is not None
        doc = await yagna.api.get(f"/payment-api/v1/allocations/{allocation.id}")
    assert len(rec.of(events.DebitNoteAccepted)) >= 3
    assert rec.of(events.InvoiceAccepted)
    # Made to expire 30 s after it was created; renewed as the 40 s task ran.
    expires = datetime.fromisoformat(doc["timeout"].replace("Z", "+00:00"))
    assert expires > started + timedelta(seconds=45), (started, doc)


@pytest.mark.timeout(120)
async def test_scripts_go_to_the_exe_unit_over_the_gsb_not_through_the_rest_api(
        test_devnet: Devnet) -> None:
    """A batch's exec and results go straight to the provider's exe unit over the daemon's GSB:
    the daemon's REST exec endpoints are never asked (its request log says), while the rest
    of the run (activities, state) still is."""
    rec = Recorder()

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            date = script.run("/bin/sh", "-c", "echo $0", str(task.data))
            yield script
            task.accept_result((await date).stdout)

    async with DevnetNet(test_devnet).golem(rec, providers=2) as g:
        done = await collect(g, worker, range(4))
    assert sorted(t.result for t in done) == ["0\n", "1\n", "2\n", "3\n"]
    activities = {e.activity_id for e in rec.of(events.ActivityCreated)}
    assert activities
    log = test_devnet.state().requestor.log_path.read_text(errors="replace")
    for activity in activities:
        assert f"/activity-api/v1/activity/{activity}/exec" not in log
        # The log is on: the activity's end went through the REST API.
        assert f"DELETE /activity-api/v1/activity/{activity}" in log
