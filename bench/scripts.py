"""Benchmark: one-command scripts, one after the other, through a devnet and through the local
network, on one activity each.

* devnet: ``Devnet.up(providers=1)`` and its Python provider (real yagna daemons on loopback).
  One activity, made through workgen's yagna backend, is driven two ways in turn:
  - the yagna backend's verbs, ``exec`` then ``results()``: the messages go over the requestor
    daemon's GSB straight to the provider's exe unit;
  - the daemon's REST API, as every other SDK drives it, through the test suite's REST
    requestor (``tests/support/requestor.py``): ``POST .../exec`` then the long poll of
    ``GET .../exec/{batch}`` until its command is done.
  Both cross requestor daemon -> provider daemon -> agent and back.
* local: the same scripts through ``LocalNetwork(providers=1)``'s backend verbs, in process.
* the GSB floor: the same two messages a script takes, ``Exec`` and ``GetExecBatchResults``
  (the same payloads, sent the same way and as the same identity), answered at once by a
  service this process registers on the provider's daemon, with a reply of a real one's size.
  It is what the two daemons and the GSB clients at both ends cost a script before any exe
  unit or command runs.

Each script is ``/bin/sh -c date`` with stdout captured; a few unmeasured scripts go first.
Printed: scripts per second (N over the wall time of all N) and per-script latency (median,
p95), for each way, and the devnet / local ratio. Then N more scripts the GSB floor's way, and N
the yagna backend's way, each with the CPU each process of the devnet spent per script (from
``/proc``): the requestor's daemon (the central-net hub), the provider's daemon, its agent, the
agent's sandboxes (the supervisor and the commands) and this process (the yagna backend; for
the floor, both ends of its calls). The devnet is brought
down at the end whatever happens. ``--gftp`` also runs ``bench/gftp.py`` on a small file (one round).

    .venv/bin/python bench/scripts.py [-n 200] [--tasks 200] [--gftp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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
from workgen.gsb import open_gsb  # noqa: E402
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
    (figures,) = await timed_together(n, {label: one_script})
    return figures


async def timed_together(n: int, ways: dict[str, Callable[[], Awaitable[None]]]
                         ) -> list[Figures]:
    """Each way's scripts, taken in turn (one of each, N times), so that a busy moment of the
    machine weighs on all of them alike."""
    for one_script in ways.values():
        for _ in range(WARMUP):
            await one_script()
    latencies: dict[str, list[float]] = {label: [] for label in ways}
    for _ in range(n):
        for label, one_script in ways.items():
            began = time.perf_counter()
            await one_script()
            latencies[label].append(time.perf_counter() - began)
    # Each way's wall time is its own scripts' time: they ran interleaved.
    return [Figures(label, xs, sum(xs)) for label, xs in latencies.items()]


async def one_activity(backend: Any, subnet: str, amount: Decimal) -> tuple[Any, Any]:
    """An agreement with the first provider that offers, and a deployed, started activity on
    it, made through ``backend``'s verbs."""
    allocation = await backend.create_allocation(amount)
    decoration = await backend.demand_decoration(allocation)
    demand = Demand(
        properties={"golem.srv.comp.expiration": int(time.time() * 1000) + 3_600_000,
                    "golem.node.debug.subnet": subnet, **decoration.properties},
        constraints=f"(&(golem.runtime.name=vm)(golem.node.debug.subnet={subnet})"
                    f"{decoration.constraints})",
    )
    subscription = await backend.subscribe_demand(demand)
    events = aiter(subscription)
    async with asyncio.timeout(60):  # offers take a few seconds to be broadcast on yagna
        while not isinstance(offer := await anext(events), Proposal) \
                or offer.state != "Initial":
            pass
        await backend.counter_proposal(subscription, offer, demand)
        while not isinstance(draft := await anext(events), Proposal) or draft.state != "Draft":
            pass
    await subscription.aclose()
    agreement = await backend.make_agreement(draft, utc_now() + timedelta(hours=1))
    activity = await backend.create_activity(agreement)
    batch = await backend.exec(activity, [Deploy(), Start()], timeout=60)
    assert all(r.ok for r in await batch.results())
    return agreement, activity


def backend_script(backend: Any, activity: Any) -> Callable[[], Awaitable[None]]:
    async def one_script() -> None:
        batch = await backend.exec(activity, [SCRIPT], timeout=30)
        results = await batch.results()
        assert results[-1].ok and results[-1].stdout, results
    return one_script


_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state is [0], ppid [1])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_by_process(processes: dict[str, int], sandboxes_of: int) -> dict[str, float]:
    """CPU seconds so far of each named process; and under "sandboxes", of every descendant of
    ``sandboxes_of`` with the children each reaped (a supervisor reaps its commands)."""
    cpu: dict[str, float] = {}
    for name, pid in processes.items():
        fields = _stat(pid)
        cpu[name] = (int(fields[11]) + int(fields[12])) / _TICKS
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat(int(entry))[1])
            except (OSError, IndexError):
                continue  # gone meanwhile
    below, total = {sandboxes_of}, 0.0
    for pid in sorted(parents):  # a child's pid is (nearly always) above its parent's
        if parents[pid] in below:
            below.add(pid)
            try:
                total += sum(int(x) for x in _stat(pid)[11:15]) / _TICKS
            except (OSError, IndexError):
                continue
    cpu["sandboxes (supervisor, commands)"] = total
    return cpu


async def cpu_per_script(n: int, one_script: Callable[[], Awaitable[None]],
                         processes: dict[str, int], agent: int) -> dict[str, float]:
    """Milliseconds of CPU per script of each process, over N scripts one after the other."""
    processes = {**processes, "this process (yagna backend)": os.getpid()}
    before = _cpu_by_process(processes, agent)
    for _ in range(n):
        await one_script()
    after = _cpu_by_process(processes, agent)
    return {name: (after[name] - before[name]) / n * 1000 for name in after}


FLOOR_SERVICE = "bench-floor"
"""Registered as ``/public/bench-floor`` on the provider's daemon, reached as the exe unit is:
``/from/<requestor>/to/<provider>/bench-floor/Exec``, the results over ``/transfer``."""


@contextlib.asynccontextmanager
async def gsb_floor(requestor_gsb: str, provider_gsb: str, requestor_id: str,
                    provider_id: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A script's two GSB calls, each answered at once by a service on the provider's node."""
    result = {"index": 0, "eventDate": "2026-01-01T00:00:00.000000Z", "result": "Ok",
              "stdout": "Thu Jan  1 00:00:00 UTC 2026\n", "stderr": None, "message": None,
              "isBatchFinished": True}

    async def answer(address: str, caller: str, payload: Any) -> Any:
        return payload["batchId"] if address.rsplit("/", 1)[-1] == "Exec" else [result]

    async with open_gsb(provider_gsb) as served, open_gsb(requestor_gsb) as bus:
        await served.register(f"/public/{FLOOR_SERVICE}", answer)
        base = f"from/{requestor_id}/to/{provider_id}/{FLOOR_SERVICE}"
        script = [SCRIPT.to_json()]

        async def one_script() -> None:
            batch_id = uuid.uuid4().hex
            await bus.call(f"/{base}/Exec", {"activityId": "a", "batchId": batch_id,
                                             "exeScript": script, "timeout": None}, timeout=6)
            results = await bus.call(f"/transfer/{base}/GetExecBatchResults",
                                     {"activityId": "a", "batchId": batch_id, "timeout": 30.0,
                                      "commandIndex": 0}, timeout=31)
            assert results[-1]["isBatchFinished"], results
        yield one_script


async def through_devnet(n: int, api_url: str, appkey: str, gsb_url: str,
                         processes: dict[str, int], agent: int, provider_gsb: str,
                         requestor_id: str, provider_id: str
                         ) -> tuple[list[Figures], dict[str, float], dict[str, float]]:
    """The same activity driven through workgen's yagna backend (exec and results over the
    daemon's GSB) and through the daemon's REST API (exec, then the long poll of the results),
    in turn with the GSB floor."""
    from workgen.backends.yagna import Yagna

    yagna = Yagna(api_url=api_url, appkey=appkey, gsb_url=gsb_url, subnet=SUBNET)
    req = RestRequestor(api_url, appkey)
    await yagna.start()
    try:
        agreement, activity = await one_activity(yagna, SUBNET, Decimal(1))

        async def rest_script() -> None:
            batch = await req.exec(activity.id, [SCRIPT.to_json()])
            results = await req.results(activity.id, batch, 0)
            assert results[-1]["result"] == "Ok" and results[-1]["stdout"], results

        async with gsb_floor(gsb_url, provider_gsb, requestor_id, provider_id) as floor:
            figures = await timed_together(n, {
                "devnet, yagna backend": backend_script(yagna, activity),
                "devnet, daemon's REST API": rest_script,
                "devnet, GSB floor": floor,
            })
            floor_cpu = await cpu_per_script(n, floor, processes, agent)
        cpu = await cpu_per_script(n, backend_script(yagna, activity), processes, agent)
        await yagna.destroy_activity(activity)
        await yagna.terminate_agreement(agreement, "benchmark done")
        return figures, cpu, floor_cpu
    finally:
        await req.aclose()
        await yagna.aclose()


async def through_local_network(n: int) -> Figures:
    async with LocalNetwork(providers=1) as net:
        agreement, activity = await one_activity(net, SUBNET, Decimal(10))
        figures = await timed("local network (in process)", n, backend_script(net, activity))
        await net.destroy_activity(activity)
        await net.terminate_agreement(agreement, "benchmark done")
        return figures


def devnet_figures(n: int) -> tuple[list[Figures], dict[str, float], dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="devnet-bench-") as tmp:
        devnet = Devnet(Path(tmp) / "devnet")
        try:
            start = time.perf_counter()
            state = devnet.up(providers=1)
            (agent,) = devnet.start_providers()
            print(f"devnet up (1 provider, agent started) in {time.perf_counter() - start:.2f} s")
            requestor, (provider,) = state.requestor, state.providers
            processes = {"requestor's daemon (hub)": requestor.pid,
                         "provider's daemon": provider.pid, "provider's agent": agent.pid}
            assert requestor.node_id and provider.node_id, "the daemons did not say who they are"
            return asyncio.run(through_devnet(n, requestor.api_url, requestor.appkey,
                                              requestor.gsb_url, processes, agent.pid,
                                              provider.gsb_url, requestor.node_id,
                                              provider.node_id))
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

    (devnet, rest, floor), cpu, floor_cpu = devnet_figures(args.n)
    local = asyncio.run(through_local_network(args.n))
    print(f"{args.n} sequential scripts `{' '.join((SCRIPT.entry_point, *SCRIPT.args))}`, "
          f"one command each, stdout captured ({WARMUP} unmeasured first)")
    print(f"{'':<28} {'scripts/s':>10} {'median ms':>11} {'p95 ms':>9}")
    print(devnet.row())
    print(rest.row())
    print(floor.row())
    print(local.row())
    print(f"ratio devnet / local: {devnet.rate / local.rate:.3f} in scripts/s, "
          f"{devnet.median_ms / local.median_ms:.1f}x the median latency")
    print(f"yagna backend / the daemon's REST API: {devnet.median_ms / rest.median_ms:.2f}x "
          "the median latency")
    print(f"GSB floor + local network script (medians): "
          f"{floor.median_ms + local.median_ms:.2f} ms; the yagna backend "
          f"{devnet.median_ms:.2f} ms (its results call travels while the command runs); "
          f"the daemons' two calls alone: {floor.median_ms:.2f} ms")
    print(f"CPU per script, yagna backend, {args.n} more scripts (ms): "
          + ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())
          + f"; all {sum(cpu.values()):.2f}")
    print(f"CPU per script, GSB floor, {args.n} more scripts (ms): "
          + ", ".join(f"{name} {ms:.2f}" for name, ms in floor_cpu.items())
          + f"; all {sum(floor_cpu.values()):.2f} (this process serves the floor's calls too)")

    on_devnet, local_rate = execute_tasks_figures(args.tasks, 2)
    print(f"{args.tasks} tasks through execute_tasks, 2 providers: devnet {on_devnet:.1f} tasks/s, "
          f"local network {local_rate:.1f} tasks/s, ratio {on_devnet / local_rate:.3f}")

    if args.gftp:
        subprocess.run([sys.executable, str(ROOT / "bench" / "gftp.py"), "--size-mib", "64",
                        "--rounds", "1", "--sweep-chunks-kib", "1024",
                        "--sweep-concurrency", "8"], check=True)
    else:
        print("GFTP throughput through two daemons: run .venv/bin/python bench/gftp.py "
              "(or this with --gftp)")


if __name__ == "__main__":
    main()
