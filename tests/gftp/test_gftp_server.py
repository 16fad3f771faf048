"""``gftp server``, the installed command, driven over JSON-RPC as yapapi drives it, against
real daemons: files it publishes are fetched from another node, uploads from another node land
in the files it receives into."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from support.yagna import start_yagna
from workgen.gftp import download, upload
from workgen.gsb import open_gsb

GFTP = Path(sys.executable).parent / "gftp"


class Rpc:
    """One JSON-RPC line out, one line back, in order (as yapapi's driver does)."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self._id = 0

    async def raw(self, line: bytes) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + b"\n")
        await self.process.stdin.drain()
        answer = json.loads(await self.process.stdout.readline())
        assert isinstance(answer, dict)
        return answer

    async def __call__(self, method: str, **params: Any) -> Any:
        self._id += 1
        answer = await self.raw(json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method,
                                            "params": params}).encode())
        assert answer["id"] == self._id and answer["jsonrpc"] == "2.0", answer
        if "error" in answer:
            raise RuntimeError(answer["error"]["message"])
        return answer["result"]


@contextlib.asynccontextmanager
async def gftp_server(gsb_url: str) -> AsyncIterator[Rpc]:
    process = await asyncio.create_subprocess_exec(
        str(GFTP), "server", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "GSB_URL": gsb_url})
    try:
        yield Rpc(process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.mark.watchdog(120)
async def test_gftp_server_publishes_receives_and_shuts_down(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    async with start_yagna(tmp_path, name="a") as a, \
            start_yagna(tmp_path, hub_gsb_port=a.gsb_port, name="b") as b, \
            open_gsb(b.gsb_url) as bus_b, gftp_server(a.gsb_url) as rpc:
        version = await rpc("version")
        assert version.split()[0] >= "0.7.3"

        # Published by content: the same content twice is one URL (callers count on it).
        (link,) = await rpc("publish", files=[str(source)])
        copy = tmp_path / "copy.bin"
        copy.write_bytes(data)
        (again,) = await rpc("publish", files=[str(copy)])
        assert link["file"] == str(source) and link["url"].startswith(f"gftp://{a.node_id}/")
        assert again["url"] == link["url"]
        fetched = tmp_path / "fetched.bin"
        assert await download(bus_b, link["url"], fetched) == len(data)
        assert fetched.read_bytes() == data

        # Receiving: another node uploads into the file.
        target = tmp_path / "received.bin"
        receiving = await rpc("receive", output_file=str(target))
        assert receiving["file"] == str(target)
        await upload(bus_b, fetched, receiving["url"])
        assert target.read_bytes() == data

        assert await rpc("close", urls=[link["url"], link["url"], "gftp://0x00/nope"]) == \
            ["ok", "ok", "error"]
        # Bad requests get JSON-RPC errors, and the server goes on.
        assert (await rpc.raw(b"{not json"))["error"]["code"] == -32700
        assert (await rpc.raw(b'{"jsonrpc": "2.0", "id": 9, "method": "nope"}'))["error"]
        with pytest.raises(RuntimeError, match="publish"):
            await rpc("publish", files=[str(tmp_path / "missing")])
        assert await rpc("shutdown") == "ok"
        assert await rpc.process.wait() == 0


def test_gftp_version_and_usage() -> None:
    import subprocess
    done = subprocess.run([str(GFTP), "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("0.7.3 (workgen")
    done = subprocess.run([str(GFTP)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage" in done.stderr
