"""Benchmark: one-command scripts, one after the other, through a devnet and through the local
network, on one activity each.

* devnet: ``Devnet.up(providers=1)`` and its Python provider (real yagna daemons on loopback),
  driven by the test suite's REST requestor (``tests/support/requestor.py``) on the requestor
  node: each script is ``POST .../exec`` then the long poll of ``GET .../exec/{batch}`` until its
  command is done, so it crosses requestor daemon -> provider daemon -> agent and back.
* local: the same scripts through ``LocalNetwork(providers=1)``'s backend verbs, ``exec`` then
  ``results()``, in process.

Each script is ``/bin/sh -c date`` with stdout captured; a few unmeasured scripts go first.
Printed: scripts per second (N over the wall time of all N) and per-script latency (median,
p95), for both, and the devnet / local ratio. The devnet is brought down at the end whatever
happens. ``--gftp`` also runs ``bench/gftp.py`` on a small file (one round).

    .venv/bin/python bench/scripts.py [-n 200] [--tasks 200] [--gftp]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's REST requestor

from support.requestor import RestRequestor  # noqa: E402
from workgen.backends.base import Demand, Proposal  # noqa: E402
from workgen.backends.local import LocalNetwork  # noqa: E402
from workgen.devnet import SUBNET, Devnet  # noqa: E402
from workgen.protocol.exescript import AtEnd, Capture, Deploy, Run, Start  # noqa: E402
from workgen.protocol.results import utc_now  # noqa: E402

SCRIPT = Run("/bin/sh", ("-c", "date"), capture=Capture(stdout=AtEnd(format="str")))
WARMUP = 3


@dataclass(frozen=True)
class Figures:
    label: str
    latencies: list[float]  # seconds, one per script
    elapsed: float  # wall time of all scripts

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p95_ms(self) -> float:
        return statistics.quantiles(self.latencies, n=20)[18] * 1000

    def row(self) -> str:
        return (f"{self.label:<28} {self.rate:10.1f} {self.median_ms:11.2f} "
                f"{self.p95_ms:9.2f}")


async def timed(label: str, n: int, one_script: Callable[[], Awaitable[None]]) -> Figures:
    for _ in range(WARMUP):
        await one_script()
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        began = time.perf_counter()
        await one_script()
        latencies.append(time.perf_counter() - began)
    return Figures(label, latencies, time.perf_counter() - start)


async def through_devnet(n: int, api_url: str, appkey: str) -> Figures:
    req = RestRequestor(api_url, appkey)
    try:
        await req.allocate()
        subscription, demand = await req.demand(SUBNET)
        async with asyncio.timeout(60):  # offers take a few seconds to be broadcast
            agreement = await req.agree(subscription, demand)
        activity = await req.create_activity(agreement)
        batch = await req.exec(activity, [Deploy().to_json(), Start().to_json()])
        results = await req.results(activity, batch, 1)
        assert [r["result"] for r in results] == ["Ok", "Ok"], results

        async def one_script() -> None:
            batch = await req.exec(activity, [SCRIPT.to_json()])
            results = await req.results(activity, batch, 0)
            assert results[-1]["result"] == "Ok" and results[-1]["stdout"], results

        figures = await timed("devnet (yagna + agent)", n, one_script)
        await req.destroy(activity)
        await req.call("POST", f"/market-api/v1/agreements/{agreement}/terminate",
                       {"message": "benchmark done"})
        return figures
    finally:
        await req.aclose()


async def through_local_network(n: int) -> Figures:
    async with LocalNetwork(providers=1) as net:
        allocation = await net.create_allocation(Decimal(10))
        decoration = await net.demand_decoration(allocation)
        demand = Demand(
            properties={"golem.srv.comp.expiration": int(time.time() * 1000) + 3_600_000,
                        "golem.node.debug.subnet": SUBNET, **decoration.properties},
            constraints=f"(&(golem.runtime.name=vm){decoration.constraints})",
        )
        subscription = await net.subscribe_demand(demand)
        events = aiter(subscription)
        offer = await anext(events)
        assert isinstance(offer, Proposal) and offer.state == "Initial", offer
        await net.counter_proposal(subscription, offer, demand)
        draft = await anext(events)
        assert isinstance(draft, Proposal) and draft.state == "Draft", draft
        await subscription.aclose()
        agreement = await net.make_agreement(draft, utc_now() + timedelta(hours=1))
        activity = await net.create_activity(agreement)
        batch = await net.exec(activity, [Deploy(), Start()], timeout=30)
        assert all(r.ok for r in await batch.results())

        async def one_script() -> None:
            batch = await net.exec(activity, [SCRIPT], timeout=30)
            results = await batch.results()
            assert results[-1].ok and results[-1].stdout, results

        figures = await timed("local network (in process)", n, one_script)
        await net.destroy_activity(activity)
        await net.terminate_agreement(agreement, "benchmark done")
        return figures


def devnet_figures(n: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="devnet-bench-") as tmp:
        devnet = Devnet(Path(tmp) / "devnet")
        try:
            start = time.perf_counter()
            state = devnet.up(providers=1)
            devnet.start_providers()
            print(f"devnet up (1 provider, agent started) in {time.perf_counter() - start:.2f} s")
            return asyncio.run(through_devnet(n, state.requestor.api_url,
                                              state.requestor.appkey))
        finally:
            if devnet.state_path.exists():
                devnet.down()


async def _task_worker(context: Any, tasks: Any) -> Any:
    async for task in tasks:
        script = context.new_script()
        future_result = script.run("/bin/sh", "-c", "date")
        yield script
        task.accept_result(result=await future_result)


async def _tasks_per_second(backend: Any, n: int, workers: int) -> float:
    """N trivial tasks end to end through ``execute_tasks``; the clock starts at the first one
    accepted, so the market's start-up (offers travel for seconds on yagna) is left out."""
    from workgen import Golem, ProgressDisplay, vm

    async with Golem(budget=10, backend=backend,
                     event_consumer=ProgressDisplay(io.StringIO(), live=False)) as golem:
        start = 0.0
        done = 0
        async for _ in golem.execute_tasks(_task_worker, range(n + 1), payload=vm.repo(),
                                           max_workers=workers):
            done += 1
            if done == 1:
                start = time.perf_counter()
        return n / (time.perf_counter() - start)


def execute_tasks_figures(n: int, providers: int) -> tuple[float, float]:
    """Tasks/s through execute_tasks on a devnet with ``providers`` agents, and locally."""
    from workgen.backends.yagna import Yagna

    with tempfile.TemporaryDirectory(prefix="devnet-bench-") as tmp:
        devnet = Devnet(Path(tmp) / "devnet")
        try:
            state = devnet.up(providers=providers)
            devnet.start_providers()
            requestor = state.requestor
            yagna = Yagna(api_url=requestor.api_url, appkey=requestor.appkey,
                          gsb_url=requestor.gsb_url, subnet=state.subnet)
            on_devnet = asyncio.run(_tasks_per_second(yagna, n, providers))
        finally:
            if devnet.state_path.exists():
                devnet.down()
    local = asyncio.run(_tasks_per_second(LocalNetwork(providers=providers), n, providers))
    return on_devnet, local


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="scripts per backend (default 200)")
    parser.add_argument("--tasks", type=int, default=200,
                        help="tasks through execute_tasks per backend (default 200)")
    parser.add_argument("--gftp", action="store_true",
                        help="also run bench/gftp.py on a 64 MiB file, one round")
    args = parser.parse_args()
    if args.n < 2:
        parser.error("-n must be at least 2 (for a p95)")

    devnet = devnet_figures(args.n)
    local = asyncio.run(through_local_network(args.n))
    print(f"{args.n} sequential scripts `{' '.join((SCRIPT.entry_point, *SCRIPT.args))}`, "
          f"one command each, stdout captured ({WARMUP} unmeasured first)")
    print(f"{'':<28} {'scripts/s':>10} {'median ms':>11} {'p95 ms':>9}")
    print(devnet.row())
    print(local.row())
    print(f"ratio devnet / local: {devnet.rate / local.rate:.3f} in scripts/s, "
          f"{devnet.median_ms / local.median_ms:.1f}x the median latency")

    on_devnet, local_rate = execute_tasks_figures(args.tasks, 2)
    print(f"{args.tasks} tasks through execute_tasks, 2 providers: devnet {on_devnet:.1f} tasks/s, "
          f"local network {local_rate:.1f} tasks/s, ratio {on_devnet / local_rate:.3f}")

    if args.gftp:
        sys.path.insert(0, str(ROOT / "bench"))
        from gftp import MIB, run as gftp_run

        asyncio.run(gftp_run(64 * MIB, 1, 1024 * 1024, 8))
    else:
        print("GFTP throughput through two daemons: run .venv/bin/python bench/gftp.py "
              "(or this with --gftp)")


if __name__ == "__main__":
    main()
