#!/usr/bin/env python3
"""A cluster of word counters: several service instances, fed by the requestor.

    python examples/service_cluster.py [FILE] [--instances N]

Each instance of ``WordCounter`` stays on its provider and takes chunks of text as messages:
for each it sends the chunk into its sandbox, counts its words there with ``wc -w`` and answers
with the count and the most frequent word it saw so far (kept in a file of the instance, which
lives as long as the instance). The requestor spreads the chunks over the instances, waits for
every answer, and adds them up. Without FILE it counts this script's own text.
"""

import argparse
import asyncio
from pathlib import Path

from workgen import Golem, Service, ServiceState, vm

SEEN = "/golem/work/seen.txt"


class WordCounter(Service):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    @staticmethod
    async def get_payload():
        return await vm.repo(min_mem_gib=0.5)

    async def run(self):
        while True:
            chunk = await self._listen()
            script = self._ctx.new_script(timeout=60)
            script.send_bytes("/golem/input/chunk.txt", chunk.message.encode())
            count = script.run("/bin/sh", "-c", "wc -w < /golem/input/chunk.txt")
            top = script.run("/bin/sh", "-c",
                             f"tr -cs '[:alpha:]' '\\n' < /golem/input/chunk.txt | "
                             f"tr '[:upper:]' '[:lower:]' | grep . >> {SEEN}; "
                             f"sort {SEEN} | uniq -c | sort -rn | head -1")
            yield script
            await self._respond((int((await count).stdout), (await top).stdout.split()[-1]),
                                response_to=chunk)


def chunks(text: str, lines_per_chunk: int = 20) -> list[str]:
    lines = text.splitlines()
    return ["\n".join(lines[i:i + lines_per_chunk]) for i in range(0, len(lines),
                                                                    lines_per_chunk)]


async def started(cluster, timeout: float) -> list[WordCounter]:
    """The instances running once none is still on its way (or the time is up)."""
    settled = (ServiceState.running, ServiceState.terminated, ServiceState.unresponsive)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(counter.wait_for(*settled) for counter in cluster))
    except TimeoutError:
        pass  # some are still waiting for a free provider: work with those that run
    for counter in cluster:
        if counter.state is not ServiceState.running:
            print(f"{counter.name} is {counter.state.value}: no provider took it in time",
                  flush=True)
    return [c for c in cluster if c.state is ServiceState.running]


async def main(text: str, instances: int) -> None:
    async with Golem(budget=1.0) as golem:
        cluster = await golem.run_service(
            WordCounter, instance_params=[{"name": f"counter-{i}"} for i in range(instances)])
        running = await started(cluster, timeout=30)
        if not running:
            raise SystemExit("no instance started")
        parts = chunks(text)
        for i, part in enumerate(parts):  # round robin over the running instances
            await running[i % len(running)].send_message(part)
        total, top = 0, {}
        for i in range(len(parts)):
            counter = running[i % len(running)]
            words, top[counter.name] = (await counter.receive_message()).message
            total += words
        for counter in running:
            print(f"{counter.name} ran on {counter.provider_name}; the word it saw most: "
                  f"{top.get(counter.name, '-')!r}", flush=True)
        await cluster.stop()
        print(f"{total} words in {len(parts)} chunks", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=Path(__file__))
    parser.add_argument("--instances", type=int, default=2)
    args = parser.parse_args()
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    asyncio.run(main(args.file.read_text(), args.instances))
