"""A requestor written against yapapi's public API (its hello-world worker, plus files both
ways), run by ``test_yapapi.py`` in yapapi's own environment against the devnet.

Prints ``RUNNING <provider>`` when a worker starts, then ``DATE <stdout of date>`` and
``OUT <downloaded bytes>`` per task (``TASKS`` of them, one by default); exits non-zero on
failure.
The image is named by hash and URL (``IMAGE_URL``), so yapapi asks no registry (the URL is a
local stand-in); or, with ``IMAGE_TAG`` and ``REGISTRY_URL``, by tag through that registry.
"""

import asyncio
import os
import sys
from datetime import timedelta

from yapapi import Golem, Task, WorkContext
from yapapi.payload import vm

HELLO_IMAGE = "d646d7b93083d817846c2ae5c62c72ca0507782385a2e29291a3d376"


async def worker(ctx: WorkContext, tasks):
    print("RUNNING", ctx.provider_name, flush=True)
    async for task in tasks:
        got = {}

        async def keep(data: bytes, got: dict = got) -> None:
            got["out"] = data

        script = ctx.new_script()
        script.upload_bytes(b"sent by yapapi\n", "/golem/input/in.txt")
        script.run("/bin/sh", "-c", "tr a-z A-Z < /golem/input/in.txt > /golem/output/out.txt")
        # SLEEP makes the task outlast the debit-note interval (several notes, all accepted).
        date = script.run("/bin/sh", "-c", f"sleep {int(os.environ.get('SLEEP', '0'))}; date")
        script.download_bytes("/golem/output/out.txt", on_download=keep)
        yield script
        task.accept_result(result=((await date).stdout, got.get("out")))


async def main() -> None:
    if "IMAGE_TAG" in os.environ:
        package = await vm.repo(image_tag=os.environ["IMAGE_TAG"],
                                repository_url=os.environ["REGISTRY_URL"])
    else:
        package = await vm.repo(image_hash=HELLO_IMAGE, image_url=os.environ["IMAGE_URL"])
    async with Golem(budget=1.0, subnet_tag=os.environ.get("YAGNA_SUBNET", "public")) as golem:
        tasks = [Task(data=None) for _ in range(int(os.environ.get("TASKS", "1")))]
        async for done in golem.execute_tasks(worker, tasks, payload=package,
                                              timeout=timedelta(minutes=5)):
            stdout, out = done.result
            print("DATE", (stdout or "").strip(), flush=True)
            print("OUT", out, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
