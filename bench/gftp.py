"""Benchmark: a GFTP download from node A to node B through two real yagna daemons, next to a
plain local copy (``shutil.copyfile``) of the same file.

Two daemons run offline (A is the central-net hub, B joins it), as in the tests. The publisher
runs in a child process on A's GSB, as a requestor would; this process downloads on B's GSB,
as a provider's execution unit would, so the two sides do not share one event loop. Each round
downloads the file once and copies it once, alternately, so that a busy machine affects both
alike; every download is checked against the file's hash (``download`` does it). Also shown:
one download with yagna's own chunk size and window (40 KiB, 8 in flight), for comparison.

    .venv/bin/python bench/gftp.py [--size-mib 256] [--rounds 3] [--chunk-kib 1024] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's daemon starter

from support.yagna import start_yagna  # noqa: E402
from workgen.gftp import download, publish  # noqa: E402
from workgen.gsb import open_gsb  # noqa: E402

MIB = 1024 * 1024


async def serve(gsb_url: str, node_id: str, path: Path) -> None:
    """Child mode: publish ``path`` on A, print its URL, serve until stdin closes."""
    async with open_gsb(gsb_url) as bus, await publish(bus, node_id, path) as published:
        print(published.url, flush=True)
        await asyncio.to_thread(sys.stdin.read)


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))
        f.write(os.urandom(size % MIB))


def copy_rate(src: Path, dst: Path, size: int) -> float:
    start = time.perf_counter()
    shutil.copyfile(src, dst)
    elapsed = time.perf_counter() - start
    dst.unlink()
    return size / elapsed


async def run(size: int, rounds: int, chunk_size: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gftp-bench-") as tmp:
        work = Path(tmp)
        src, dst = work / "src.bin", work / "dst.bin"
        make_file(src, size)
        async with start_yagna(work, name="a") as a, \
                start_yagna(work, hub_gsb_port=a.gsb_port, name="b") as b:
            child = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--serve", a.gsb_url, a.node_id, str(src),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            assert child.stdout is not None and child.stdin is not None
            try:
                url = (await child.stdout.readline()).decode().strip()
                gftp_rates, copy_rates = [], []
                async with open_gsb(b.gsb_url) as bus:
                    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    for _ in range(rounds):
                        start = time.perf_counter()
                        got = await download(bus, url, dst, chunk_size=chunk_size,
                                             concurrency=concurrency)
                        gftp_rates.append(got / (time.perf_counter() - start))
                        dst.unlink()
                        copy_rates.append(copy_rate(src, dst, size))
                    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
                    start = time.perf_counter()
                    await download(bus, url, dst, chunk_size=40 * 1024, concurrency=8)
                    yagna_like = size / (time.perf_counter() - start)
                    dst.unlink()
            finally:
                child.stdin.close()
                await child.wait()
    gftp, copy = statistics.median(gftp_rates), statistics.median(copy_rates)
    print(f"file: {size // MIB} MiB, {rounds} rounds (medians); chunk {chunk_size // 1024} KiB, "
          f"{concurrency} in flight")
    print(f"GFTP download A->B through two yagna daemons: {gftp / 1e6:8.1f} MB/s "
          f"(rounds: {', '.join(f'{r / 1e6:.1f}' for r in gftp_rates)})")
    print(f"shutil.copyfile, same file, same disk:       {copy / 1e6:8.1f} MB/s "
          f"(rounds: {', '.join(f'{r / 1e6:.1f}' for r in copy_rates)})")
    print(f"ratio GFTP / local copy:                     {gftp / copy:8.3f}")
    print(f"GFTP with yagna's 40 KiB x 8 window:         {yagna_like / 1e6:8.1f} MB/s")
    print(f"downloader peak RSS growth:                  {rss_growth / 1024:8.1f} MiB")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        asyncio.run(serve(sys.argv[2], sys.argv[3], Path(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(run(args.size_mib * MIB, args.rounds, args.chunk_kib * 1024, args.concurrency))


if __name__ == "__main__":
    main()
