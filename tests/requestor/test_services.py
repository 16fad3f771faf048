"""The services API end to end, on both networks: instances that live across batches, their
handlers in order, their states, restarts, stops, messages and payments."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from support.networks import Network, Recorder
from workgen import Golem, LocalNetwork, Service, ServiceState, events, vm

OUT = "/golem/work/ticks.txt"


class Ticker(Service):
    """Its start leaves a process ticking into a file; its run reads the file."""

    def __init__(self, name: str = "ticker") -> None:
        super().__init__()
        self.name = name
        self.calls: list[str] = []
        self.reads: list[int] = []
        self.read = asyncio.Event()

    @staticmethod
    async def get_payload() -> Any:
        return await vm.repo()

    async def start(self) -> AsyncIterator[Any]:
        self.calls.append("start")
        async for script in super().start():
            yield script
        script = self._ctx.new_script()  # type: ignore[union-attr]
        script.run("/bin/sh", "-c",
                   f"n=0; while true; do n=$((n+1)); echo $n > {OUT}; sleep 0.1; done &")
        yield script

    async def run(self) -> AsyncIterator[Any]:
        self.calls.append("run")
        while True:
            script = self.ctx.new_script()  # type: ignore[union-attr]
            ticks = script.run("/bin/cat", OUT)
            yield script
            self.reads.append(int((await ticks).stdout.strip() or 0))
            if len(self.reads) >= 2 and self.reads[-1] > self.reads[0]:
                self.read.set()
            await asyncio.sleep(0.2)

    async def shutdown(self) -> AsyncIterator[Any]:
        self.calls.append("shutdown")
        async for script in super().shutdown():
            yield script


ENDED = (ServiceState.terminated, ServiceState.unresponsive)


def _paid_every_agreement(rec: Recorder) -> None:
    made = {e.agreement_id for e in rec.of(events.AgreementCreated)}
    ended = {e.agreement_id for e in rec.of(events.AgreementTerminated)}
    paid = {e.agreement_id for e in rec.of(events.InvoiceAccepted)}
    assert made and made == ended == paid, (made, ended, paid)


async def test_instances_live_across_batches_in_handler_order(net: Network) -> None:
    rec = Recorder()
    async with net.golem(rec) as golem:
        cluster = await golem.run_service(Ticker, instance_params=[{"name": "a"},
                                                                   {"name": "b"}])
        assert [s.name for s in cluster.instances] == ["a", "b"]
        for instance in cluster.instances:
            await instance.read.wait()  # its background process went on between batches
        assert {s.state for s in cluster} == {ServiceState.running}
        assert len({s.provider_name for s in cluster}) == 2
        await cluster.stop()
        for instance in cluster.instances:
            assert instance.calls == ["start", "run", "shutdown"]
            assert instance.state is ServiceState.terminated and not instance.is_available
            assert instance.exc_info is None
    states = [e.state for e in rec.of(events.ServiceStateChanged) if e.instance_id ==
              cluster.instances[0].id]
    assert states == ["pending", "starting", "running", "stopping", "terminated"]
    _paid_every_agreement(rec)


class Echo(Service):
    """Answers each message from the requestor with its line as seen inside the sandbox."""

    @staticmethod
    async def get_payload() -> Any:
        return await vm.repo()

    async def run(self) -> AsyncIterator[Any]:
        while True:
            signal = await self._listen()
            script = self._ctx.new_script()  # type: ignore[union-attr]
            out = script.run("/bin/echo", f"got {signal.message}")
            yield script
            await self._respond((await out).stdout.strip(), response_to=signal)


async def test_messages_go_both_ways(net: Network) -> None:
    async with net.golem(Recorder(), providers=1) as golem:
        cluster = await golem.run_service(Echo)
        (echo,) = cluster.instances
        await echo.send_message("hi")
        echo.send_message_nowait("there")
        first, second = await echo.receive_message(), await echo.receive_message()
        assert (first.message, second.message) == ("got hi", "got there")
        assert first.response_to is not None and first.response_to.message == "hi"
        assert echo.receive_message_nowait() is None
        await cluster.stop()


class FailsFirstStart(Service):
    """Its start fails on the first provider it is tried on."""

    tried: list[str] = []
    resets = 0

    @staticmethod
    async def get_payload() -> Any:
        return await vm.repo()

    async def start(self) -> AsyncIterator[Any]:
        async for script in super().start():
            yield script
        assert self.provider_name is not None
        self.tried.append(self.provider_name)
        script = self._ctx.new_script()  # type: ignore[union-attr]
        script.run("/bin/sh", "-c", "exit 7" if len(self.tried) == 1 else "true")
        yield script

    async def reset(self) -> None:
        type(self).resets += 1


async def test_an_instance_that_fails_to_start_is_respawned_on_another_provider(
        net: Network) -> None:
    FailsFirstStart.tried, FailsFirstStart.resets = [], 0
    rec = Recorder()
    async with net.golem(rec) as golem:
        cluster = await golem.run_service(FailsFirstStart)
        (instance,) = cluster.instances
        await instance.wait_for(ServiceState.running)
        assert len(FailsFirstStart.tried) == 2 and FailsFirstStart.tried[0] != \
            FailsFirstStart.tried[1]
        assert FailsFirstStart.resets == 1 and instance.started_successfully
        await cluster.stop()
    states = [e.state for e in rec.of(events.ServiceStateChanged)]
    assert states[:4] == ["pending", "starting", "pending", "starting"]
    (failed,) = [e for e in rec.of(events.AgreementTerminated)
                 if e.reason.startswith("failed to start")]
    assert "exit" in failed.reason or "7" in failed.reason
    _paid_every_agreement(rec)


async def test_without_respawn_a_failed_start_is_final(net: Network) -> None:
    FailsFirstStart.tried, FailsFirstStart.resets = [], 0
    async with net.golem(Recorder()) as golem:
        cluster = await golem.run_service(FailsFirstStart, respawn_unstarted_instances=False)
        (instance,) = cluster.instances
        await instance.wait_for(ServiceState.terminated)
        await cluster.stop()
    assert len(FailsFirstStart.tried) == 1 and FailsFirstStart.resets == 0
    assert not instance.started_successfully and instance.exc_info is not None


async def test_a_running_instance_whose_sandbox_dies_is_reported_and_ended(
        net: Network) -> None:
    rec = Recorder()
    async with net.golem(rec) as golem:
        cluster = await golem.run_service(Ticker, num_instances=2)
        victim, other = cluster.instances
        await victim.read.wait()
        await other.read.wait()
        assert victim.ctx is not None and victim.provider_name is not None
        net.kill_sandbox(victim.ctx.id, victim.provider_name)
        await victim.wait_for(*ENDED)
        assert other.state is ServiceState.running  # the other one is not touched
        await cluster.stop()
    assert victim.state in (ServiceState.unresponsive, ServiceState.terminated)
    assert victim.exc_info is not None
    assert other.calls == ["start", "run", "shutdown"]
    _paid_every_agreement(rec)


async def test_run_service_checks_what_it_is_given() -> None:
    async with Golem(budget=1, backend=_local(), event_consumer=lambda e: None) as golem:
        with pytest.raises(TypeError, match="Service subclass"):
            await golem.run_service(object)  # type: ignore[type-var]
        with pytest.raises(ValueError, match="no payload"):
            await golem.run_service(Service)
        with pytest.raises(ValueError, match="instance_params has 1 entries for 2"):
            await golem.run_service(Ticker, num_instances=2, instance_params=[{}])
        with pytest.raises(ValueError, match="num_instances"):
            await golem.run_service(Ticker, num_instances=-1)


def _local() -> Any:
    return LocalNetwork(1)


@pytest.mark.watchdog(150)
async def test_an_instance_outliving_the_debit_note_interval_has_its_notes_accepted(
        net: Network) -> None:
    rec = Recorder()
    three_notes = asyncio.Event()
    rec.on_event.append(lambda e: len(rec.of(events.DebitNoteAccepted)) >= 3
                        and three_notes.set())
    # Debit notes every second: the devnet's providers send them so, and so does this network.
    golem = (Golem(budget=1, backend=LocalNetwork(1, debit_note_interval=1.0),
                   event_consumer=rec) if net.kind == "local" else net.golem(rec, providers=1))
    async with golem:
        cluster = await golem.run_service(Ticker)
        (instance,) = cluster.instances
        await instance.read.wait()
        await three_notes.wait()
        await cluster.stop()
    assert not rec.of(events.DebitNoteRejected)
    _paid_every_agreement(rec)


def test_a_yapapi_service_runs_with_only_its_imports_changed(tmp_path: Any) -> None:
    """The yapapi requestor the interop tests run against our provider, with its three yapapi
    imports replaced by one of workgen's, runs on the local network."""
    source = (Path(__file__).parents[1] / "interop" / "yapapi_service.py").read_text()
    yapapi_imports = ("from yapapi import Golem\nfrom yapapi.payload import vm\n"
                      "from yapapi.services import Service\n")
    assert yapapi_imports in source
    script = tmp_path / "service.py"
    script.write_text(source.replace(yapapi_imports, "from workgen import Golem, Service, vm\n"))
    # yapapi's example names its image by hash; the local network runs it on the host image.
    env = {**os.environ, "WORKGEN_DEV_IMAGES": "1", "IMAGE_URL": "http://127.0.0.1:9/image"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("STATE running") for line in lines), lines
    assert sum(line.startswith("DATE ") for line in lines) >= 3
    assert lines[-1] == "STOPPED terminated"
