#!/usr/bin/env python3
"""A small HTTP server living inside a service instance, and handlers that talk to it.

    python examples/service_http.py [PATH ...]

The instance's ``start`` writes a page and starts ``python3 -m http.server`` in the background
inside its sandbox; the server keeps running between batches. Its ``run`` handler waits for
paths from the requestor (``send_message``), fetches each from the server with a command run in
the same instance, and sends back the status and the body (``receive_message``). Stopping the
cluster runs ``shutdown``, which reads the server's access log before the activity ends.
"""

import asyncio
import sys
from typing import Any

from workgen import Golem, Service, vm

PORT = 8080
SITE = "/golem/work/site"
LOG = "/golem/work/server.log"
FETCH = f"""
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen("http://127.0.0.1:{PORT}" + sys.argv[1], timeout=10) as r:
        print(r.status, r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, e.reason)
"""
WAIT_UP = f"""
import socket, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", {PORT}), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
else:
    raise SystemExit("the server did not come up")
"""


class WebServer(Service):
    @staticmethod
    async def get_payload():
        return await vm.repo(min_mem_gib=0.5)

    async def start(self):
        async for script in super().start():  # deploy and start the activity
            yield script
        script = self._ctx.new_script()
        script.run("/bin/sh", "-c", f"mkdir -p {SITE} && echo 'hello from the instance' > "
                   f"{SITE}/index.html")
        script.run("/bin/sh", "-c", f"cd {SITE} && python3 -m http.server {PORT} "
                   f"--bind 127.0.0.1 > {LOG} 2>&1 &")
        script.run("/usr/bin/python3", "-c", WAIT_UP)
        yield script

    async def run(self):
        while True:
            request = await self._listen()
            script = self._ctx.new_script(timeout=30)
            answer = script.run("/usr/bin/python3", "-c", FETCH, str(request.message))
            yield script
            await self._respond((await answer).stdout.strip(), response_to=request)

    async def shutdown(self):
        script = self._ctx.new_script()
        log = script.run("/bin/sh", "-c", f"grep -c 'GET' {LOG} || true")
        yield script
        print(f"the server answered {(await log).stdout.strip()} requests", flush=True)
        async for script in super().shutdown():
            yield script


async def main(paths: list[str]) -> None:
    async with Golem(budget=1.0) as golem:
        cluster = await golem.run_service(WebServer)
        (server,) = cluster.instances
        for path in paths:
            await server.send_message(path)
            reply: Any = await server.receive_message()
            print(f"GET {path} -> {reply.message}", flush=True)
        await cluster.stop()
        print(f"instance {server.state.value} on {server.provider_name}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["/", "/index.html", "/missing"]))
