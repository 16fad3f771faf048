"""Baseline for ``bench/throughput.py``: the same commands as tasks of Ray and of Dask, the general
task frameworks a Python user would otherwise reach for, at the same concurrency.

Runs in an environment of its own (``scripts/setup-frameworks.sh`` makes ``.venv-frameworks``
with pinned releases), as those frameworks pin dependencies of their own; ``throughput.py``
starts it once per round and reads the one JSON line it prints.

Each task runs ``/bin/sh -c date`` with its output captured, as a workgen task does, in a
worker process of the framework: Ray's ``num_cpus=C`` runs C remote tasks at once, Dask's
``LocalCluster`` C single-threaded worker processes. The frameworks start, and run a few
tasks to warm up, before the clock does, as workgen's Golem is started before its clock.

    .venv-frameworks/bin/python bench/frameworks.py ray|dask [-n 2000] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

COMMAND = ("/bin/sh", "-c", "date")
_TICKS = os.sysconf("SC_CLK_TCK")
WARM_UP = 20


def run_command(_: int) -> int:
    return subprocess.run(COMMAND, capture_output=True, check=True).returncode


def machine_busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / _TICKS  # all but idle and iowait


def timed(submit_all: Callable[[], list[int]]) -> tuple[float, float]:
    """Wall time and the machine's busy CPU time of ``submit_all()``."""
    busy, start = machine_busy(), time.perf_counter()
    codes = submit_all()
    wall, cpu = time.perf_counter() - start, machine_busy() - busy
    assert all(code == 0 for code in codes)
    return wall, cpu


def through_ray(n: int, concurrency: int) -> tuple[str, float, float]:
    import ray

    ray.init(num_cpus=concurrency, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(run_command)
        ray.get([remote.remote(i) for i in range(WARM_UP)])
        wall, cpu = timed(lambda: ray.get([remote.remote(i) for i in range(n)]))
    finally:
        ray.shutdown()
    return f"Ray {ray.__version__}", wall, cpu


def through_dask(n: int, concurrency: int) -> tuple[str, float, float]:
    import dask
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=concurrency, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.gather(client.map(run_command, range(WARM_UP), pure=False))
        wall, cpu = timed(lambda: client.gather(client.map(run_command, range(n), pure=False)))
    return f"Dask {dask.__version__}", wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=("ray", "dask"))
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    way = through_ray if args.framework == "ray" else through_dask
    name, wall, cpu = way(args.n, args.concurrency)
    print(json.dumps({"name": name, "rate": args.n / wall, "machine_ms": cpu / args.n * 1000}),
          flush=True)


if __name__ == "__main__":
    main()
