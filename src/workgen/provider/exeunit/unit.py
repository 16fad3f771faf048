"""The execution unit: one per activity, it runs ExeScript batches and reports on them.

It does not know how it is reached: the local network calls it directly, the yagna link binds it
on the GSB. Its surface mirrors the exe unit's GSB messages: :meth:`ExeUnit.exec` (``Exec``),
:meth:`~ExeUnit.results` (``GetExecBatchResults``), :meth:`~ExeUnit.stream`
(``StreamExecBatchResults``), :meth:`~ExeUnit.running_commands` (``GetRunningCommand``),
:attr:`~ExeUnit.state` (``GetActivityState``) and :meth:`~ExeUnit.usage` (``GetActivityUsage``).

Lifecycle: ``New → Initialized`` when entered, ``→ Deployed`` by ``deploy`` (the volumes are
made), ``→ Ready`` by ``start`` (the sandbox and its supervisor start), ``→ Terminated`` by
``terminate`` or by leaving the ``async with`` block (every process killed, every file removed).
A command given in the wrong state fails with a clear message and leaves the activity as it was.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ..._bounded import RecentIds
from ...protocol.exescript import (
    DEFAULT_CAPTURE, Command, Deploy, Run, Sign, Start, Terminate, Transfer, parse_batch,
)
from ...protocol.results import (
    CommandOutcome, CommandResult, FailureKind, Finished, RuntimeEvent, Started, StdErr, StdOut,
    utc_now,
)
from ..runtime.channel import (
    CommandHandle, SandboxError, SandboxLost, SpawnFailed, SupervisorChannel,
)
from ..runtime.sandbox import DEFAULT_PATH, Resources, SandboxSpec, open_sandbox, sandbox_user
from ..images import GvmiImage, Image, ImageLease, ImageUnavailable
from .batch import Batch, EventSubscription
from .capture import DEFAULT_MAX_AT_END, Collector
from .transfer import RemoteScheme, TransferError, transfer
from .volumes import Volumes
from .workdir import ActivityDir, make_activity_dir

log = logging.getLogger(__name__)

WORKDIR = "/golem/work"
USAGE_VECTOR = ("golem.usage.duration_sec", "golem.usage.cpu_sec")
KILL_TIMEOUT = 5.0
"""How long a killed command may take to be confirmed gone before the sandbox is destroyed."""


class ActivityState(enum.Enum):
    NEW = "New"
    INITIALIZED = "Initialized"
    DEPLOYED = "Deployed"
    READY = "Ready"
    TERMINATED = "Terminated"
    UNRESPONSIVE = "Unresponsive"


class ExeUnitError(Exception):
    """A request the execution unit cannot serve (unknown batch, terminated activity)."""


KEEP_FINISHED = 32
"""Finished batches an activity keeps for their results."""
KEEP_FINISHED_SEC = 600.0
"""How long it keeps a finished batch at most."""
RELEASED_IDS = 1024
"""Ids of released batches remembered, to tell "no longer kept" from "never existed"."""
_NO_TIMEOUT: contextlib.nullcontext[None] = contextlib.nullcontext()
"""For a batch without a timeout: an ``asyncio.timeout(None)`` costs a timer's bookkeeping."""


class UnknownBatch(ExeUnitError):
    pass


@dataclass(frozen=True)
class ExeUnitConfig:
    resources: Resources = field(default_factory=Resources)
    inet: bool = False
    rootfs: Image = None
    """What the activity runs on: an image's root directory, a GVMI image prepared at
    ``deploy``, or (``None``) the host's system directories."""
    work_root: Path | None = None
    """Where activity directories are made (a fresh temporary directory by default)."""
    max_at_end: int = DEFAULT_MAX_AT_END
    hostname: str = "golem-provider"
    remote_schemes: Mapping[str, RemoteScheme] = field(default_factory=dict)
    """Transports for storage the provider's node serves (``gftp`` on a yagna node, the local
    network's handles); ``file://`` is never one of them."""


class _Failed(Exception):
    """A command failed: becomes an ``Error`` result that ends the batch."""

    def __init__(
        self,
        message: str,
        return_code: int | None = None,
        stdout: str | bytes | None = None,
        stderr: str | bytes | None = None,
    ):
        super().__init__(message)
        self.return_code = return_code
        self.stdout = stdout
        self.stderr = stderr


@dataclass
class _Outcome:
    stdout: str | bytes | None = None
    stderr: str | bytes | None = None
    message: str | None = None
    return_code: int = 0
    failure: FailureKind | None = None


class ExeUnit:
    def __init__(self, activity_id: str | None = None, config: ExeUnitConfig | None = None):
        self.activity_id = activity_id or uuid.uuid4().hex
        self.config = config or ExeUnitConfig()
        self.state = ActivityState.NEW
        self.state_reason: str | None = None
        self.on_state: Callable[[ActivityState], None] | None = None
        """Called on every state change (the yagna link reports them to its daemon)."""
        self._batches: dict[str, Batch] = {}
        # Finished batches are kept for their results (yagna's GetExecBatchResults may ask
        # again) within bounds, so a long-lived activity does not grow with every batch; the
        # ids of those let go are remembered a while longer, to say so when asked for.
        self._released = RecentIds(RELEASED_IDS)
        self._finished: collections.deque[Batch] = collections.deque()  # in finishing order
        self._stack = contextlib.AsyncExitStack()
        self._tg: asyncio.TaskGroup | None = None
        self._dir: ActivityDir | None = None
        self._volumes: Volumes | None = None
        self._user = sandbox_user()
        self._env: dict[str, str] = {}
        self._image: ImageLease | None = None
        self._rootfs: Path | None = None
        self._workdir = WORKDIR
        self._channel: SupervisorChannel | None = None
        self._stop_sandbox = asyncio.Event()
        self._shutdown_lock = asyncio.Lock()
        self._sandbox_done: asyncio.Future[None] | None = None
        self._started_at = time.monotonic()
        self._ended_at: float | None = None
        self._cpu_sec = 0.0
        self._seen_ooms = 0
        self._seen_forks = 0

    # -- lifecycle --------------------------------------------------------------------------

    def _set_state(self, state: ActivityState) -> None:
        self.state = state
        if self.on_state is not None:
            self.on_state(state)

    async def __aenter__(self) -> ExeUnit:
        self._tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._started_at = time.monotonic()
        self._set_state(ActivityState.INITIALIZED)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel running batches, kill the sandbox and remove the activity's files."""
        for batch in self._batches.values():
            if batch.task is not None and not batch.task.done():
                batch.cancel_requested = True
                batch.task.cancel()
        await self._shutdown("activity closed")
        await self._stack.aclose()

    async def _shutdown(self, reason: str) -> None:
        async with self._shutdown_lock:
            await self._shutdown_locked(reason)

    async def _shutdown_locked(self, reason: str) -> None:
        if self.state is ActivityState.TERMINATED:
            return
        try:
            if self._channel is not None and self._channel.lost is None:
                with contextlib.suppress(SandboxError):
                    self._cpu_sec = await self._channel.cpu_seconds()
            self._stop_sandbox.set()
            if self._sandbox_done is not None:
                with contextlib.suppress(Exception):
                    await self._sandbox_done
        finally:
            # Even when cancelled while the sandbox was still starting or stopping: the
            # activity's files, disk and image hold must not outlive it.
            self._channel = None
            if self._volumes is not None:
                self._volumes.close()
                self._volumes = None
            if self._dir is not None:
                activity_dir, self._dir = self._dir, None
                await activity_dir.aclose()
            if self._image is not None:
                self._image.release()
                self._image = None
            self._ended_at = time.monotonic()
            self._set_state(ActivityState.TERMINATED)
            self.state_reason = reason

    # -- the exe unit's requests ------------------------------------------------------------

    def exec(
        self,
        batch: Sequence[Command] | str | bytes,
        *,
        batch_id: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Start a batch and return its id at once; it runs in the background.

        ``batch`` is a list of commands or the batch's JSON text (parsed here: a malformed
        batch raises :class:`~workgen.protocol.exescript.BatchFormatError` and nothing runs).
        """
        if self._tg is None:
            raise RuntimeError("the execution unit is not running: use it in 'async with'")
        if self.state is ActivityState.TERMINATED:
            raise ExeUnitError(f"activity {self.activity_id} is terminated ({self.state_reason})")
        commands = (parse_batch(batch) if isinstance(batch, (str, bytes))
                    else list(batch))
        if not commands:
            raise ValueError("a batch needs at least one command")
        batch_id = batch_id or uuid.uuid4().hex
        if batch_id in self._batches or batch_id in self._released:
            raise ExeUnitError(f"batch {batch_id} already exists")
        self._release_finished()
        b = Batch(batch_id, commands)
        self._batches[batch_id] = b
        b.task = self._tg.create_task(self._run_batch(b, timeout))
        b.task.add_done_callback(lambda _: b.mark_ended())  # also if it never ran
        return batch_id

    def _release_finished(self) -> None:
        """Let go of finished batches beyond :data:`KEEP_FINISHED`, or older than
        :data:`KEEP_FINISHED_SEC`, oldest first (called per exec: it looks at the oldest
        only)."""
        finished = self._finished
        if not finished:
            return
        now = time.monotonic()
        while finished and (len(finished) > KEEP_FINISHED
                            or now - (finished[0].finished_at or now) >= KEEP_FINISHED_SEC):
            b = finished.popleft()
            if self._batches.pop(b.id, None) is not None:
                self._released.add(b.id)

    def release_results(self) -> None:
        """Let go of every finished batch: the activity was destroyed, so no one asks for their
        results again (a provider keeps its closed activities' usage for the invoice only)."""
        self._batches = {i: b for i, b in self._batches.items() if b.finished_at is None}
        self._finished.clear()
        self._released = RecentIds(RELEASED_IDS)

    @property
    def kept_batches(self) -> int:
        """Batches held now (running, and finished ones kept for their results)."""
        return len(self._batches)

    def batch(self, batch_id: str) -> Batch:
        try:
            return self._batches[batch_id]
        except KeyError:
            if batch_id in self._released:
                raise UnknownBatch(
                    f"batch {batch_id} of activity {self.activity_id} finished long ago and "
                    f"its results are no longer kept (an activity keeps its last "
                    f"{KEEP_FINISHED} finished batches, for up to {KEEP_FINISHED_SEC:g}s)"
                ) from None
            raise UnknownBatch(f"no batch {batch_id} in activity {self.activity_id}") from None

    async def results(
        self, batch_id: str, command_index: int | None = None, timeout: float | None = None
    ) -> list[CommandResult]:
        return await self.batch(batch_id).wait_results(command_index, timeout)

    def stream(self, batch_id: str) -> EventSubscription:
        """Subscribe to a batch's runtime events from now on (call right after :meth:`exec`)."""
        return EventSubscription(self.batch(batch_id))

    async def cancel(self, batch_id: str) -> None:
        """Stop a batch: its running command is killed and the result says it was cancelled."""
        b = self.batch(batch_id)
        if b.task is not None and not b.task.done():
            b.cancel_requested = True
            b.task.cancel()
            await asyncio.wait([b.task])
        if not b.finished.is_set():
            # Cancelled before its task ever ran: it still gets its (failed) result.
            await self._finish(b, 0, False, _Outcome(
                message="batch cancelled before it started", return_code=-1,
                failure=FailureKind.CANCELLED), last=True)

    def running_commands(self) -> list[dict[str, Any]]:
        """``ExeScriptCommandState`` of each command running now."""
        states = []
        for b in self._batches.values():
            if b.current is not None:
                cmd = b.commands[b.current]
                states.append({"batchId": b.id, **_command_state(cmd)})
        return states

    async def usage(self) -> dict[str, float]:
        """Usage counters, measured: wall time of the activity and CPU time of its processes."""
        if self._channel is not None and self._channel.lost is None:
            with contextlib.suppress(SandboxError):
                self._cpu_sec = await self._channel.cpu_seconds()
        end = self._ended_at if self._ended_at is not None else time.monotonic()
        return {
            "golem.usage.duration_sec": end - self._started_at,
            "golem.usage.cpu_sec": self._cpu_sec,
        }

    @property
    def sandbox_pid(self) -> int | None:
        """PID of the running sandbox's outermost process, or ``None`` (read-only; for tests
        and monitoring: killing it makes the activity lost)."""
        return self._channel.pid if self._channel is not None else None

    @property
    def cgroup_description(self) -> str | None:
        """Where the running sandbox's per-activity limits live, or ``None`` (no cgroup)."""
        channel = self._channel
        return channel.cgroup.description if channel and channel.cgroup else None

    @property
    def sandbox_supervisor_pid(self) -> int | None:
        """Host PID of the sandbox's supervisor (its namespace's init), or ``None``."""
        return self._channel.init_pid if self._channel is not None else None

    @property
    def volumes(self) -> Mapping[str, Path]:
        """Host directories behind the container volumes (empty before ``deploy``)."""
        return self._dir.volumes if self._dir is not None else {}

    # -- running batches --------------------------------------------------------------------

    async def _run_batch(self, b: Batch, timeout: float | None) -> None:
        try:
            await self._run_commands(b, timeout)
        finally:
            b.mark_ended()

    async def _run_commands(self, b: Batch, timeout: float | None) -> None:
        index = 0
        try:
            async with asyncio.timeout(timeout) if timeout is not None else _NO_TIMEOUT:
                for index, cmd in enumerate(b.commands):
                    b.current = index
                    await b.publish(_event(b, index, Started(cmd.to_json())))
                    try:
                        outcome = await self._execute(b, index, cmd)
                    except _Failed as failure:
                        await self._finish(b, index, False, _Outcome(
                            message=str(failure), return_code=failure.return_code or 1,
                            stdout=failure.stdout, stderr=failure.stderr,
                            failure=FailureKind.TRANSFER_FAILED if isinstance(cmd, Transfer)
                            else FailureKind.COMMAND_FAILED), last=True)
                        return
                    except Exception as exc:
                        # Whatever went wrong is this command's failure: the batch gets its
                        # result and the activity goes on serving the next one.
                        log.exception("activity %s: %s failed unexpectedly",
                                      self.activity_id, cmd.name)
                        await self._finish(b, index, False, _Outcome(
                            message=f"{cmd.name} failed: {type(exc).__name__}: {exc}",
                            return_code=1, failure=FailureKind.TRANSFER_FAILED
                            if isinstance(cmd, Transfer) else FailureKind.COMMAND_FAILED),
                            last=True)
                        return
                    last = index == len(b.commands) - 1
                    await self._finish(b, index, True, outcome, last=last)
        except TimeoutError:
            await self._finish(b, index, False, _Outcome(
                message=f"batch timed out after {timeout:g}s; the running command was killed",
                return_code=-1, failure=FailureKind.TIMED_OUT), last=True)
        except asyncio.CancelledError:
            if not b.cancel_requested:
                raise
            await self._finish(b, index, False, _Outcome(
                message="batch cancelled; the running command was killed", return_code=-1,
                failure=FailureKind.CANCELLED), last=True)

    async def _finish(
        self, b: Batch, index: int, ok: bool, outcome: _Outcome, *, last: bool
    ) -> None:
        if b.finished.is_set():
            return
        await b.publish(_event(b, index, Finished(outcome.return_code, outcome.message)))
        await b.add_result(CommandOutcome(
            index=index, result="Ok" if ok else "Error", event_date=utc_now(),
            stdout=outcome.stdout, stderr=outcome.stderr, message=outcome.message,
            is_batch_finished=last or not ok,
            # -1 is the wire's "no exit code" (killed by the unit): the seam says "unknown".
            return_code=outcome.return_code if outcome.return_code >= 0 else None,
            failure=None if ok else outcome.failure or FailureKind.COMMAND_FAILED,
        ))
        if b.finished.is_set():
            self._finished.append(b)

    async def _execute(self, b: Batch, index: int, cmd: Command) -> _Outcome:
        if isinstance(cmd, Deploy):
            self._need(cmd, ActivityState.INITIALIZED)
            return await self._deploy(b, index, cmd)
        if isinstance(cmd, Start):
            self._need(cmd, ActivityState.DEPLOYED)
            await self._start()
            return _Outcome()
        if isinstance(cmd, Run):
            self._need(cmd, ActivityState.READY)
            return await self._run(b, index, cmd)
        if isinstance(cmd, Transfer):
            self._need(cmd, ActivityState.DEPLOYED, ActivityState.READY)
            assert self._volumes is not None
            try:
                size = await transfer(cmd.from_, cmd.to, self._volumes,
                                      self.config.remote_schemes, inet=self.config.inet)
            except TransferError as exc:
                raise _Failed(f"transfer failed: {exc}") from exc
            return _Outcome(message=f"transferred {size} bytes")
        if isinstance(cmd, Terminate):
            if self.state is ActivityState.TERMINATED:
                raise _Failed("terminate: the activity is already terminated")
            await self._shutdown("terminated by the requestor")
            return _Outcome()
        if isinstance(cmd, Sign):
            raise _Failed("sign is not supported by this execution unit")
        raise _Failed(f"unknown command {cmd!r}")

    def _need(self, cmd: Command, *states: ActivityState) -> None:
        if self.state not in states:
            wanted = " or ".join(s.value for s in states)
            raise _Failed(
                f"{cmd.name} needs the activity in state {wanted}, but it is {self.state.value}"
                + (f" ({self.state_reason})" if self.state_reason else "")
            )

    async def _deploy(self, b: Batch, index: int, cmd: Deploy) -> _Outcome:
        if cmd.net:
            raise _Failed("deploy: VPN networks ('net') are not supported by this execution unit")
        root = self.config.work_root
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
            if self._user is not None:
                _check_searchable(root)
        lines: list[str] = []
        image_env: dict[str, str] = {}
        volumes: tuple[str, ...] = ()
        image = self.config.rootfs
        if isinstance(image, GvmiImage):
            # Progress goes out as the command's output while it happens, in order.
            pending: asyncio.Queue[str | None] = asyncio.Queue()

            def note(line: str) -> None:
                lines.append(line)
                pending.put_nowait(line)

            async def pump() -> None:
                while (line := await pending.get()) is not None:
                    await b.publish(_event(b, index, StdOut(line + "\n")))

            failure: ImageUnavailable | None = None
            async with asyncio.TaskGroup() as tg:
                tg.create_task(pump())
                try:
                    self._image = await image.prepare(note)
                except ImageUnavailable as exc:
                    failure = exc
                finally:
                    pending.put_nowait(None)
            if failure is not None and image.host_if_unavailable:
                lines.append(f"development mode: image {image.hash} is unavailable ({failure}); "
                             "running on the host system image")
                log.warning("activity %s: %s", self.activity_id, lines[-1])
            elif failure is not None or self._image is None:
                raise _Failed(f"deploy: {failure}", stdout="".join(f"{x}\n" for x in lines))
            if self._image is not None:
                prepared = self._image.image
                self._rootfs = prepared.rootfs
                image_env = prepared.metadata.env_map
                volumes = prepared.metadata.volumes
                # As Golem's VM runtime: the image's working directory, else the root.
                self._workdir = prepared.metadata.working_dir or "/"
        else:
            self._rootfs = image
        if self._rootfs is not None and self._user is not None:
            _check_searchable(self._rootfs, "image root")
        self._dir = await make_activity_dir(root, self.activity_id,
                                            self.config.resources.storage_bytes, self._user,
                                            volumes)
        self._volumes = Volumes(self.volumes, self._user)
        self._env = image_env | dict(cmd.env)
        self._set_state(ActivityState.DEPLOYED)
        return _Outcome(stdout="".join(f"{line}\n" for line in lines) or None)

    async def _start(self) -> None:
        assert self._tg is not None
        assert self._dir is not None
        spec = SandboxSpec(
            volumes=self.volumes, resources=self.config.resources, inet=self.config.inet,
            rootfs=self._rootfs, hostname=self.config.hostname, tmp=self._dir.tmp,
            name=f"act-{self.activity_id[:12]}",
        )
        started: asyncio.Future[SupervisorChannel] = asyncio.get_running_loop().create_future()
        self._sandbox_done = self._tg.create_task(self._keep_sandbox(spec, started))
        try:
            self._channel = await started
        except SandboxError as exc:
            raise _Failed(f"start: {exc}") from exc
        self._set_state(ActivityState.READY)

    async def _keep_sandbox(
        self, spec: SandboxSpec, started: asyncio.Future[SupervisorChannel]
    ) -> None:
        """Owns the sandbox for as long as the activity is ready (its task holds the context)."""
        try:
            async with open_sandbox(spec, user=self._user) as channel:
                started.set_result(channel)
                await self._stop_sandbox.wait()
        except SandboxError as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                log.warning("activity %s: sandbox error: %s", self.activity_id, exc)

    async def _run(self, b: Batch, index: int, cmd: Run) -> _Outcome:
        channel = self._channel
        assert channel is not None
        capture = cmd.capture or DEFAULT_CAPTURE

        async def emit_out(data: str | bytes) -> None:
            await b.publish(_event(b, index, StdOut(data)))

        async def emit_err(data: str | bytes) -> None:
            await b.publish(_event(b, index, StdErr(data)))

        out = Collector("stdout", capture.stdout, emit_out, max_at_end=self.config.max_at_end)
        err = Collector("stderr", capture.stderr, emit_err, max_at_end=self.config.max_at_end)
        overflow: list[str] = []
        cid = 0

        def stop(exc: Exception) -> None:  # a capture limit: stop the command, report why
            overflow.append(str(exc))
            channel.kill(cid)

        async def emitted(emission: Awaitable[None]) -> None:
            try:
                await emission
            except Exception as exc:
                stop(exc)

        def on_output(stream: int, data: bytes) -> Awaitable[None] | None:
            # Synchronous unless the output is streamed: the channel then reads on at once.
            if overflow:
                return None
            try:
                emission = (out if stream == 1 else err).take(data)
            except Exception as exc:
                stop(exc)
                return None
            return None if emission is None else emitted(emission)

        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", **self._env,
               **(cmd.env or {})}
        try:
            handle = channel.spawn([cmd.entry_point, *cmd.args], env, self._workdir, on_output,
                                   stream=out.streams or err.streams)
        except SandboxLost as exc:
            await self._lost(str(exc))
            raise _Failed(f"run: the activity's sandbox is gone ({exc})") from exc
        cid = handle.id
        try:
            # A future of our own: cancelling us must not cancel the exit future, which the
            # kill below still waits for.
            exit_ = await handle.wait()
        except SpawnFailed as exc:
            raise _Failed(f"run: {exc}", return_code=127) from exc
        except SandboxLost as exc:
            await self._lost(str(exc))
            raise _Failed(
                f"run: the activity's sandbox was lost while the command ran ({exc})") from exc
        finally:
            if not handle.exited.done():
                await _kill_command(channel, handle)
        await out.finish()
        await err.finish()
        code = exit_.return_code
        notes = out.notes() + err.notes()
        if exit_.note:
            notes.append(exit_.note)
        if overflow:
            raise _failed_with_output(f"run: {overflow[0]}", 1, out, err, notes)
        if code != 0:
            if code < 0:
                sig = -code
                reason = f"command killed by signal {sig} ({_signal_name(sig)})"
                code = 128 + sig
            else:
                reason = f"command exited with return code {code}"
            notes.extend(self._limits_hit(channel, code))
            tail = err.tail_text()
            raise _failed_with_output(reason + (f": {tail}" if tail else ""), code, out, err, notes)
        return _Outcome(stdout=out.value(), stderr=err.value(),
                        message="; ".join(notes) if notes else None)

    def _limits_hit(self, channel: SupervisorChannel, code: int) -> list[str]:
        """Which of the activity's limits a failed command ran into, if any."""
        hits = []
        resources = self.config.resources
        cgroup = channel.cgroup
        if cgroup is not None:
            ooms, forks = cgroup.oom_kills(), cgroup.pids_max_hits()
            if ooms > self._seen_ooms:
                hits.append(f"the activity's memory limit ({resources.mem_gib:g} GiB for all its "
                            "processes together) was reached and a process was killed")
            if forks > self._seen_forks:
                hits.append(f"the activity's process limit ({resources.max_processes}) refused "
                            f"{forks - self._seen_forks} new process(es)")
            self._seen_ooms, self._seen_forks = ooms, forks
        if code == 128 + signal.SIGXFSZ:
            hits.append(f"a file reached the activity's file size limit "
                        f"({resources.storage_gib:g} GiB)")
        if code == 128 + signal.SIGXCPU:
            hits.append("the command reached its CPU time limit")
        return hits

    async def _lost(self, reason: str) -> None:
        log.warning("activity %s lost its sandbox: %s", self.activity_id, reason)
        await self._shutdown(f"sandbox lost: {reason}")


async def _kill_command(channel: SupervisorChannel, handle: CommandHandle) -> None:
    """Kill a running command (a timeout, a cancel) and wait for it, within a bound: if the
    supervisor does not confirm in time, the whole sandbox is killed from the host."""
    with contextlib.suppress(SandboxError):
        channel.kill(handle.id)
    try:
        async with asyncio.timeout(KILL_TIMEOUT):
            await asyncio.shield(handle.exited)
    except TimeoutError:
        channel.destroy(f"command {handle.id} did not end within {KILL_TIMEOUT:g}s of being killed")
    except SandboxError:
        pass


def _failed_with_output(
    message: str, code: int, out: Collector, err: Collector, notes: list[str]
) -> _Failed:
    return _Failed("; ".join([message, *notes]), code, out.value(), err.value())


def _event(b: Batch, index: int, kind: Any) -> RuntimeEvent:
    return RuntimeEvent(batch_id=b.id, index=index, timestamp=utc_now(), kind=kind)


def _command_state(cmd: Command) -> dict[str, Any]:
    params: list[str] | None = None
    if isinstance(cmd, Run):
        params = [cmd.entry_point, *cmd.args]
    elif isinstance(cmd, Start):
        params = list(cmd.args)
    elif isinstance(cmd, Transfer):
        params = [cmd.from_, cmd.to]
    return {"command": cmd.name.capitalize(), "params": params, "progress": None}


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _check_searchable(root: Path, what: str = "work root") -> None:
    """Sandboxes run as other users, who must be able to pass through ``root`` to their volumes
    (or to an image's root filesystem)."""
    for directory in [root.resolve(), *root.resolve().parents]:
        if not os.stat(directory).st_mode & 0o001:
            raise _Failed(
                f"deploy: the {what} {root} is not reachable by sandbox users: "
                f"{directory} lacks search permission for others (chmod o+x)"
            )
