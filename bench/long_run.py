"""Benchmark: memory over a long job. N tasks of ``/bin/true`` through ``execute_tasks`` with
P providers (the default progress display writing to nowhere), and the resident memory (RSS) of
every process of workgen's at every fifth of the run, next to its RSS once Golem has started
and before any task ran (the baseline). Target: flat after warm-up, at most 250 MiB at 100,000
tasks.

* ``--network local`` (the default): the local network, all in this process.
* ``--network devnet``: a devnet of real yagna daemons; this process runs the requestor on the
  yagna backend, and each provider agent (with its activity's execution unit, which lives as
  long as the job) is a process of its own. Their RSS is shown too, and the daemons' (not
  workgen's, for comparison).

    .venv/bin/python bench/long_run.py [-n 100000] [--providers 2] [--network local|devnet]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from workgen import Golem, LocalNetwork, ProgressDisplay, Task, WorkContext, vm
from workgen.backends.base import Backend


def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
    async for task in tasks:
        script = context.new_script()
        script.run("/bin/true")
        yield script
        task.accept_result(None)


Sample = dict[str, float]
"""RSS in MiB by process."""


async def run(n: int, providers: int, backend: Backend,
              processes: dict[str, int]) -> tuple[Sample, list[tuple[int, Sample, float]]]:
    """Runs the job; returns each process's baseline RSS and, at every fifth, every RSS."""
    marks = {n * k // 5 for k in range(1, 6)}
    rows: list[tuple[int, Sample, float]] = []
    started = time.perf_counter()

    def sample() -> Sample:
        return {"this process": rss_mib()} | {name: rss_mib(pid) for name, pid in processes.items()}

    def data() -> Iterator[int]:
        for i in range(1, n + 1):
            yield i
            if i in marks:
                rows.append((i, sample(), time.perf_counter() - started))

    display = ProgressDisplay(io.StringIO(), live=False)
    async with Golem(budget=1000, backend=backend, event_consumer=display) as golem:
        baseline = sample()
        started = time.perf_counter()
        async for _ in golem.execute_tasks(worker, data(), payload=await vm.repo(),
                                           max_workers=providers, timeout=None):
            pass
    return baseline, rows


def report(n: int, providers: int, network: str, baseline: Sample,
           rows: list[tuple[int, Sample, float]], ours: list[str]) -> None:
    print(f"tasks: {n}, providers: {providers}, network: {network}")
    print(f"baseline RSS (Golem started, no task yet): {baseline['this process']:7.1f} MiB")
    for i, rss, at in rows:
        mine = rss["this process"]
        print(f"RSS at {i:>8} tasks: {mine:7.1f} MiB  (x{mine / baseline['this process']:.2f} "
              f"baseline; {i / at:6.0f} tasks/s so far)")
    others = [name for name in baseline if name != "this process"]
    if others:
        print("the other processes, MiB: baseline / " + " / ".join(f"{i}" for i, _, _ in rows))
        for name in others:
            print(f"  {name:<22}{baseline[name]:7.1f} / "
                  + " / ".join(f"{rss[name]:.1f}" for _, rss, _ in rows))
    if len(rows) >= 3:
        (i1, r1, _), (i2, r2, _) = rows[1], rows[-1]
        for name in ["this process"] + ours:
            label = "" if name == "this process" else f" ({name})"
            print(f"growth after the first two fifths{label}: "
                  f"{(r2[name] - r1[name]) * 1024 * 1024 / (i2 - i1):.1f} bytes per task")


async def on_devnet(n: int, providers: int) -> None:
    from workgen.backends.yagna import Yagna
    from workgen.devnet import Devnet

    with tempfile.TemporaryDirectory(prefix="workgen-bench-long-") as directory:
        devnet = Devnet(Path(directory))
        devnet.up(providers)
        try:
            agents = devnet.start_providers(dev_images=True)
            state = devnet.state()
            processes = {f"agent of {a.node}": a.pid for a in agents}
            ours = list(processes)
            processes |= {f"yagna {node.name}": node.pid for node in state.nodes}
            node = state.requestor
            backend = Yagna(api_url=node.api_url, appkey=node.appkey, gsb_url=node.gsb_url,
                            subnet=state.subnet)
            baseline, rows = await run(n, providers, backend, processes)
        finally:
            devnet.down()
    report(n, providers, "devnet (yagna backend, Python providers)", baseline, rows, ours)


async def main(n: int, providers: int, network: str) -> None:
    if network == "devnet":
        await on_devnet(n, providers)
    else:
        baseline, rows = await run(n, providers, LocalNetwork(providers=providers), {})
        report(n, providers, "local", baseline, rows, [])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--providers", type=int, default=2)
    parser.add_argument("--network", choices=("local", "devnet"), default="local")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.providers, args.network))
