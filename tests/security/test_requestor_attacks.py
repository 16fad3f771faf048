"""Attacks a hostile requestor makes through the public API, on both networks (``net``).

The local network's providers and the devnet's ``workgen provider run`` agents run the same
execution unit; each test sends what an attacker would (``file://`` URLs, loopback HTTP, a
symbolic link swapped in mid-transfer) and checks the host: no host file read or written, no
request reaching a host-only service, and the provider still serving the next task.
"""

from __future__ import annotations

import http.server
import os
import secrets
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from support.http import serve
from support.networks import Network
from workgen import CommandExecutionError, Golem, Task, WorkContext, vm
from workgen.protocol.exescript import Transfer
from workgen.requestor.task import TaskStatus

PAYLOAD = vm.repo()
SECRET = "host-secret-" + secrets.token_hex(8)


def one_provider(net: Network) -> Golem:
    return net.golem(lambda e: None, providers=1)


async def run_worker(net: Network, worker: Any) -> None:
    async with one_provider(net) as golem:
        tasks = [t async for t in golem.execute_tasks(worker, [Task("x")], payload=PAYLOAD)]
    assert [t.status for t in tasks] == [TaskStatus.ACCEPTED]


def _attempt(attacks: list[Transfer], outcomes: list[str]) -> Any:
    """A worker that tries each transfer in a script of its own and records how each ended."""

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            for attack in attacks:
                script = ctx.new_script()
                script.run("/bin/sh", "-c", "echo planted > /golem/output/out")
                script.add(attack)
                try:
                    yield script
                    outcomes.append("done")
                except CommandExecutionError as exc:
                    outcomes.append(f"refused: {exc}")
            script = ctx.new_script()
            echo = script.run("/bin/sh", "-c", "echo alive")
            yield script
            outcomes.append((await echo).stdout)
            task.accept_result()

    return worker


@pytest.mark.watchdog(120)
async def test_file_urls_neither_read_nor_write_host_files(net: Network, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    os.chmod(tmp_path, 0o755)
    planted = tmp_path / "planted"
    outcomes: list[str] = []
    await run_worker(net, _attempt([
        Transfer(secret.as_uri(), "container:/golem/output/stolen"),
        Transfer(f"file://localhost{secret}", "container:/golem/output/stolen"),
        Transfer("container:/golem/output/out", planted.as_uri()),
        Transfer("container:/golem/output/out", f"FILE://{planted}"),
    ], outcomes))
    *refusals, alive = outcomes
    assert all(o.startswith("refused") and "file URLs are not accepted" in o
               for o in refusals), outcomes
    assert alive == "alive\n"
    assert not planted.exists() and secret.read_text() == SECRET


class _Secret(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        _Secret.hits.append(self.path)
        body = SECRET.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_GET  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.watchdog(120)
async def test_http_transfers_do_not_reach_a_host_only_service(net: Network) -> None:
    _Secret.hits = []
    outcomes: list[str] = []
    with serve(_Secret) as url:
        for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
            base = url.replace("127.0.0.1", host)
            await run_worker(net, _attempt([
                Transfer(f"{base}/secret", "container:/golem/output/stolen"),
                Transfer("container:/golem/output/out", f"{base}/upload"),
            ], outcomes))
    refusals = [o for o in outcomes if o != "alive\n"]
    assert len(refusals) == 6 and all("no network access" in o for o in refusals), outcomes
    assert _Secret.hits == []


SWAPPER = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("/golem/work/d", exist_ok=True)
with open("/golem/work/d/shadow", "w") as f:
    f.write("decoy")
os.symlink("/etc", "/golem/work/swap")
open("/golem/work/swapping", "w").close()
while True:  # RENAME_EXCHANGE: d and the link to /etc trade places, again and again
    libc.renameat2(-100, b"/golem/work/d", -100, b"/golem/work/swap", 2)
"""


@pytest.mark.watchdog(150)
async def test_a_symlink_swapped_in_mid_transfer_reaches_no_host_file(net: Network) -> None:
    host_shadow = Path("/etc/shadow").read_bytes() if os.path.exists("/etc/shadow") else b""
    planted = Path("/etc/workgen-planted-" + secrets.token_hex(4))
    seen: list[bytes | str] = []

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            script.run("/bin/sh", "-c", "python3 -c '%s' >/dev/null 2>&1 &"
                       " while [ ! -e /golem/work/swapping ]; do :; done" % SWAPPER)
            yield script
            for _ in range(40):
                script = ctx.new_script()
                down = script.download_bytes("/golem/work/d/shadow")
                script.send_bytes(f"/golem/work/d/{planted.name}", b"planted")
                try:
                    yield script
                    seen.append((await down).data)
                except CommandExecutionError as exc:
                    seen.append(str(exc))
            script = ctx.new_script()
            echo = script.run("/bin/sh", "-c", "echo alive")
            yield script
            seen.append((await echo).stdout)
            task.accept_result()

    await run_worker(net, worker)
    assert seen[-1] == "alive\n"
    assert len(seen) == 41
    for got in seen[:-1]:
        assert got == b"decoy" or isinstance(got, str), got
        if host_shadow:
            assert got != host_shadow
    assert not planted.exists()


@pytest.mark.watchdog(120)
async def test_transfers_to_impossible_places_fail_the_command_not_the_provider(
        net: Network) -> None:
    outcomes: list[str] = []

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            script.run("/bin/sh", "-c", "echo f > /golem/work/f; mkfifo /golem/work/fifo")
            yield script
            for target in ("/golem/work/f/sub/x", "/golem/work/" + "n" * 300,
                           "/golem/work/fifo", "/golem/work/../../etc/x", "/etc/x"):
                script = ctx.new_script(timeout=30)
                script.send_bytes(target, b"data")
                try:
                    yield script
                    outcomes.append("done")
                except CommandExecutionError as exc:
                    outcomes.append(f"refused: {exc}")
            script = ctx.new_script()
            echo = script.run("/bin/cat", "/golem/work/f")
            yield script
            outcomes.append((await echo).stdout)
            task.accept_result()

    await run_worker(net, worker)
    *refusals, alive = outcomes
    assert len(refusals) == 5 and all(o.startswith("refused") for o in refusals), outcomes
    assert alive == "f\n"
