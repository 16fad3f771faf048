"""Activities on the local network: real commands in real sandboxes, and how they end."""

from __future__ import annotations

import os
import signal

import pytest

from localnet_support import agreement_on, paid_demand, ready_activity, sh
from workgen.backends.local import LocalNetwork
from workgen.errors import ActivityClosed, ActivityLost, AgreementRejected
from workgen.protocol.exescript import Capture, Deploy, Start, Stream
from workgen.protocol.results import Finished, Started, StdOut

STREAM = Capture(stdout=Stream(format="str"))


async def test_exec_runs_a_real_command_and_its_events_and_results_arrive() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        agreement = await agreement_on(net, demand)
        activity = await net.create_activity(agreement)
        assert await net.activity_state(activity) == "Initialized"
        batch = await net.exec(activity, [Deploy(), Start(), sh("echo hello; echo $((6*7))")], 30)
        events = [event async for event in batch.events()]
        results = await batch.results()
        assert await net.activity_state(activity) == "Ready"
        usage = await net.activity_usage(activity)
        await net.terminate_agreement(agreement, "done")
        assert await net.activity_state(activity) == "Terminated"
    assert [r.result for r in results] == ["Ok", "Ok", "Ok"]
    assert results[2].stdout == "hello\n42\n" and results[2].is_batch_finished
    assert [e.index for e in events if isinstance(e.kind, Started)] == [0, 1, 2]
    assert isinstance(events[-1].kind, Finished) and events[-1].index == 2
    assert {e.batch_id for e in events} == {batch.id}
    assert set(usage) == {"golem.usage.duration_sec", "golem.usage.cpu_sec"}
    assert usage["golem.usage.duration_sec"] > 0


async def test_streamed_output_arrives_as_events() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        agreement, activity = await ready_activity(net, demand)
        batch = await net.exec(activity, [sh("echo one; echo two", capture=STREAM)], 30)
        out = "".join([e.kind.output async for e in batch.events()  # type: ignore[misc]
                       if isinstance(e.kind, StdOut)])
        (result,) = await batch.results()
        await net.terminate_agreement(agreement, "done")
    assert out == "one\ntwo\n" and result.ok


async def test_results_alone_are_not_held_back_by_unread_events() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        agreement, activity = await ready_activity(net, demand)
        # Far more events than the event queue holds; nobody reads them.
        script = "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done"
        batch = await net.exec(activity, [sh(script, capture=STREAM)], 30)
        (result,) = await batch.results()
        with pytest.raises(RuntimeError, match="before results"):
            batch.events()
        await net.terminate_agreement(agreement, "done")
    assert result.ok


async def test_killing_the_sandbox_mid_command_makes_results_raise_activity_lost() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        agreement, activity = await ready_activity(net, demand)
        unit = net.exe_unit(activity.id)
        batch = await net.exec(activity, [sh("echo started; sleep 60", capture=STREAM)], 60)
        events = batch.events()
        async for event in events:
            if isinstance(event.kind, StdOut):
                break
        pid = unit.sandbox_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        async for _ in events:  # the rest, up to the failed command's end
            pass
        with pytest.raises(ActivityLost, match="sandbox lost") as caught:
            await batch.results()
        assert caught.value.activity_id == activity.id
        assert await net.activity_state(activity) == "Terminated"
        with pytest.raises(ActivityLost):
            await net.exec(activity, [sh("true")], 10)
        await net.terminate_agreement(agreement, "done")


async def test_a_destroyed_activity_is_closed_not_lost() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        agreement, activity = await ready_activity(net, demand)
        volumes = dict(net.exe_unit(activity.id).volumes)
        running = await net.exec(activity, [sh("sleep 60")], 60)
        await net.destroy_activity(activity)
        with pytest.raises(ActivityClosed):
            await running.results()
        with pytest.raises(ActivityClosed):
            await net.exec(activity, [sh("true")], 10)
        await net.destroy_activity(activity)  # idempotent
        assert not any(path.exists() for path in volumes.values())
        assert net.exe_unit(activity.id).sandbox_pid is None
        # The agreement lives on: another activity can be made on it.
        other = await net.create_activity(agreement)
        await net.terminate_agreement(agreement, "done")
        with pytest.raises(ActivityClosed):
            await net.exec(other, [sh("true")], 10)
        with pytest.raises(AgreementRejected, match="terminated"):
            await net.create_activity(agreement)


async def test_a_cancelled_batch_reports_its_cancellation() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        agreement, activity = await ready_activity(net, demand)
        batch = await net.exec(activity, [sh("sleep 60"), sh("echo never")], 60)
        events = batch.events()
        async for event in events:
            if isinstance(event.kind, Started):
                break
        await batch.cancel()
        async for _ in events:
            pass
        (result,) = await batch.results()
        early = await net.exec(activity, [sh("echo never")], 60)
        await early.cancel()  # before it even started
        (early_result,) = await early.results()
        after = await (await net.exec(activity, [sh("echo still here")], 10)).results()
        await net.terminate_agreement(agreement, "done")
    assert result.result == "Error" and "cancelled" in (result.message or "")
    assert early_result.result == "Error" and "cancelled" in (early_result.message or "")
    assert after[0].stdout == "still here\n"


async def test_a_batch_timeout_is_an_error_result() -> None:
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        agreement, activity = await ready_activity(net, demand)
        (result,) = await (await net.exec(activity, [sh("sleep 60")], 0.3)).results()
        await net.terminate_agreement(agreement, "done")
    assert result.result == "Error" and "timed out" in (result.message or "")
