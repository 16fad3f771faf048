"""Host side of the supervisor protocol (see ``supervisor.py``).

A :class:`SupervisorChannel` starts the supervisor process (inside bubblewrap, or directly for
the unsandboxed runtime), spawns commands through it, routes their output to per-command
callbacks and reports their exit. It is opened with :func:`open_channel`, which owns the reader
task: nothing outlives the ``async with`` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..._aio import task_scope
from .cgroup import ActivityCgroup
from .supervisor import SOURCE, SOURCE_MARKER

log = logging.getLogger(__name__)
_T = TypeVar("_T")

READY, FAILED, STDOUT, STDERR, EXIT, USAGE = 1, 3, 4, 5, 6, 7
_HEADER = struct.Struct("!BII")
CLOSE_TIMEOUT = 5.0
ANSWER_TIMEOUT = 30.0
"""How long a request to the supervisor may go unanswered before the sandbox counts as broken
(and is killed from the host): it answers at once unless the machine is badly overloaded."""
# The wrapper a gated sandbox starts under: it waits for one line on stdin (sent once the host
# has put its pid into the activity's cgroup), then becomes bubblewrap with the same pid, so
# nothing of the sandbox ever runs outside the group. Shells read a pipe byte by byte here, so
# the supervisor's own requests stay unread until it runs.
_GATE = ["/bin/sh", "-c", 'read -r _ && exec "$@"', "workgen-gate"]

OutputCallback = Callable[[int, bytes], Awaitable[None]]
"""Called with ``1`` (stdout) or ``2`` (stderr) and a chunk; awaiting it applies back-pressure."""


class SandboxError(RuntimeError):
    """The sandbox could not be started, or a command could not be spawned in it."""


class SandboxLost(SandboxError):
    """The sandbox's supervisor went away while we still used it (killed, crashed)."""


class SpawnFailed(SandboxError):
    """A command could not be started (no such program, not executable...)."""


@dataclass
class Exit:
    return_code: int
    """The exit status, or minus the signal number that killed the process."""
    note: str | None = None


@dataclass
class CommandHandle:
    id: int
    exited: asyncio.Future[Exit]
    """The command's exit; raises :class:`SpawnFailed` if it never started, and
    :class:`SandboxLost` if the sandbox went away first."""


@dataclass
class _Pending:
    on_output: OutputCallback
    exited: asyncio.Future[Exit] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SupervisorChannel:
    def __init__(self, process: asyncio.subprocess.Process):
        self._process = process
        self._commands: dict[int, _Pending] = {}
        self._usage: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 1
        self._closing = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: SandboxLost | None = None
        self.init_pid: int | None = None
        """Host pid of the sandbox's init (the supervisor itself), once known."""
        self.cgroup: ActivityCgroup | None = None
        """The activity's cgroup, when limits hold per activity (its counters explain kills)."""
        self.killers: list[Callable[[], None]] = []
        """Ways to kill every process of the sandbox from the host (the sandbox adds its init's
        pidfd and its cgroup); :meth:`destroy` uses them all."""

    @property
    def pid(self) -> int:
        return self._process.pid

    def _send(self, request: Mapping[str, Any]) -> None:
        if self.lost is not None:
            raise self.lost
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(request).encode() + b"\n")

    def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str, on_output: OutputCallback,
        *, stream: bool = False,
    ) -> CommandHandle:
        """Ask for a command to be started; its handle's ``exited`` tells how it went.

        Not waiting for an acknowledgement saves a round trip per command: the supervisor
        takes requests in order, so a :meth:`kill` sent after this one always finds the
        command. ``stream``: ``on_output`` gets output as it comes; otherwise it may get it
        in larger pieces, as late as the exit.
        """
        if self.lost is not None:
            raise self.lost
        cid = self._next_id
        self._next_id += 1
        pending = _Pending(on_output)
        self._commands[cid] = pending
        self._send({"op": "spawn", "id": cid, "argv": list(argv), "env": dict(env), "cwd": cwd,
                    "stream": stream})
        return CommandHandle(cid, pending.exited)

    def kill(self, cid: int, sig: int = signal.SIGKILL) -> None:
        """Signal the process group of a running command (no-op once it has exited)."""
        if cid in self._commands and self.lost is None:
            self._send({"op": "kill", "id": cid, "sig": int(sig)})

    async def cpu_seconds(self) -> float:
        """CPU time used so far by every process of the sandbox, living or reaped."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        key = self._next_id
        self._next_id += 1
        self._usage[key] = fut
        try:
            self._send({"op": "usage", "id": key})
            return float((await self._answer(fut, "report usage"))["cpu_sec"])
        finally:
            self._usage.pop(key, None)

    async def _answer(self, fut: asyncio.Future[_T], what: str) -> _T:
        """The supervisor's answer, or the sandbox destroyed if none comes in time."""
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT):
                return await asyncio.shield(fut)
        except TimeoutError:
            self.destroy(f"the sandbox's supervisor did not {what} within {ANSWER_TIMEOUT:g}s")
            assert self.lost is not None
            raise self.lost from None

    def destroy(self, reason: str) -> None:
        """Kill every process of the sandbox from the host, whatever its supervisor does.

        Synchronous and bounded: signals only. The channel then counts as lost (``reason``).
        """
        if self.lost is None:
            log.warning("sandbox %d destroyed: %s", self.pid, reason)
            self.lost = SandboxLost(reason)
        for kill in self.killers:
            try:
                kill()
            except OSError as exc:
                log.warning("sandbox %d: %s", self.pid, exc)
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        self._mark_lost()

    async def _read_frames(self) -> None:
        reader = self._process.stdout
        assert reader is not None
        # Whatever has arrived is taken at once and split here: a command's spawn, output and
        # exit usually come together, and one wake-up then serves them all.
        buffer = bytearray()
        header_size = _HEADER.size
        try:
            while chunk := await reader.read(1 << 16):
                buffer += chunk
                pos = 0
                while len(buffer) - pos >= header_size:
                    kind, cid, length = _HEADER.unpack_from(buffer, pos)
                    end = pos + header_size + length
                    if len(buffer) < end:
                        break
                    payload = bytes(buffer[pos + header_size:end])
                    pos = end
                    await self._dispatch(kind, cid, payload)
                del buffer[:pos]
        finally:
            self._mark_lost()

    async def _dispatch(self, kind: int, cid: int, payload: bytes) -> None:
        if kind in (STDOUT, STDERR):
            pending = self._commands.get(cid)
            if pending is not None:
                await pending.on_output(1 if kind == STDOUT else 2, payload)
        elif kind == FAILED:
            pending = self._commands.pop(cid, None)
            if pending is not None and not pending.exited.done():
                pending.exited.set_exception(SpawnFailed(payload.decode(errors="replace")))
        elif kind == EXIT:
            pending = self._commands.pop(cid, None)
            if pending is not None:
                info = json.loads(payload)
                if not pending.exited.done():
                    pending.exited.set_result(Exit(int(info["code"]), info.get("note")))
        elif kind == USAGE:
            fut = self._usage.get(cid)
            if fut is not None and not fut.done():
                fut.set_result(json.loads(payload))
        elif kind == READY:
            info = json.loads(payload)
            if info.get("shield") or not info.get("init"):
                log.warning("sandbox %d: its supervisor is not fully out of its commands' reach: "
                            "%s", self.pid, info.get("shield") or "it is not the namespace's init")
            if not self.ready.done():
                self.ready.set_result(None)
        else:
            log.warning("unknown supervisor frame type %d", kind)

    def _mark_lost(self) -> None:
        if self.lost is None:
            reason = "sandbox closed" if self._closing else "sandbox supervisor exited unexpectedly"
            self.lost = SandboxLost(reason)
        for pending in self._commands.values():
            if not pending.exited.done():
                pending.exited.set_exception(self.lost)
                pending.exited.exception()  # retrieved here so an unawaited one doesn't warn
        self._commands.clear()
        for usage in self._usage.values():
            if not usage.done():
                usage.set_exception(self.lost)
        if not self.ready.done():
            self.ready.set_exception(self.lost)
            self.ready.exception()

    async def aclose(self) -> None:
        """Kill the supervisor and, with it, every process of the sandbox; idempotent."""
        self._closing = True
        if self._process.returncode is None:
            # End of input makes the supervisor exit; bubblewrap then tears the PID namespace
            # down and exits only once every process in it is gone, so waiting for bubblewrap
            # waits for all of them. Killing bubblewrap would not wait for the namespace.
            assert self._process.stdin is not None
            with contextlib.suppress(ConnectionError):
                self._process.stdin.close()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.shield(self._process.wait())
            except TimeoutError:
                self.destroy(f"it did not exit within {CLOSE_TIMEOUT:g}s of being closed")
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(self._process.wait())
        except TimeoutError:
            log.warning("sandbox %d: bubblewrap outlived SIGKILL by %gs", self.pid, CLOSE_TIMEOUT)


@contextlib.asynccontextmanager
async def open_channel(
    argv: Sequence[str],
    *,
    limits: Mapping[str, int],
    user: int | None = None,
    group: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    before_start: Callable[[int], None] | None = None,
) -> AsyncIterator[SupervisorChannel]:
    """Start ``argv + [python, -c, supervisor]`` and yield its channel once it is ready.

    ``argv`` is the wrapper (bubblewrap's command line ending with the interpreter), or just the
    interpreter for an unsandboxed supervisor. ``before_start(pid)`` runs once the process
    exists and before any of ``argv`` does (to put it in a cgroup); if it raises, nothing runs.
    """
    full = [*argv, "-I", "-S", "-c", SOURCE, json.dumps(dict(limits)), SOURCE_MARKER]
    if before_start is not None:
        full[:0] = _GATE
    try:
        process = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else {"PATH": "/usr/bin:/bin"},
            cwd=cwd,
            user=user,
            group=group,
            extra_groups=[] if group is not None else None,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            limit=1 << 20,
        )
    except OSError as exc:
        raise SandboxError(f"cannot start the sandbox ({argv[0]}): {exc}") from exc
    except (TypeError, ValueError) as exc:
        # An event loop other than asyncio's own (uvloop) may not start a process as another
        # user; without that the sandbox cannot drop to its unprivileged user.
        raise SandboxError(
            f"cannot start the sandbox: this event loop ({type(asyncio.get_running_loop())}) "
            f"refused to start it as the sandbox's user ({exc}); use "
            "asyncio's own event loop") from exc
    if before_start is not None:
        assert process.stdin is not None
        try:
            # In a thread: moving a process between cgroups waits for an RCU grace period
            # (some milliseconds per controller), which must not stall the event loop.
            await asyncio.to_thread(before_start, process.pid)
        except BaseException:
            process.kill()
            await process.wait()
            raise
        process.stdin.write(b"go\n")
    channel = SupervisorChannel(process)
    async with task_scope() as tg:
        tg.create_task(channel._read_frames())
        stderr_task = tg.create_task(_drain_stderr(process))
        try:
            try:
                await channel.ready
            except SandboxLost:
                await process.wait()
                message = (await stderr_task).strip()
                raise SandboxError(
                    f"the sandbox failed to start (exit {process.returncode}): "
                    f"{message or 'no message'}"
                ) from None
            yield channel
        finally:
            await channel.aclose()


async def _drain_stderr(process: asyncio.subprocess.Process) -> str:
    """Keep the supervisor's stderr flowing; its last lines explain a failed start."""
    assert process.stderr is not None
    tail = b""
    while chunk := await process.stderr.read(65536):
        tail = (tail + chunk)[-8192:]
        for line in chunk.decode(errors="replace").splitlines():
            log.debug("sandbox %d: %s", process.pid, line)
    return tail.decode(errors="replace")
