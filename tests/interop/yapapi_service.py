"""A requestor written against yapapi's services API, as its hello-service example uses it: a
service whose ``start`` leaves a background loop writing the date to a file, and whose ``run``
reads that file every few seconds. Run by ``test_sdks.py`` in yapapi's own environment.

Prints ``STATE <instance state>`` as the instance goes, ``DATE <file's content>`` per read, and
``STOPPED <state>`` once the cluster is stopped; exits non-zero on failure.
"""

import asyncio
import os
import sys
from datetime import datetime, timedelta

from yapapi import Golem
from yapapi.payload import vm
from yapapi.services import Service

HELLO_IMAGE = "d646d7b93083d817846c2ae5c62c72ca0507782385a2e29291a3d376"
OUTPUT = "/golem/work/date.txt"
EVERY = 1
READS = 3


class DateService(Service):
    reads: list = []

    @staticmethod
    async def get_payload():
        return await vm.repo(image_hash=HELLO_IMAGE, image_url=os.environ["IMAGE_URL"])

    async def start(self):
        async for script in super().start():
            yield script
        script = self._ctx.new_script()
        script.run("/bin/sh", "-c",
                   f"while true; do date > {OUTPUT}; sleep {EVERY}; done &")
        yield script

    async def run(self):
        while True:
            await asyncio.sleep(EVERY)
            script = self._ctx.new_script()
            future = script.run("/bin/sh", "-c", f"cat {OUTPUT}")
            yield script
            stdout = (await future).stdout
            self.reads.append((stdout or "").strip())
            print("DATE", (stdout or "").strip(), flush=True)


async def main() -> None:
    async with Golem(budget=1.0, subnet_tag=os.environ.get("YAGNA_SUBNET", "public")) as golem:
        cluster = await golem.run_service(DateService, num_instances=1)
        deadline = datetime.now() + timedelta(minutes=3)
        seen = None
        while len(DateService.reads) < READS:
            if datetime.now() > deadline:
                raise SystemExit(f"only {len(DateService.reads)} reads in 3 minutes")
            for instance in cluster.instances:
                if instance.state.value != seen:
                    seen = instance.state.value
                    print("STATE", seen, instance.provider_name, flush=True)
            await asyncio.sleep(0.2)
        cluster.stop()
        # yapapi offers no event to wait on: its instances' state is polled.
        while any(i.is_available for i in cluster.instances):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        print("STOPPED", ",".join(i.state.value for i in cluster.instances), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
