"""The Python provider on real yagna daemons, driven by a requestor written against the REST API.

Two daemons run offline (the requestor's node is the central-net hub, the provider's node joins
it); our provider agent serves the provider's node. Everything the requestor sees comes through
the daemons: the market, the agreement, the activity API (long poll and SSE), payments.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from support.requestor import RestRequestor, iso
from workgen.gftp import open_upload, publish
from workgen.gsb import open_gsb
from support.yagna import YagnaNode, start_yagna
from workgen.protocol.pricing import LinearPricing
from workgen.protocol.properties import USAGE_CPU_SEC, USAGE_DURATION_SEC
from workgen.provider.offer import ProviderConfig
from workgen.provider.yagna import run_provider

CONFIG = ProviderConfig(name="py-provider", cpu_threads=1, mem_gib=1.0, storage_gib=2.0,
                        pricing=LinearPricing((0.001, 0.002, 0.0),
                                              (USAGE_DURATION_SEC, USAGE_CPU_SEC)))


@contextlib.asynccontextmanager
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[YagnaNode, YagnaNode]]:
    async with start_yagna(tmp_path, name="requestor") as hub:
        async with start_yagna(tmp_path, hub_gsb_port=hub.gsb_port, name="provider") as node:
            yield hub, node


@contextlib.asynccontextmanager
async def provider_in_process(node: YagnaNode, subnet: str, **options: Any
                              ) -> AsyncIterator[None]:
    task = asyncio.ensure_future(run_provider(
        CONFIG, api_url=node.api_url, appkey=node.appkey, gsb_url=node.gsb_url, subnet=subnet,
        debit_note_interval=1.0, **options))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.timeout(200)
@pytest.mark.watchdog(180)
async def test_full_cycle_through_real_daemons(tmp_path: Path) -> None:
    subnet = "t" + secrets.token_hex(4)
    async with two_nodes(tmp_path) as (hub, node), provider_in_process(node, subnet):
        req = RestRequestor(hub.api_url, hub.appkey)
        try:
            await req.allocate()
            start = iso(-1)
            subscription, demand = await req.demand(subnet)
            agreement = await req.agree(subscription, demand)
            activity = await req.create_activity(agreement)
            batch = await req.exec(activity, [
                {"deploy": {}}, {"start": {}},
                {"run": {"entry_point": "/bin/sh", "args": ["-c", "echo $WHO; uname -s"],
                         "env": {"WHO": "from-env"},
                         "capture": {"stdout": {"atEnd": {"format": "str"}}}}},
            ])
            results = await req.results(activity, batch, 2)
            assert [r["result"] for r in results] == ["Ok", "Ok", "Ok"], results
            # yagna drops the run's env field (not in its model); the command still runs.
            assert results[2]["stdout"].endswith("Linux\n")

            # Files both ways over GFTP, published and received on the requestor's own node.
            source = tmp_path / "input.bin"
            source.write_bytes(os.urandom(3 << 20))
            back = tmp_path / "output.bin"
            async with open_gsb(hub.gsb_url) as bus:
                published = await publish(bus, hub.node_id, source)
                receiver = await open_upload(bus, hub.node_id, back)
                moved = await req.exec(activity, [
                    {"transfer": {"from": published.url, "to": "container:/golem/input/in.bin"}},
                    {"run": {"entry_point": "/bin/sh", "args": [
                        "-c", "cp /golem/input/in.bin /golem/output/out.bin"]}},
                    {"transfer": {"from": "container:/golem/output/out.bin", "to": receiver.url}},
                ])
                results = await req.results(activity, moved, 2)
                assert [r["result"] for r in results] == ["Ok", "Ok", "Ok"], results
                await receiver.wait()
                await published.aclose()
                await receiver.aclose()
            assert back.read_bytes() == source.read_bytes()

            streamed = await req.exec(activity, [
                {"run": {"entry_point": "/bin/sh", "args": ["-c", "echo one; echo two"],
                         "capture": {"stdout": {"stream": {}}}}}])
            kinds = []
            async for event in req.events(activity, streamed):
                kinds.append(next(iter(event["kind"])))
                if "finished" in event["kind"]:
                    break
            assert kinds[0] == "started" and kinds[-1] == "finished" and "stdout" in kinds

            note = await req.accept_debit_note(start)
            assert Decimal(note["totalAmountDue"]) > 0
            state = await req.call("GET", f"/activity-api/v1/activity/{activity}/state")
            assert state["state"][0] == "Ready"
            await req.destroy(activity)
            await req.call("POST", f"/market-api/v1/agreements/{agreement}/terminate",
                           {"message": "done"})
            invoice = await req.accept_invoice(start, agreement)
            assert Decimal(invoice["amount"]) >= Decimal(note["totalAmountDue"])
            allocation = await req.call("GET",
                                        f"/payment-api/v1/allocations/{req.allocation_id}")
            assert Decimal(allocation["spentAmount"]) == Decimal(invoice["amount"])
        finally:
            await req.aclose()


@contextlib.asynccontextmanager
async def provider_process(node: YagnaNode, subnet: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """The provider as its own process (``workgen provider run``), stopped by PID."""
    env = {**os.environ, "YAGNA_API_URL": node.api_url, "YAGNA_APPKEY": node.appkey,
           "GSB_URL": node.gsb_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workgen.cli.main", "provider", "run", "--name", "py-provider",
        "--subnet", subnet, "--debit-note-interval", "1", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.mark.timeout(200)
@pytest.mark.watchdog(180)
async def test_provider_killed_mid_command_makes_the_activity_broken(tmp_path: Path) -> None:
    subnet = "t" + secrets.token_hex(4)
    async with two_nodes(tmp_path) as (hub, node), provider_process(node, subnet) as provider:
        req = RestRequestor(hub.api_url, hub.appkey)
        try:
            await req.allocate()
            subscription, demand = await req.demand(subnet)
            agreement = await req.agree(subscription, demand)
            activity = await req.create_activity(agreement)
            batch = await req.exec(activity, [
                {"deploy": {}}, {"start": {}},
                {"run": {"entry_point": "/bin/sleep", "args": ["60"]}}])
            await req.results(activity, batch, 1)  # deployed and started: the sleep runs
            provider.send_signal(signal.SIGKILL)
            await provider.wait()
            # The requestor's long poll for the running command must end in an error (the
            # daemon's own timeouts), never hang and never report success.
            statuses = []
            while True:
                answer = await req.http.get(
                    f"/activity-api/v1/activity/{activity}/exec/{batch}",
                    params={"pollTimeout": 3, "commandIndex": 2, "timeout": 3})
                statuses.append(answer.status_code)
                if answer.status_code == 200 and any(r["index"] == 2 for r in answer.json()):
                    assert [r["result"] for r in answer.json() if r["index"] == 2] == ["Error"]
                    break
                if answer.status_code not in (200, 408):
                    break
            assert statuses[-1] >= 500 or statuses[-1] == 200, statuses
        finally:
            await req.aclose()


@pytest.mark.timeout(120)
@pytest.mark.watchdog(100)
async def test_provider_reports_its_daemon_going_away(tmp_path: Path) -> None:
    subnet = "t" + secrets.token_hex(4)
    async with two_nodes(tmp_path) as (hub, node):
        async with provider_process(node, subnet) as provider:
            await node.stop()
            async with asyncio.timeout(60):
                code = await provider.wait()
    assert code == 1


# -- agreement hygiene and payment terms, as ya-provider keeps them ---------------------------

@contextlib.asynccontextmanager
async def rest_requestor(tmp_path: Path, **options: Any
                         ) -> AsyncIterator[tuple[RestRequestor, str]]:
    """Two daemons, our provider on one (with ``options``), and a funded REST requestor on the
    other; yields the requestor and the subnet."""
    subnet = "t" + secrets.token_hex(4)
    async with two_nodes(tmp_path) as (hub, node), provider_in_process(node, subnet, **options):
        req = RestRequestor(hub.api_url, hub.appkey)
        try:
            await req.allocate()
            yield req, subnet
        finally:
            await req.aclose()


@pytest.mark.timeout(200)
@pytest.mark.watchdog(180)
async def test_an_agreement_with_no_activity_is_broken_and_the_provider_offers_again(
        tmp_path: Path) -> None:
    async with rest_requestor(tmp_path, idle_timeout=2.0) as (req, subnet):
        start = iso(-1)
        subscription, demand = await req.demand(subnet)
        agreement = await req.agree(subscription, demand)  # and never an activity
        event = await req.terminated(agreement, start)
        assert event["reason"]["golem.provider.code"] == "NoActivity", event
        # Free again: the provider's fresh offer reaches a new demand (a requestor started
        # afterwards) within seconds, and is agreed on.
        await req.call("DELETE", f"/market-api/v1/demands/{subscription}", expect=204)
        subscription, demand = await req.demand(subnet)
        again = await req.agree(subscription, demand)
        activity = await req.create_activity(again)
        batch = await req.exec(activity, [{"deploy": {}}, {"start": {}}])
        assert [r["result"] for r in await req.results(activity, batch, 1)] == ["Ok", "Ok"]
        await req.destroy(activity)


@pytest.mark.timeout(200)
@pytest.mark.watchdog(180)
async def test_debit_notes_unaccepted_past_the_deadline_break_the_agreement(
        tmp_path: Path) -> None:
    async with rest_requestor(tmp_path) as (req, subnet):
        start = iso(-1)
        # The requestor asks for a 5 s deadline and no mid-agreement payments.
        subscription, demand = await req.demand(
            subnet, **{"golem.com.payment.debit-notes.accept-timeout?": 5})
        agreement = await req.agree(subscription, demand)
        await req.create_activity(agreement)
        note = await req.next_debit_note(start)
        assert note["agreementId"] == agreement
        assert note.get("paymentDueDate") is None  # not payable: not negotiated
        event = await req.terminated(agreement, start)  # none accepted
        assert event["reason"]["golem.provider.code"] == "DebitNotesDeadline", event


@pytest.mark.timeout(200)
@pytest.mark.watchdog(180)
async def test_debit_notes_are_payable_when_mid_agreement_payments_were_negotiated(
        tmp_path: Path) -> None:
    async with rest_requestor(tmp_path) as (req, subnet):
        start = iso(-1)
        subscription, demand = await req.demand(
            subnet, **{"golem.com.scheme.payu.payment-timeout-sec?": 120})
        agreement = await req.agree(subscription, demand)
        activity = await req.create_activity(agreement)
        note = await req.accept_debit_note(start)
        assert note["agreementId"] == agreement and note.get("paymentDueDate")
        await req.destroy(activity)


DYING_REQUESTOR = """
import asyncio, sys
from workgen import Golem, events, vm
from workgen.backends.yagna import Yagna

api_url, appkey, gsb_url, subnet = sys.argv[1:5]

def report(event):
    # The first accepted debit note: the requestor keeps its side of the deadline.
    if isinstance(event, events.DebitNoteAccepted):
        print("ACCEPTED", event.agreement_id, flush=True)

async def worker(ctx, tasks):
    async for task in tasks:
        script = ctx.new_script()
        script.run("/bin/sleep", "600")
        yield script

async def main():
    backend = Yagna(api_url=api_url, appkey=appkey, gsb_url=gsb_url, subnet=subnet)
    async with Golem(budget=1, backend=backend, event_consumer=report) as golem:
        async for _ in golem.execute_tasks(worker, [1], payload=vm.repo()):
            pass

asyncio.run(main())
"""


@pytest.mark.timeout(200)
@pytest.mark.watchdog(180)
async def test_a_workgen_requestor_that_dies_loses_its_agreement_at_the_deadline(
        tmp_path: Path) -> None:
    """A workgen requestor agrees to the deadline the provider offers (at least 30 s), so when
    it is killed, the provider breaks the agreement then, instead of working on unpaid until
    it expires."""
    script = tmp_path / "requestor.py"
    script.write_text(DYING_REQUESTOR)
    subnet = "t" + secrets.token_hex(4)
    async with two_nodes(tmp_path) as (hub, node), \
            provider_in_process(node, subnet, accept_timeout=10.0):
        req = RestRequestor(hub.api_url, hub.appkey)  # reads the daemon after the process died
        try:
            start = iso(-1)
            process = await asyncio.create_subprocess_exec(
                sys.executable, str(script), hub.api_url, hub.appkey, hub.gsb_url, subnet,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            assert process.stdout is not None and process.stderr is not None
            try:
                line = await process.stdout.readline()
                assert line.startswith(b"ACCEPTED "), line + await process.stderr.read()
                agreement = line.split()[1].decode()
            finally:
                if process.returncode is None:
                    process.kill()
                await process.wait()
            killed = asyncio.get_running_loop().time()
            demand = (await req.call("GET", f"/market-api/v1/agreements/{agreement}"))["demand"]
            # The provider offered 10 s; a requestor takes no less than 30.
            assert demand["properties"][
                "golem.com.payment.debit-notes.accept-timeout?"] == 30, demand
            event = await req.terminated(agreement, start)
            assert event["reason"]["golem.provider.code"] == "DebitNotesDeadline", event
            # Broken for the notes sent after the requestor died, none it had to answer.
            assert asyncio.get_running_loop().time() - killed > 25
        finally:
            await req.aclose()
