"""Host side of the supervisor protocol (see ``supervisor.py``).

A :class:`SupervisorChannel` starts the supervisor process (inside bubblewrap, or directly for
the unsandboxed runtime), spawns commands through it, routes their output to per-command
callbacks and reports their exit. It is opened with :func:`open_channel`, which owns the pipe
the supervisor writes to and any task it needs: nothing outlives the ``async with`` block.

The supervisor's frames are read by a protocol on that pipe, not by a task over asyncio's
subprocess streams: those hand data on through two more turns of the event loop (the
transport's ``call_soon``, then the reader task's wake-up), a cost paid by every command. A
frame is dispatched as soon as it is read; an output callback that must wait (back-pressure)
pauses the reading, and the frames behind it wait their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
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

OutputCallback = Callable[[int, bytes], Awaitable[None] | None]
"""Called with ``1`` (stdout) or ``2`` (stderr) and a chunk; an awaitable it returns applies
back-pressure (no more frames are read until it is done)."""


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
    _waiters: list[asyncio.Future[Exit]] = field(default_factory=list, repr=False)

    def wait(self) -> asyncio.Future[Exit]:
        """The exit, as a future of its own: cancelling it (cancelling its awaiter) leaves
        :attr:`exited` pending, so the command can still be killed and waited for. Cheaper
        than ``asyncio.shield(exited)``, which passes the exit on through two more turns of
        the event loop."""
        if self.exited.done():
            return self.exited
        waiter: asyncio.Future[Exit] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter


@dataclass
class _Pending:
    on_output: OutputCallback
    exited: asyncio.Future[Exit] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    waiters: list[asyncio.Future[Exit]] = field(default_factory=list)

    def settle(self, exit_: Exit | None, error: BaseException | None = None) -> None:
        """Resolve the exit and every waiter (those cancelled meanwhile are left alone)."""
        for future in (self.exited, *self.waiters):
            if future.done():
                continue
            if error is None:
                future.set_result(exit_)  # type: ignore[arg-type]
            else:
                future.set_exception(error)
                future.exception()  # retrieved here so an unawaited one doesn't warn
        self.waiters.clear()


class SupervisorChannel:
    def __init__(self, process: asyncio.subprocess.Process,
                 spawn_task: Callable[[Coroutine[Any, Any, None]], object]):
        self._process = process
        self._spawn_task = spawn_task
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
        return CommandHandle(cid, pending.exited, pending.waiters)

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

    def _dispatch(self, kind: int, cid: int, payload: bytes) -> Awaitable[None] | None:
        """Act on one frame; an awaitable returned must be awaited before the next frame."""
        if kind in (STDOUT, STDERR):
            pending = self._commands.get(cid)
            if pending is not None:
                return pending.on_output(1 if kind == STDOUT else 2, payload)
        elif kind == FAILED:
            pending = self._commands.pop(cid, None)
            if pending is not None:
                pending.settle(None, SpawnFailed(payload.decode(errors="replace")))
        elif kind == EXIT:
            info = json.loads(payload)  # read first: a frame that fails leaves the command known
            note = info.get("note")
            exit_ = Exit(int(info["code"]), None if note is None else str(note))
            pending = self._commands.pop(cid, None)
            if pending is not None:
                pending.settle(exit_)
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
        return None

    def _mark_lost(self) -> None:
        if self.lost is None:
            reason = "sandbox closed" if self._closing else "sandbox supervisor exited unexpectedly"
            self.lost = SandboxLost(reason)
        for pending in self._commands.values():
            pending.settle(None, self.lost)
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


class _FrameReader(asyncio.Protocol):
    """Reads the supervisor's frames off its stdout pipe and dispatches each as it comes.

    Whatever has arrived is split at once: a command's output and exit usually come together,
    and one wake-up then serves them all. An output callback that returns an awaitable stops
    the reading (the supervisor then blocks on a full pipe: back-pressure) until it is done.
    """

    def __init__(self, channel: SupervisorChannel):
        self._channel = channel
        self._buffer = bytearray()
        self._transport: asyncio.ReadTransport | None = None
        self._waiting = False  # on an output callback; frames wait behind it
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._waiting:
            self._split()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._waiting:
            self._channel._mark_lost()

    def _split(self) -> None:
        buffer, pos, header_size = self._buffer, 0, _HEADER.size
        try:
            while len(buffer) - pos >= header_size:
                kind, cid, length = _HEADER.unpack_from(buffer, pos)
                end = pos + header_size + length
                if len(buffer) < end:
                    break
                payload = bytes(buffer[pos + header_size:end])
                pos = end
                try:
                    awaitable = self._channel._dispatch(kind, cid, payload)
                except Exception as exc:
                    # Frames come from inside the sandbox: one we cannot read ends it, rather
                    # than leave a command waiting for an exit that will not be told.
                    self._channel.destroy(f"its supervisor sent a frame that cannot be read "
                                          f"(type {kind}): {type(exc).__name__}: {exc}")
                    pos = len(buffer)
                    return
                if awaitable is not None:
                    self._waiting = True
                    if self._transport is not None and not self._closed:
                        self._transport.pause_reading()
                    after = self._after(awaitable)
                    try:
                        self._channel._spawn_task(after)
                    except RuntimeError:  # the channel is being closed: nothing waits any more
                        after.close()
                        if asyncio.iscoroutine(awaitable):
                            awaitable.close()
                        self._channel._mark_lost()
                    return
        finally:
            del buffer[:pos]

    async def _after(self, awaitable: Awaitable[None]) -> None:
        try:
            await awaitable
        finally:
            self._waiting = False
        self._split()
        if self._waiting:
            return
        if self._closed:
            self._channel._mark_lost()
        elif self._transport is not None:
            self._transport.resume_reading()


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
    frames_r, frames_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            process = await asyncio.create_subprocess_exec(
                *full,
                stdin=asyncio.subprocess.PIPE,
                stdout=frames_w,
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
        finally:
            os.close(frames_w)  # the supervisor holds the only writing end: its exit is EOF
    except OSError as exc:
        os.close(frames_r)
        raise SandboxError(f"cannot start the sandbox ({argv[0]}): {exc}") from exc
    except (TypeError, ValueError) as exc:
        os.close(frames_r)
        # An event loop other than asyncio's own (uvloop) may not start a process as another
        # user; without that the sandbox cannot drop to its unprivileged user.
        raise SandboxError(
            f"cannot start the sandbox: this event loop ({type(asyncio.get_running_loop())}) "
            f"refused to start it as the sandbox's user ({exc}); use "
            "asyncio's own event loop") from exc
    except BaseException:
        os.close(frames_r)
        raise
    frames = os.fdopen(frames_r, "rb", buffering=0)
    try:
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
        async with task_scope() as tg:
            channel = SupervisorChannel(process, tg.create_task)
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: _FrameReader(channel), frames)
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
                try:
                    await channel.aclose()
                finally:
                    transport.close()
    finally:
        frames.close()


async def _drain_stderr(process: asyncio.subprocess.Process) -> str:
    """Keep the supervisor's stderr flowing; its last lines explain a failed start."""
    assert process.stderr is not None
    tail = b""
    while chunk := await process.stderr.read(65536):
        tail = (tail + chunk)[-8192:]
        for line in chunk.decode(errors="replace").splitlines():
            log.debug("sandbox %d: %s", process.pid, line)
    return tail.decode(errors="replace")
