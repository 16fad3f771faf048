"""The host's side of the supervisor channel, against real supervisor processes: output in
order under back-pressure, and a supervisor that sends what cannot be read."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from workgen.provider.runtime.channel import SandboxLost, open_channel

# Stands in for a supervisor gone wrong: it says it is ready, then answers the first spawn
# request with an exit frame whose payload is not JSON.
BROKEN_SUPERVISOR = r"""
import json, struct, sys
out = sys.stdout.buffer
def frame(kind, cid, payload):
    out.write(struct.pack("!BII", kind, cid, len(payload)) + payload)
    out.flush()
frame(1, 0, json.dumps({"init": True, "shield": None}).encode())
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "spawn":
        frame(6, request["id"], b"{not json")
"""


async def test_streamed_output_comes_whole_and_in_order_under_back_pressure() -> None:
    """A slow consumer of streamed output holds the reading back; every byte still arrives,
    in order, and the exit comes after the last of it."""
    received: list[bytes] = []
    exited_after: list[int] = []
    first_held = asyncio.Event()
    gate = asyncio.Event()

    async def slow(stream: int, data: bytes) -> None:
        first_held.set()
        await gate.wait()  # nothing is taken until the test lets it
        received.append(data)

    def on_output(stream: int, data: bytes) -> asyncio.Future[None] | None:
        return asyncio.ensure_future(slow(stream, data))

    lines = 20000
    async with open_channel([sys.executable], limits={}) as channel:
        handle = channel.spawn(["/bin/sh", "-c", f"seq 1 {lines}"], {"PATH": "/usr/bin:/bin"},
                               "/", on_output, stream=True)
        await first_held.wait()
        # Held: no frame behind the first piece of output is read, the exit included.
        assert not handle.exited.done() and received == []
        gate.set()
        exit_ = await handle.exited
        exited_after.append(len(received))
    assert exit_.return_code == 0
    assert b"".join(received) == "".join(f"{i}\n" for i in range(1, lines + 1)).encode()
    assert exited_after == [len(received)]


async def test_a_frame_that_cannot_be_read_ends_the_sandbox_and_says_why(tmp_path: Path) -> None:
    script = tmp_path / "broken_supervisor.py"
    script.write_text(BROKEN_SUPERVISOR)
    # The channel appends the real supervisor's arguments; the stand-in ignores them.
    async with open_channel([sys.executable, str(script)], limits={}) as channel:
        pid = channel.pid

        async def ignore(stream: int, data: bytes) -> None:
            pass

        handle = channel.spawn(["/bin/true"], {}, "/", ignore)
        with pytest.raises(SandboxLost, match="frame that cannot be read"):
            await handle.wait()
        assert channel.lost is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped: nothing left running
