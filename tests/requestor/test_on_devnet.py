"""The requestor's end-to-end behaviour on the yagna backend, against a real devnet.

One devnet for the module (real yagna daemons, one Python provider agent per provider node),
brought down at the end by PID. The same workers as on the local network: only the backend
differs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from support.yagna import pid_alive
from workgen import (
    ActivityLost, BatchTimeoutError, CommandExecutionError, Golem, ProviderFilter, Task,
    TaskStatus, WorkContext, events, vm,
)
from workgen.backends.yagna import Yagna
from workgen.devnet import Devnet
from workgen.requestor.strategy import default_strategy

PAYLOAD = vm.repo()
CHEATER = "devnet-cheater"


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("devnet") / "net")
    net.up(3)
    try:
        net.start_providers(debit_note_interval=1.0, nodes=["provider-1", "provider-2"])
        state = net.state()
        # A dishonest provider on the third node: it bills ten times the agreed price.
        third = state.node("provider-3")
        net.start_agent(f"agent-{CHEATER}", third.name, [
            sys.executable, "-m", "workgen.cli.main", "provider", "run", "--name", CHEATER,
            "--subnet", state.subnet, "--debit-note-interval", "1", "--overcharge", "10"])
        yield net
    finally:
        recorded = [n.pid for n in net.state().nodes] + [a.pid for a in net.state().agents]
        net.down()
        assert not [pid for pid in recorded if pid_alive(pid)]


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    # The devnet's agents outlive single tests by design; the module fixture checks them.
    yield


class Recorder:
    def __init__(self) -> None:
        self.events: list[events.Event] = []

    def __call__(self, event: events.Event) -> None:
        self.events.append(event)
        if os.environ.get("DEBUG_EVENTS"):
            print(event, flush=True)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def backend(devnet: Devnet) -> Yagna:
    state = devnet.state()
    requestor = next(n for n in state.nodes if n.role == "requestor")
    return Yagna(api_url=requestor.api_url, appkey=requestor.appkey, gsb_url=requestor.gsb_url,
                 subnet=state.subnet)


def honest(devnet: Devnet, rec: Recorder, **kw: Any) -> Golem:
    strategy = ProviderFilter(default_strategy(), deny=[CHEATER])
    return Golem(budget=1, backend=backend(devnet), event_consumer=rec, strategy=strategy, **kw)


async def collect(g: Golem, worker: Any, data: Any, **kw: Any) -> list[Task[Any, Any]]:
    return [t async for t in g.execute_tasks(worker, data, payload=PAYLOAD, **kw)]


async def date_worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
    async for task in tasks:
        script = context.new_script()
        future_result = script.run("/bin/sh", "-c", "date")
        yield script
        task.accept_result(result=await future_result)


@pytest.mark.timeout(120)
async def test_documentation_worker_runs_on_the_devnet(devnet: Devnet) -> None:
    rec = Recorder()
    async with honest(devnet, rec) as g:
        (task,) = await collect(g, date_worker, [Task(None)])
    assert task.result.success and "UTC" in task.result.stdout
    assert task.provider_name.startswith("devnet-provider-")
    (invoice,) = rec.of(events.InvoiceAccepted)
    assert invoice.amount > 0


@pytest.mark.timeout(180)
async def test_two_providers_work_and_files_travel_both_ways(devnet: Devnet,
                                                             tmp_path: Path) -> None:
    rec = Recorder()
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(1 << 20))

    barrier = asyncio.Barrier(2)

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            if task.data < 2:
                await barrier.wait()  # passes only with two activities at work at once
            script = ctx.new_script()
            script.send_file(source, "/golem/input/in.bin")
            script.send_json("/golem/input/n.json", {"n": task.data})
            script.run("/bin/sh", "-c", "cat /golem/input/in.bin > /golem/output/out.bin",
                       env={"UNUSED": "x"})
            script.download_file("/golem/output/out.bin", tmp_path / f"out-{task.data}.bin")
            got = script.download_json("/golem/input/n.json")
            yield script
            task.accept_result((await got).data["n"])

    async with honest(devnet, rec) as g:
        done = await collect(g, worker, range(4))
    assert sorted(t.result for t in done) == [0, 1, 2, 3]
    for i in range(4):
        assert (tmp_path / f"out-{i}.bin").read_bytes() == source.read_bytes()
    assert len({t.provider_name for t in done}) == 2


@pytest.mark.timeout(120)
async def test_env_reaches_the_process_on_yagna(devnet: Devnet) -> None:
    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            out = script.run("/bin/sh", "-c", 'printf "%s" "$GREETING"', env={"GREETING": "hi"})
            yield script
            task.accept_result((await out).stdout)

    async with honest(devnet, Recorder()) as g:
        (task,) = await collect(g, worker, ["x"])
    assert task.result == "hi"


@pytest.mark.timeout(180)
async def test_failures_on_yagna_are_thrown_in_and_reported(devnet: Devnet) -> None:
    caught: list[type[BaseException]] = []

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script(timeout=3 if task.data == "slow" else None)
            script.run("/bin/sh", "-c", "sleep 30" if task.data == "slow" else "exit 4")
            try:
                yield script
            except (CommandExecutionError, BatchTimeoutError) as exc:
                caught.append(type(exc))
                task.reject_result(str(exc))
                continue
            task.accept_result()

    async with honest(devnet, Recorder()) as g:
        assert await collect(g, worker, ["fails", "slow"]) == []
        reasons = sorted(t.reason or "" for t in g.failed_tasks)
    assert sorted(c.__name__ for c in caught) == ["BatchTimeoutError", "CommandExecutionError"]
    assert "return code 4" in reasons[0] + reasons[1]


@pytest.mark.timeout(240)
async def test_a_provider_killed_mid_task_loses_the_task_to_another(devnet: Devnet) -> None:
    rec = Recorder()
    state = devnet.state()
    agents = {a.name.removeprefix("agent-"): a for a in state.agents}
    seen: list[BaseException] = []

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script(timeout=10)
            if task.attempts == 1:
                node = ctx.provider_name.removeprefix("devnet-")
                script.run("/bin/sleep", "30")
                # Kill the provider agent's process while the command runs.
                os.kill(agents[node].pid, signal.SIGKILL)
            else:
                script.run("/bin/echo", "survived")
            try:
                results = yield script
                await results
            except (ActivityLost, BatchTimeoutError, CommandExecutionError) as exc:
                seen.append(exc)
                raise
            task.accept_result(ctx.provider_name)

    async with honest(devnet, rec, invoice_timeout=5) as g:
        (task,) = await collect(g, worker, ["x"], max_workers=1)
    assert task.status is TaskStatus.ACCEPTED and task.attempts == 2
    assert seen and rec.of(events.TaskRetried)
    # Restart the killed agent, so later tests have their providers back.
    killed = [a for a in agents.values() if not pid_alive(a.pid)]
    for agent in killed:
        devnet.start_agent(agent.name + "-again", agent.node, list(agent.argv))


@pytest.mark.timeout(120)
async def test_an_invoice_over_the_agreed_price_is_rejected(devnet: Devnet) -> None:
    rec = Recorder()
    strategy = ProviderFilter(default_strategy(), allow=[CHEATER])

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            script.run("/bin/sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
            yield script
            task.accept_result()

    async with Golem(budget=1, backend=backend(devnet), event_consumer=rec,
                     strategy=strategy, invoice_timeout=15) as g:
        await collect(g, worker, ["x"])
    rejected = rec.of(events.InvoiceRejected)
    assert rejected and "over" in rejected[0].reason
    assert not rec.of(events.InvoiceAccepted)
    assert all(e.amount > Decimal(0) for e in rejected)


@pytest.mark.timeout(180)
@pytest.mark.watchdog(160)
async def test_the_allocation_is_renewed_during_a_long_job(devnet: Devnet) -> None:
    from datetime import timedelta

    rec = Recorder()
    yagna = backend(devnet)
    # Shorter than the job (market start-up and a 40 s task): it must be renewed on the way,
    # as debit notes (every second) are accepted.
    yagna.allocation_term = timedelta(seconds=30)

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            script.run("/bin/sleep", "40")
            yield script
            task.accept_result()

    strategy = ProviderFilter(default_strategy(), deny=[CHEATER])
    async with Golem(budget=1, backend=yagna, event_consumer=rec, strategy=strategy) as g:
        done = await collect(g, worker, ["x"])
        assert len(done) == 1, [(t, t.reason) for t in g.failed_tasks]
        allocation = g._allocation
        assert allocation is not None
        doc = await yagna.api.get(f"/payment-api/v1/allocations/{allocation.id}")
    assert len(rec.of(events.DebitNoteAccepted)) >= 3
    assert rec.of(events.InvoiceAccepted)
    assert doc["timeout"] > doc["timestamp"]
