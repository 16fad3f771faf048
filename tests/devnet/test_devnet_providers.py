"""``workgen devnet up`` gives a working Golem network: its Python providers serve a requestor.

The devnet is driven only through the command line, as a user would (``up``, then ``down``), and
the requestor is the test suite's REST requestor (:mod:`support.requestor`), which talks to the
devnet's requestor node with the settings of ``devnet.env`` alone: nothing of workgen's own
requestor is involved. After ``down``, every process the devnet recorded (daemons and agents),
and every process those had started, must be gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from support.requestor import RestRequestor, iso
from support.yagna import pid_alive
from workgen.devnet import ProcessRef, YagnaNotFound, find_yagna

try:
    find_yagna()
except YagnaNotFound as exc:  # pragma: no cover - the test extra installs golem-node
    pytest.skip(str(exc), allow_module_level=True)

WORKGEN = Path(sys.executable).parent / "workgen"
NAME = "golem.node.id.name"
OFFERS_TIMEOUT_S = 60.0  # yagna broadcasts offers every few seconds; ~5 s is usual
CYCLE_TIMEOUT_S = 150.0


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Replaces the suite-wide sandbox leak check: it sees sandbox processes machine-wide, so
    other suites running meanwhile would fail it here. This test checks itself that nothing the
    devnet started (its daemons, its agents and their children) survives ``down``."""
    yield


def workgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(WORKGEN), "devnet", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def read_env(path: Path) -> dict[str, str]:
    """The ``export NAME=value`` lines of an env file, as a shell would read them."""
    env = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


def recorded(state: dict[str, Any]) -> list[ProcessRef]:
    """Every process of a ``devnet.json``: the daemons and the provider agents."""
    return [ProcessRef(int(p["pid"]), p["start_time"]) for p in state["nodes"] + state["agents"]]


def descendants(processes: list[ProcessRef]) -> list[ProcessRef]:
    """The processes below ``processes`` (children, grandchildren, ...), by ``/proc`` PPid."""
    parents: dict[int, tuple[int, int]] = {}  # pid: (ppid, start time)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()  # the name (field 2) may hold spaces
        parents[int(entry)] = (int(fields[1]), int(fields[19]))
    found: dict[int, ProcessRef] = {}
    frontier = {p.pid for p in processes}
    while frontier:
        frontier = {pid for pid, (ppid, _) in parents.items()
                    if ppid in frontier and pid not in found}
        found |= {pid: ProcessRef(pid, parents[pid][1]) for pid in frontier}
    return list(found.values())


def alive(process: ProcessRef) -> bool:
    """Running: not a zombie (see ``pid_alive``), and not a recycled PID either."""
    return pid_alive(process.pid) and process.running()


def bring_down(directory: Path) -> tuple[subprocess.CompletedProcess[str] | None, list[int]]:
    """``workgen devnet down``; returns its outcome and the PIDs of the devnet's processes (and
    of their children) that survived it, after killing those, so that nothing is left behind
    even when ``down`` failed."""
    state_path = directory / "devnet.json"
    if not state_path.exists():
        return None, []  # `up` failed, and it cleans up after itself
    processes = recorded(json.loads(state_path.read_text()))
    processes += descendants(processes)
    down = workgen("down", "--dir", str(directory))
    survivors = [p for p in processes if alive(p)]
    for process in survivors:
        process.signal(signal.SIGKILL)
        process.wait(5.0)
    return down, [p.pid for p in survivors]


async def offers_of_every_provider(req: RestRequestor, subscription: str,
                                   count: int) -> dict[str, dict[str, Any]]:
    """The ``Initial`` proposals on ``subscription``, by issuer, until ``count`` issuers."""
    offers: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(OFFERS_TIMEOUT_S):
        while len(offers) < count:
            offer = await req.next_proposal(subscription, "Initial")
            offers.setdefault(offer["issuerId"], offer)
    return offers


async def full_cycle(env: dict[str, str], state: dict[str, Any]) -> None:
    """Offers from both providers, then one agreement, activity, run, teardown and invoice."""
    assert env["YAGNA_SUBNET"] == "public"
    providers = {n["node_id"]: n["name"] for n in state["nodes"] if n["role"] == "provider"}
    req = RestRequestor(env["YAGNA_API_URL"], env["YAGNA_APPKEY"])
    try:
        await req.allocate()
        start = iso(-1)
        subscription, demand = await req.demand(env["YAGNA_SUBNET"])
        offers = await offers_of_every_provider(req, subscription, len(providers))
        # Each daemon's offer is its own agent's: devnet-<node name> on <node id>.
        assert {issuer: o["properties"][NAME] for issuer, o in offers.items()} == {
            node_id: f"devnet-{name}" for node_id, name in providers.items()}

        chosen = next(o for o in offers.values() if o["properties"][NAME] == "devnet-provider-1")
        await req.call("POST", f"/market-api/v1/demands/{subscription}/proposals/"
                               f"{chosen['proposalId']}", demand)
        draft = await req.next_proposal(subscription, "Draft")
        assert draft["issuerId"] == chosen["issuerId"]
        agreement: str = await req.call("POST", "/market-api/v1/agreements",
                                        {"proposalId": draft["proposalId"], "validTo": iso(3600)})
        await req.call("POST", f"/market-api/v1/agreements/{agreement}/confirm", expect=204)
        await req.call("POST", f"/market-api/v1/agreements/{agreement}/wait", expect=204,
                       timeout=30)

        activity = await req.create_activity(agreement)
        batch = await req.exec(activity, [
            {"deploy": {}}, {"start": {}},
            {"run": {"entry_point": "/bin/echo", "args": ["hi"],
                     "capture": {"stdout": {"atEnd": {"format": "str"}}}}},
        ])
        results = await req.results(activity, batch, 2)
        assert [r["result"] for r in results] == ["Ok", "Ok", "Ok"], results
        assert results[2]["stdout"] == "hi\n"

        await req.destroy(activity)
        await req.call("POST", f"/market-api/v1/agreements/{agreement}/terminate",
                       {"message": "done"})
        invoice = await req.accept_invoice(start, agreement)
        assert invoice["issuerId"] == chosen["issuerId"]
        allocation = await req.call("GET", f"/payment-api/v1/allocations/{req.allocation_id}")
        assert Decimal(allocation["spentAmount"]) == Decimal(invoice["amount"]) > 0
    finally:
        await req.aclose()


async def run_cycle(env: dict[str, str], state: dict[str, Any]) -> None:
    async with asyncio.timeout(CYCLE_TIMEOUT_S):
        await full_cycle(env, state)


@pytest.mark.timeout(240)
def test_a_requestor_uses_the_python_providers_of_a_devnet_from_the_cli(tmp_path: Path) -> None:
    directory = tmp_path / "devnet"
    try:
        up = workgen("up", "--providers", "2", "--dir", str(directory))
        assert up.returncode == 0, up.stderr
        state = json.loads((directory / "devnet.json").read_text())
        # The image registry (on the requestor's side), then a provider agent per node.
        assert [(a["name"], a["node"]) for a in state["agents"]] == [
            ("image-registry", "requestor"), ("agent-provider-1", "provider-1"),
            ("agent-provider-2", "provider-2")]
        assert all(alive(p) for p in recorded(state))
        registry = read_env(directory / "devnet.env")["GOLEM_REGISTRY_URL"]
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{registry}/v1/image/info?tag=no/such:1", timeout=10)
        assert missing.value.code == 404
        asyncio.run(run_cycle(read_env(directory / "devnet.env"), state))
    finally:
        down, survivors = bring_down(directory)
    assert down is not None and down.returncode == 0, down
    assert "is down" in down.stdout
    assert not survivors, f"still running after `workgen devnet down`: pids {survivors}"
    assert not directory.exists()


LATE_S = 8.0
"""Past yagna's first offer broadcast (5 s after publishing, by default): a node whose first
demand comes later would, with yagna's defaults, wait for the cyclic rebroadcast (minutes)."""
LATE_OFFERS_TIMEOUT_S = 20.0


async def late_demand_sees_every_offer(env: dict[str, str], providers: int) -> float:
    req = RestRequestor(env["YAGNA_API_URL"], env["YAGNA_APPKEY"])
    try:
        await req.allocate()
        subscription, _ = await req.demand(env["YAGNA_SUBNET"])
        started = asyncio.get_running_loop().time()
        offers: set[str] = set()
        async with asyncio.timeout(LATE_OFFERS_TIMEOUT_S):
            while len(offers) < providers:
                offers.add((await req.next_proposal(subscription, "Initial"))["issuerId"])
        return asyncio.get_running_loop().time() - started
    finally:
        await req.aclose()


@pytest.mark.timeout(120)
def test_a_demand_made_well_after_up_sees_every_offer_at_once(tmp_path: Path) -> None:
    """The README's flow: `devnet up`, and a requestor started whenever the user gets to it.
    The time elapsed between the two is the scenario itself, hence the wait."""
    directory = tmp_path / "devnet"
    try:
        up = workgen("up", "--providers", "2", "--dir", str(directory))
        assert up.returncode == 0, up.stderr
        time.sleep(LATE_S)
        took = asyncio.run(late_demand_sees_every_offer(read_env(directory / "devnet.env"), 2))
        print(f"a demand made {LATE_S:g} s after up saw both offers in {took:.2f} s")
    finally:
        down, survivors = bring_down(directory)
    assert down is not None and down.returncode == 0, down
    assert not survivors, survivors
