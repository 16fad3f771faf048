"""Benchmark: trivial tasks end to end through ``execute_tasks`` on the local network, against
raw asyncio subprocess spawning at the same concurrency; and the wall time of hello.py.

Both figures come from one run, measured alternately so that a busy machine affects both alike:

* tasks/s of N tasks ``/bin/sh -c date`` through ``Golem.execute_tasks`` on ``LocalNetwork``
  (P providers, so P activities work at once; each task one script, one command, output
  captured, in a bubblewrap sandbox), next to tasks/s of the same N commands run with
  ``asyncio.create_subprocess_exec`` (output piped) P at a time (target: ratio >= 1.0), and
  with ``xargs -P P`` (C spawning N processes, output into one pipe: the machine's spawn limit;
  target: ratio >= 0.9).
* tasks/s of the same commands spawned straight through the activity sandboxes' supervisors
  (P sandboxes, no exe unit, no requestor): the floor of the design, to tell what the sandbox
  costs from what the engine above it costs.
* tasks/s of the same commands as tasks of Ray and of Dask at the same concurrency (no
  target: the frameworks a user might otherwise take), when ``scripts/setup-frameworks.sh``
  has made their environment (``bench/frameworks.py`` runs them there).
* the wall time of ``python examples/hello.py`` from process start to exit (target < 1 s),
  next to ``python -c pass`` as the floor of any Python program.

With both cores busy, tasks/s is the machine's CPU divided by the CPU a task costs, so each way
also prints its CPU per task over the same interval: the whole machine's (``/proc/stat``: the
commands, the sandboxes' supervisors, this process, the kernel) and this process's alone (for
``execute_tasks``: the requestor and the local providers' execution units). It then splits
that CPU among the commands themselves, what starts them (the sandboxes' supervisors) and this
process, from ``/proc``: where a gap to a baseline comes from, not only its size.

    .venv/bin/python bench/throughput.py [-n 5000] [--providers 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator

from workgen import Golem, LocalNetwork, ProgressDisplay, Task, WorkContext, vm
from workgen.provider.runtime.channel import SupervisorChannel
from workgen.provider.runtime.sandbox import DEFAULT_PATH, SandboxSpec, open_sandbox, sandbox_user

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS_PYTHON = ROOT / ".venv-frameworks" / "bin" / "python"
COMMAND = ("/bin/sh", "-c", "date")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Split:
    """Where a task's CPU goes, in ms per task: the commands themselves, what starts them (the
    sandboxes' supervisors; none for raw asyncio, which is this process, and xargs, which is
    counted with its commands), this process, and the rest of the machine (the kernel's own
    threads, other processes)."""

    commands: float
    spawners: float | None
    own: float
    rest: float


@dataclass(frozen=True)
class Figure:
    rate: float  # tasks/s
    machine_ms: float  # CPU per task, the whole machine
    own_ms: float  # CPU per task, this process
    split: Split | None = None


class Clock:
    """Wall time, the machine's busy CPU time and this process's CPU time since it started."""

    def __init__(self) -> None:
        self._start = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / _TICKS  # all but idle and iowait
        own = os.times()
        return time.perf_counter(), busy, own.user + own.system

    def figure(self, n: int) -> Figure:
        wall, busy, own = (b - a for a, b in zip(self._start, self._now(), strict=True))
        return Figure(n / wall, busy / n * 1000, own / n * 1000)


class Tree:
    """The CPU of this process's descendants, each split into its own and that of the children
    it has reaped (a supervisor's commands; xargs' commands reach this process when it reaps
    xargs), with the machine's and this process's, at one moment."""

    def __init__(self) -> None:
        _, self.machine, self.own = Clock._now()
        me, parents, cpu = os.getpid(), {}, {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            parents[int(name)] = int(fields[1])
            cpu[int(name)] = (int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
        self.descendants = {pid: ticks for pid, ticks in cpu.items()
                            if pid != me and self._under(pid, me, parents)}
        times = os.times()
        self.reaped = times.children_user + times.children_system

    @staticmethod
    def _under(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
        while pid in parents and pid > 1:
            pid = parents[pid]
            if pid == ancestor:
                return True
        return False

    def split_since(self, start: Tree, n: int, *, spawners: bool) -> Split:
        """Per task over ``n`` tasks between ``start`` and this moment. With ``spawners``, the
        descendants alive at both moments are the spawners (their reaped children the
        commands); otherwise what this process reaped is the commands."""
        machine, own = self.machine - start.machine, self.own - start.own
        if spawners:
            both = self.descendants.keys() & start.descendants.keys()
            spawner = sum(self.descendants[p][0] - start.descendants[p][0] for p in both) / _TICKS
            commands = sum(self.descendants[p][1] - start.descendants[p][1] for p in both) / _TICKS
        else:
            spawner, commands = 0.0, self.reaped - start.reaped
        per_task = 1000 / n
        return Split(commands * per_task, spawner * per_task if spawners else None,
                     own * per_task, (machine - commands - spawner - own) * per_task)


async def worker(context: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
    async for task in tasks:
        script = context.new_script()
        future_result = script.run(*COMMAND)
        yield script
        task.accept_result(result=await future_result)


async def through_golem(n: int, providers: int) -> Figure:
    display = ProgressDisplay(io.StringIO(), live=False)
    async with Golem(budget=100, backend=LocalNetwork(providers=providers),
                     event_consumer=display) as golem:
        clock = Clock()
        done = 0
        # The split is taken between a tenth and nine tenths of the tasks: the activities'
        # sandboxes start after the first and end after the last.
        first, last = n // 10, n - n // 10
        marks: dict[int, Tree] = {}
        async for task in golem.execute_tasks(worker, range(n), payload=vm.repo(),
                                              max_workers=providers):
            assert task.result.success
            done += 1
            if done in (first, last):
                marks[done] = Tree()
        split = (marks[last].split_since(marks[first], last - first, spawners=True)
                 if len(marks) == 2 else None)
        figure = replace(clock.figure(n), split=split)
    assert done == n
    return figure


async def through_sandboxes(n: int, concurrency: int) -> Figure:
    """The same commands spawned straight through the supervisors of ``concurrency`` activity
    sandboxes, as the exe unit spawns them, with no exe unit or requestor above: the floor of
    workgen's design on this machine (the sandbox, its supervisor and the host's channel)."""
    queue = iter(range(n))

    async def on_output(stream: int, data: bytes) -> None:
        pass

    async def lane(channel: SupervisorChannel) -> None:
        for _ in queue:
            exit_ = await channel.spawn(COMMAND, {"PATH": DEFAULT_PATH}, "/", on_output).exited
            assert exit_.return_code == 0

    async with contextlib.AsyncExitStack() as stack:
        channels = [await stack.enter_async_context(open_sandbox(
            SandboxSpec(volumes={}, name=f"bench-{i}"), user=sandbox_user()))
            for i in range(concurrency)]
        start = Tree()  # taken outside the measure, as are the last ones
        clock = Clock()
        async with asyncio.TaskGroup() as tg:
            for channel in channels:
                tg.create_task(lane(channel))
        figure = clock.figure(n)
        return replace(figure, split=Tree().split_since(start, n, spawners=True))


async def through_raw_asyncio(n: int, concurrency: int) -> Figure:
    queue = iter(range(n))

    async def lane() -> None:
        for _ in queue:
            proc = await asyncio.create_subprocess_exec(
                *COMMAND, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            await proc.communicate()
            assert proc.returncode == 0

    start = Tree()
    clock = Clock()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(lane())
    figure = clock.figure(n)
    return replace(figure, split=Tree().split_since(start, n, spawners=False))


def through_xargs(n: int, concurrency: int) -> Figure:
    lines = "".join(f"{i}\n" for i in range(n)).encode()
    start = Tree()
    clock = Clock()
    # -I makes xargs run the command once per input line, leaving the line out of it.
    subprocess.run(["xargs", f"-P{concurrency}", "-I{}", *COMMAND], input=lines,
                   capture_output=True, check=True)
    figure = clock.figure(n)
    return replace(figure, split=Tree().split_since(start, n, spawners=False))


def through_framework(name: str, n: int, concurrency: int) -> tuple[str, Figure] | None:
    """Ray's or Dask's figure from ``bench/frameworks.py`` in their own environment, if made."""
    if not FRAMEWORKS_PYTHON.exists():
        return None
    done = subprocess.run([str(FRAMEWORKS_PYTHON), str(ROOT / "bench" / "frameworks.py"), name,
                           "-n", str(n), "--concurrency", str(concurrency)],
                          capture_output=True, text=True, check=True)
    figure = json.loads(done.stdout.strip().splitlines()[-1])
    return figure["name"], Figure(figure["rate"], figure["machine_ms"], 0.0)


def wall_time(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="tasks per measurement")
    parser.add_argument("--providers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hello-runs", type=int, default=5)
    args = parser.parse_args()

    golem, raw, xargs, sandboxes = [], [], [], []
    frameworks: dict[str, list[Figure]] = {}
    for _ in range(args.rounds):
        raw.append(asyncio.run(through_raw_asyncio(args.n, args.providers)))
        golem.append(asyncio.run(through_golem(args.n, args.providers)))
        xargs.append(through_xargs(args.n, args.providers))
        sandboxes.append(asyncio.run(through_sandboxes(args.n, args.providers)))
        for framework in ("ray", "dask"):
            if (named := through_framework(framework, args.n, args.providers)) is not None:
                frameworks.setdefault(named[0], []).append(named[1])
    golem_rates, raw_rates, xargs_rates = ([f.rate for f in way] for way in (golem, raw, xargs))
    best_g, best_r, best_x = max(golem_rates), max(raw_rates), max(xargs_rates)
    print(f"tasks: {args.n} x {args.rounds} rounds, {args.providers} providers = concurrency "
          f"{args.providers}")
    print(f"raw asyncio subprocess      : {best_r:8.1f} tasks/s  (rounds: "
          + ", ".join(f"{r:.0f}" for r in raw_rates) + ")")
    print(f"execute_tasks, local network: {best_g:8.1f} tasks/s  (rounds: "
          + ", ".join(f"{r:.0f}" for r in golem_rates) + ")")
    print(f"xargs -P{args.providers}                    : {best_x:8.1f} tasks/s  (rounds: "
          + ", ".join(f"{r:.0f}" for r in xargs_rates) + ")")
    best_s = max(f.rate for f in sandboxes)
    print(f"sandboxes alone (no exe unit, no requestor): {best_s:8.1f} tasks/s  (rounds: "
          + ", ".join(f"{f.rate:.0f}" for f in sandboxes) + f"), {best_s / best_x:.2f}x xargs")
    for name, figures in frameworks.items():
        best_f = max(figures, key=lambda f: f.rate)
        print(f"{name + ' (same commands)':<28}: {best_f.rate:8.1f} tasks/s  (rounds: "
              + ", ".join(f"{f.rate:.0f}" for f in figures) + f"), execute_tasks "
              f"{best_g / best_f.rate:.2f}x; machine CPU per task {best_f.machine_ms:.3f} ms")
    if not frameworks:
        print("Ray, Dask                   : not measured (bash scripts/setup-frameworks.sh "
              "makes their environment)")
    print(f"ratio execute_tasks / raw   : {best_g / best_r:8.2f}  (target >= 1.0)")
    print(f"ratio execute_tasks / xargs : {best_g / best_x:8.2f}  (target >= 0.9)")
    print("CPU per task, best round, ms : machine / this process")
    for label, way in (("raw asyncio", raw), ("execute_tasks", golem), ("xargs", xargs),
                       ("sandboxes alone", sandboxes)):
        best = max(way, key=lambda f: f.rate)
        print(f"  {label:<26}: {best.machine_ms:6.3f} / {best.own_ms:6.3f}")
    print("where it goes, ms per task: the commands / what starts them / this process / "
          "the rest of the machine (kernel threads, other processes; CPU time is counted in "
          "ticks, so each figure is within about 0.02)")
    for label, spawner, way in (
            ("raw asyncio", "this process", raw), ("execute_tasks", "supervisors", golem),
            ("xargs", "xargs, with the commands", xargs),
            ("sandboxes alone", "supervisors", sandboxes)):
        split = max(way, key=lambda f: f.rate).split
        if split is not None:
            starter = f"{split.spawners:6.3f} {spawner}" if split.spawners is not None \
                else f"({spawner})"
            print(f"  {label:<26}: {split.commands:6.3f} / {starter} / {split.own:6.3f} / "
                  f"{split.rest:6.3f}")
    x = max(xargs, key=lambda f: f.rate)
    print(f"  at 0.9x xargs a task may cost {x.machine_ms / 0.9:.3f} ms of machine CPU: "
          f"{x.machine_ms / 0.9 - x.machine_ms:.3f} ms beyond what xargs spends")

    hello = [wall_time("examples/hello.py") for _ in range(args.hello_runs)]
    floor = [wall_time("-c", "pass") for _ in range(args.hello_runs)]
    print(f"examples/hello.py wall time : {statistics.median(hello):8.3f} s median of "
          f"{args.hello_runs} (max {max(hello):.3f} s; target < 1 s)")
    print(f"python -c pass wall time    : {statistics.median(floor):8.3f} s median")


if __name__ == "__main__":
    main()
