"""N one-command tasks through yapapi's execute_tasks (2 workers), timed; run by bench/devnet.py
with yapapi's own interpreter. Prints ``FIRST <s>`` (from start to the first result) and
``LAST <s>`` (to the last), seconds since the program started."""

import asyncio
import os
import sys
import time
from datetime import timedelta

from yapapi import Golem, Task, WorkContext
from yapapi.payload import vm

START = time.monotonic()


async def worker(ctx: WorkContext, tasks):
    async for task in tasks:
        script = ctx.new_script()
        date = script.run("/bin/sh", "-c", "date")
        yield script
        task.accept_result(result=(await date).stdout)


async def main(n: int) -> None:
    package = await vm.repo(image_hash=os.environ["IMAGE_HASH"], image_url=os.environ["IMAGE_URL"])
    first = last = None
    done = 0
    async with Golem(budget=5.0, subnet_tag=os.environ.get("YAGNA_SUBNET", "public")) as golem:
        async for _ in golem.execute_tasks(worker, [Task(data=i) for i in range(n)],
                                           payload=package, max_workers=2,
                                           timeout=timedelta(minutes=10)):
            done += 1
            last = time.monotonic() - START
            first = first if first is not None else last
    if done != n:
        sys.exit(f"only {done} of {n} tasks done")
    print("FIRST", first)
    print("LAST", last)


asyncio.run(main(int(sys.argv[1])))
