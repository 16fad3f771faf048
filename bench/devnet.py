"""Benchmark: the same N one-command tasks (``/bin/sh -c date``) through workgen, yapapi and
golem-js, on one devnet (2 Python providers, real yagna daemons), one SDK after the other.

workgen runs ``execute_tasks`` on its yagna backend; yapapi its ``execute_tasks`` with 2 workers
(in its own environment, ``.venv/interop/yapapi``); golem-js a rental pool of 2 running N
commands, and its task executor N tasks, 2 at a time (their own packages,
``.venv/interop/golem-js``). Each prints the time from its start to
its first and to its last result; the table shows the time to the first result, tasks per
second after it ((N - 1) over first-to-last), and each SDK's rate relative to workgen's.
An offline stand-in answers the SDKs' image look-ups. SDKs not installed are skipped.

    .venv/bin/python bench/devnet.py [-n 50]
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from workgen import Golem, Task, vm
from workgen.backends.yagna import Yagna
from workgen.devnet import Devnet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the interop tests' devnet settings and stand-in

from support.sdks import HELLO_IMAGE, OfflineRegistry, devnet_env  # noqa: E402
INTEROP = ROOT / ".venv" / "interop"
HERE = Path(__file__).parent / "devnet_sdks"


async def workgen_times(devnet: Devnet, n: int) -> tuple[float, float]:
    start = time.monotonic()
    node = devnet.state().requestor
    backend = Yagna(api_url=node.api_url, appkey=node.appkey, gsb_url=node.gsb_url,
                    subnet=devnet.state().subnet)

    async def worker(ctx, tasks):  # type: ignore[no-untyped-def]
        async for task in tasks:
            script = ctx.new_script()
            date = script.run("/bin/sh", "-c", "date")
            yield script
            task.accept_result((await date).stdout)

    first = last = 0.0
    async with Golem(budget=5, backend=backend, event_consumer=lambda e: None) as golem:
        async for _ in golem.execute_tasks(worker, [Task(i) for i in range(n)],
                                           payload=await vm.repo(), max_workers=2,
                                           timeout=timedelta(minutes=10).total_seconds()):
            last = time.monotonic() - start
            first = first or last
    return first, last


def sdk_times(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    done = subprocess.run(argv, env=env, cwd=HERE, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    found = dict(line.split() for line in done.stdout.splitlines()
                 if line.startswith(("FIRST ", "LAST ")))
    return float(found["FIRST"]), float(found["LAST"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50, help="tasks per SDK (default 50)")
    args = parser.parse_args()
    n = args.n
    results: dict[str, tuple[float, float]] = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OfflineRegistry)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    registry = f"http://127.0.0.1:{httpd.server_address[1]}"
    with tempfile.TemporaryDirectory(prefix="workgen-bench-sdks-") as directory:
        devnet = Devnet(Path(directory))
        devnet.up(2)
        try:
            devnet.start_providers(dev_images=True)
            env = devnet_env(devnet) | {"IMAGE_HASH": HELLO_IMAGE, "IMAGE_URL": f"{registry}/x.gvmi",
                                    "GOLEM_REGISTRY_URL": registry,
                                    "NODE_PATH": str(INTEROP / "golem-js" / "node_modules")}
            results["workgen"] = asyncio.run(workgen_times(devnet, n))
            yapapi = INTEROP / "yapapi" / "bin" / "python"
            if yapapi.exists():
                results["yapapi 0.13.1"] = sdk_times(
                    [str(yapapi), str(HERE / "yapapi_tasks.py"), str(n)], env)
            modules = INTEROP / "golem-js" / "node_modules" / "@golem-sdk"
            if (modules / "golem-js").exists():
                results["golem-js 3.6.0"] = sdk_times(
                    ["node", str(HERE / "golem_js_tasks.cjs"), str(n)], env)
            if (modules / "task-executor").exists():
                results["task-executor 2"] = sdk_times(
                    ["node", str(HERE / "task_executor_tasks.cjs"), str(n)], env)
        finally:
            devnet.down()
            httpd.shutdown()
    base = (n - 1) / (results["workgen"][1] - results["workgen"][0])
    print(f"{n} tasks `/bin/sh -c date`, one devnet, 2 Python providers")
    print(f"{'':<16} {'first result s':>15} {'tasks/s after':>14} {'vs workgen':>11}")
    for name, (first, last) in results.items():
        rate = (n - 1) / (last - first) if last > first else float("inf")
        print(f"{name:<16} {first:>15.2f} {rate:>14.1f} {rate / base:>10.2f}x")


if __name__ == "__main__":
    main()
