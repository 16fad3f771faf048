"""Benchmark: a GFTP download from node A to node B through two real yagna daemons, next to the
GSB's own ceiling between the same daemons and a plain local copy (``shutil.copyfile``).

Two daemons run offline (A is the central-net hub, B joins it), as in the tests. A child process
on A's GSB publishes the file, as a requestor would, and also serves a raw service that answers
each tiny request with a reply of the chunk's size and shape (``{"offset", "content"}``, from
memory: no file, no hash). This process calls both from B's GSB, as a provider's execution unit
would, so the two sides do not share one event loop; both are reached the same way
(``/transfer/net/<node A>/...``). The raw service's rate is the GSB's ceiling for GFTP: what
two daemons and our client move when nothing else is done with the bytes.

Each round measures the raw ceiling, downloads the file once and copies it once, alternately,
so that a busy machine affects all alike; every download is checked against the file's hash
(``download`` does it). The downloaded and the copied file are removed after their measure, not
in it. The CPU time each process spent (the two daemons, the serving child,
this process) is read from ``/proc`` around each measure. Also shown: a sweep of the ceiling and
of GFTP over chunk sizes and in-flight counts, and one download with yagna's own window
(40 KiB, 8 in flight).

    .venv/bin/python bench/gftp.py [--size-mib 256] [--rounds 3] [--chunk-kib 1024]
        [--concurrency 8] [--sweep-chunks-kib 256,1024,4096] [--sweep-concurrency 2,8,16]
        [--profile DIR]

``--profile DIR`` runs both processes under cProfile and writes ``DIR/download.prof`` and
``DIR/serve.prof`` (read them with ``python -m pstats``); figures are then slower.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's daemon starter

from support.yagna import start_yagna  # noqa: E402
from workgen.gftp import download, publish  # noqa: E402
from workgen.gsb import GsbClient, open_gsb  # noqa: E402

MIB = 1024 * 1024
RAW_SERVICE = "/public/gsb-ceiling"
"""The raw service's prefix on A; B calls it as ``/transfer/net/<node A>/gsb-ceiling/Get``,
exactly as it calls ``/transfer/net/<node A>/gftp/<hash>/GetChunk`` to reach the publisher."""
CALL_TIMEOUT = 60.0
_TICKS = os.sysconf("SC_CLK_TCK")


# --- the serving child ------------------------------------------------------------------------

async def serve(gsb_url: str, node_id: str, path: Path) -> None:
    """Child mode: publish ``path`` and the raw service on A, print the file's URL, serve until
    stdin closes."""
    content = os.urandom(16 * MIB)  # the raw replies are views of this: no copy per call

    async def raw(address: str, caller: str, payload: Any) -> dict[str, Any]:
        offset, size = payload["offset"], payload["size"]
        return {"offset": offset, "content": memoryview(content)[:size]}

    async with open_gsb(gsb_url) as bus, await publish(bus, node_id, path) as published:
        await bus.register(RAW_SERVICE, raw)
        print(published.url, flush=True)
        await asyncio.to_thread(sys.stdin.read)


# --- measuring --------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class Processes:
    """The CPU each process of the transfer spends during one measure."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    async def measure(self, work: Callable[[], Awaitable[int]]) -> tuple[float, dict[str, float]]:
        """Runs ``work`` (returns bytes moved); its rate in B/s and CPU seconds per GB moved."""
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        start = time.perf_counter()
        moved = await work()
        elapsed = time.perf_counter() - start
        after = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return moved / elapsed, {name: (after[name] - before[name]) / (moved / 1e9)
                                 for name in self.pids}


async def raw_transfer(bus: GsbClient, address: str, total: int, chunk_size: int,
                       concurrency: int) -> int:
    """Asks the raw service for ``total`` bytes in replies of ``chunk_size``, ``concurrency``
    calls in flight, as GFTP's window asks for chunks."""
    offsets = iter(range(0, total, chunk_size))

    async def caller() -> int:
        got = 0
        for offset in offsets:
            size = min(chunk_size, total - offset)
            reply = await bus.call(address, {"offset": offset, "size": size},
                                   timeout=CALL_TIMEOUT)
            assert len(reply["content"]) == size
            got += size
        return got

    async with asyncio.TaskGroup() as tasks:
        callers = [tasks.create_task(caller()) for _ in range(concurrency)]
    return sum(c.result() for c in callers)


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))
        f.write(os.urandom(size % MIB))


def copy_file(src: Path, dst: Path) -> int:
    shutil.copyfile(src, dst)
    return src.stat().st_size


def _mb(rate: float) -> str:
    return f"{rate / 1e6:8.1f} MB/s"


def _cpu(costs: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in costs.items())


async def run(args: argparse.Namespace) -> None:
    size, chunk, window = args.size_mib * MIB, args.chunk_kib * 1024, args.concurrency
    sweep = [(kib * 1024, n) for kib in args.sweep_chunks_kib for n in args.sweep_concurrency]
    with tempfile.TemporaryDirectory(prefix="gftp-bench-") as tmp:
        work = Path(tmp)
        src, dst = work / "src.bin", work / "dst.bin"
        make_file(src, size)
        async with start_yagna(work, name="a") as a, \
                start_yagna(work, hub_gsb_port=a.gsb_port, name="b") as b:
            serve_argv = ["--serve", a.gsb_url, a.node_id, str(src)]
            if args.profile:
                serve_argv = ["--profile-to", str(args.profile / "serve.prof"), *serve_argv]
            child = await asyncio.create_subprocess_exec(
                sys.executable, __file__, *serve_argv,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            assert child.stdout is not None and child.stdin is not None
            procs = Processes({"yagna A": a.pid, "yagna B": b.pid, "publisher": child.pid,
                               "downloader": os.getpid()})
            raw_address = f"/transfer/net/{a.node_id}/gsb-ceiling/Get"
            try:
                url = (await child.stdout.readline()).decode().strip()
                raw_rates: list[float] = []
                gftp_rates: list[float] = []
                copy_rates: list[float] = []
                raw_cpu: list[dict[str, float]] = []
                gftp_cpu: list[dict[str, float]] = []
                swept: dict[tuple[str, int, int], list[float]] = {}

                async def get_file(chunk_size: int, concurrency: int) -> int:
                    return await download(bus, url, dst, chunk_size=chunk_size,
                                          concurrency=concurrency)

                async def measured_download(chunk_size: int, concurrency: int
                                            ) -> tuple[float, dict[str, float]]:
                    # The file is removed after the measure, as the copy's is: freeing a
                    # quarter of a GiB of page cache is not part of moving it.
                    try:
                        return await procs.measure(
                            functools.partial(get_file, chunk_size, concurrency))
                    finally:
                        dst.unlink(missing_ok=True)

                async with open_gsb(b.gsb_url) as bus:
                    await raw_transfer(bus, raw_address, 8 * chunk, chunk, window)  # warm-up
                    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    for _ in range(args.rounds):
                        rate, cpu = await procs.measure(
                            lambda: raw_transfer(bus, raw_address, size, chunk, window))
                        raw_rates.append(rate)
                        raw_cpu.append(cpu)
                        rate, cpu = await measured_download(chunk, window)
                        gftp_rates.append(rate)
                        gftp_cpu.append(cpu)
                        copy_rates.append(size / await asyncio.to_thread(
                            lambda: _timed(lambda: copy_file(src, dst))))
                        dst.unlink()
                    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
                    for _ in range(args.sweep_rounds if sweep else 0):
                        for chunk_size, concurrency in sweep:
                            rate, _ = await procs.measure(functools.partial(
                                raw_transfer, bus, raw_address, size, chunk_size, concurrency))
                            swept.setdefault(("raw", chunk_size, concurrency), []).append(rate)
                            rate, _ = await measured_download(chunk_size, concurrency)
                            swept.setdefault(("gftp", chunk_size, concurrency), []).append(rate)
                    yagna_like, _ = await measured_download(40 * 1024, 8)
            finally:
                child.stdin.close()
                await child.wait()
    raw, gftp, copy = (statistics.median(r) for r in (raw_rates, gftp_rates, copy_rates))
    floor = min(0.5 * copy, raw / 1.5)

    def rounds(rates: list[float]) -> str:
        return ", ".join(f"{r / 1e6:.1f}" for r in rates)

    print(f"file: {size // MIB} MiB, {args.rounds} rounds (medians); chunk {chunk // 1024} KiB, "
          f"{window} in flight")
    print(f"GSB ceiling A->B, raw replies of the chunk:  {_mb(raw)} (rounds: {rounds(raw_rates)})")
    print(f"GFTP download A->B through two yagna daemons: {_mb(gftp)} (rounds: {rounds(gftp_rates)})")
    print(f"shutil.copyfile, same file, same disk:       {_mb(copy)} (rounds: {rounds(copy_rates)})")
    print(f"ratio GFTP / local copy:                     {gftp / copy:8.3f}")
    print(f"ratio GFTP / GSB ceiling:                    {gftp / raw:8.3f}")
    print(f"target (>= 0.5x copy, or >= ceiling / 1.5):  {_mb(floor)} "
          f"({'met' if gftp >= floor else 'not met'})")
    print(f"GFTP with yagna's 40 KiB x 8 window:         {_mb(yagna_like)}")
    print(f"downloader peak RSS growth:                  {rss_growth / 1024:8.1f} MiB")
    print("CPU seconds per GB moved (median of rounds):")
    for name, costs in (("GSB ceiling", raw_cpu), ("GFTP", gftp_cpu)):
        median = {p: statistics.median(c[p] for c in costs) for p in costs[0]}
        print(f"  {name:12} {_cpu(median)}")
    if swept:
        print(f"sweep, MB/s (medians of {args.sweep_rounds}): chunk KiB x in flight: "
              "GSB ceiling / GFTP")
        for chunk_size, concurrency in sweep:
            ceiling = statistics.median(swept["raw", chunk_size, concurrency])
            ours = statistics.median(swept["gftp", chunk_size, concurrency])
            print(f"  {chunk_size // 1024:5} x {concurrency:2}: {ceiling / 1e6:8.1f} / "
                  f"{ours / 1e6:8.1f}  ({ours / ceiling:.2f})")


def _timed(work: Callable[[], int]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _kib_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    argv = sys.argv[1:]
    profile_to = None
    if argv[:1] == ["--profile-to"]:
        profile_to, argv = argv[1], argv[2:]
    if len(argv) == 4 and argv[0] == "--serve":
        coro = serve(argv[1], argv[2], Path(argv[3]))
        if profile_to is None:
            asyncio.run(coro)
        else:
            cProfile.runctx("asyncio.run(coro)", globals(), {"coro": coro}, profile_to)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sweep-chunks-kib", type=_kib_list, default=[256, 1024, 4096])
    parser.add_argument("--sweep-concurrency", type=_kib_list, default=[2, 8, 16])
    parser.add_argument("--sweep-rounds", type=int, default=1)
    parser.add_argument("--profile", type=Path, help="write cProfile stats of both sides here")
    args = parser.parse_args(argv)
    if args.profile is None:
        asyncio.run(run(args))
        return
    args.profile.mkdir(parents=True, exist_ok=True)
    cProfile.runctx("asyncio.run(run(args))", globals(), {"args": args},
                    str(args.profile / "download.prof"))


if __name__ == "__main__":
    main()
