"""Running a yielded script on its activity: the batch sent through the backend, its runtime
events followed when they are wanted (live output, command start times), and each command's
typed outcome turned into the future the worker awaits (a :class:`Result`, or the error that
says why not). The worker's :class:`WorkContext` only builds scripts; the job runs them here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime
from typing import Any

from ..backends.base import Activity, Agreement, Backend
from .._aio import task_scope
from ..errors import (
    ActivityClosed, ActivityError, ActivityLost, BatchError, BatchTimeoutError, CommandExecutionError,
    CommandSkipped, WorkgenError,
)
from ..protocol.exescript import Run, Stream
from ..protocol.results import (
    CommandOutcome, FailureKind, Finished, RuntimeEvent, Started, StdErr, StdOut, utc_now,
)
from . import events
from .context import WorkContext
from .script import Result, Script, Step

# How much longer than a script's own timeout we wait for the backend to report it.
_TIMEOUT_GRACE = 10.0
# A script without a timeout: asyncio.timeout(None) would still cost a timer's bookkeeping.
_NO_LIMIT: contextlib.nullcontext[None] = contextlib.nullcontext()


class ScriptRunner:
    """Runs the scripts of one worker's context on its activity, one batch each."""

    def __init__(self, context: WorkContext, *, backend: Backend, agreement: Agreement,
                 activity: Activity, job_id: str, emit: Callable[[events.Event], None],
                 stream_output: bool):
        self.context = context
        self._backend = backend
        self._activity = activity
        self._job_id = job_id
        self._emit = emit
        self._stream_output = stream_output
        self.id = activity.id
        self.provider_name = agreement.provider_name
        self.retired = False
        """Set when a script could not be stopped: the activity takes no further tasks."""

    async def run(self, script: Script) -> list[Result]:
        """Run ``script``; resolve its futures; raise the first failure as a BatchError."""
        if script.context is not self.context:
            raise RuntimeError(f"{script!r} was made by another context; use this worker's "
                               "context.new_script()")
        steps = script.seal()
        if not steps:
            return []
        try:
            if self.retired:
                raise ActivityClosed(
                    f"activity {self.id} on {self.provider_name} is being ended: a timed-out "
                    "script could not be stopped on it", activity_id=self.id)
            return await self._execute(script, steps)
        except BaseException as exc:
            for step in steps:
                if not step.future.done():
                    _fail(step.future, exc if isinstance(exc, WorkgenError)
                          else CommandSkipped("the script did not run to its end"))
            raise
        finally:
            for step in steps:
                with contextlib.suppress(Exception):
                    await step.aclose()

    async def _execute(self, script: Script, steps: list[Step]) -> list[Result]:
        commands = [await step.build(self._backend.storage) for step in steps]
        sent_at = utc_now()
        batch = await self._backend.exec(self._activity, commands, script.timeout)
        self._emit(events.ScriptSent(job_id=self._job_id, activity_id=self.id, batch_id=batch.id,
                                     commands=tuple(c.to_json() for c in commands)))
        started: dict[int, datetime] = {}
        codes: dict[int, int] = {}
        limit = None if script.timeout is None else script.timeout + _TIMEOUT_GRACE
        follow = self._backend.capabilities.cheap_events or self._stream_output or any(
            isinstance(c, Run) and c.capture is not None
            and (isinstance(c.capture.stdout, Stream) or isinstance(c.capture.stderr, Stream))
            for c in commands)
        try:
            async with asyncio.timeout(limit) if limit is not None else _NO_LIMIT:
                async for event in (batch.events() if follow else _nothing()):
                    kind = event.kind
                    if isinstance(kind, Started):
                        started[event.index] = event.timestamp
                    elif isinstance(kind, Finished):
                        codes[event.index] = kind.return_code
                    elif isinstance(kind, (StdOut, StdErr)):
                        self._emit(events.CommandOutput(
                            activity_id=self.id, provider_name=self.provider_name,
                            index=event.index, stream="stdout" if isinstance(kind, StdOut)
                            else "stderr", output=kind.output))
                raw = await batch.results()
        except TimeoutError:
            stopped = False
            if self._backend.capabilities.batch_cancel:
                with contextlib.suppress(Exception):
                    stopped = await batch.cancel()
            if not stopped:
                # The command runs on (and is billed) until the activity ends: end it after
                # this task rather than run more work beside it.
                self.retired = True
            raise BatchTimeoutError(
                f"script on {self.provider_name} ran past its {script.timeout}s timeout"
            ) from None
        by_index = {r.index: r for r in raw}
        if not started:
            # Without runtime events, a command is known to start when the one before it ended
            # (a batch runs its commands in order), the first one when the batch was sent.
            # The provider's clock may differ from ours: never start after the end.
            previous = sent_at
            for index in range(len(steps)):
                if index in by_index:
                    finished = by_index[index].event_date
                    started[index] = min(previous, finished)
                    previous = finished
        results: list[Result] = []
        failure: BatchError | None = None
        for index, (step, command) in enumerate(zip(steps, commands, strict=True)):
            r = by_index.get(index)
            if failure is not None or r is None:
                _fail(step.future, CommandSkipped(
                    f"command {index} did not run: an earlier command of the script failed"))
                continue
            result = _result(index, command, r, started.get(index), codes.get(index))
            if result.success:
                try:
                    result = await step.finish(result)
                except (WorkgenError, ValueError, OSError) as exc:
                    failure = CommandExecutionError(f"command {index}: {exc}", result=result)
                    failure.__cause__ = exc
                    _fail(step.future, failure)
                    continue
                step.future.set_result(result)
                results.append(result)
            else:
                failure = _failure(result, r.failure)
                _fail(step.future, failure)
                if r.failure is FailureKind.TIMED_OUT and \
                        not self._backend.capabilities.batch_cancel:
                    # A backend that cannot stop a batch did not stop this one either: it
                    # runs on (and is billed) until the activity ends.
                    self.retired = True
        self._emit(events.ScriptFinished(job_id=self._job_id, activity_id=self.id,
                                         batch_id=batch.id, success=failure is None,
                                         message=str(failure) if failure else None))
        if failure is not None:
            raise failure
        if len(raw) < len(steps):
            raise ActivityLost(f"the batch on {self.provider_name} ended after "
                               f"{len(raw)} of {len(steps)} commands", activity_id=self.id)
        return results


async def drive(gen: AsyncGenerator[Any, Any], runner: ScriptRunner, who: str,
                allow_empty: bool = False) -> None:
    """Run a work generator (a worker, a service's handler) to its end.

    Each script it yields runs on the runner's activity; the ``yield`` gives back an awaitable
    of the script's results, or raises the script's failure where it was yielded (so the
    generator may catch it). A script yielded with ``wait_for_results=False`` runs while the
    generator goes on. ``allow_empty``: a bare ``yield`` (``None``) is allowed and ignored, as
    in a service handler that has nothing to send yet.
    """
    async with task_scope() as tg:
        send: Any = None
        throw: BaseException | None = None
        while True:
            try:
                item = await (gen.athrow(throw) if throw is not None else gen.asend(send))
            except StopAsyncIteration:
                return
            send, throw = None, None
            if item is None and allow_empty:
                continue
            if not isinstance(item, Script):
                raise TypeError(f"{who} yielded {item!r}; yield Script objects made by "
                                "context.new_script()")
            if item.sent:
                # Raised where it was yielded, so the generator can tell which one.
                throw = RuntimeError(f"{item!r} was already sent: a script runs once; make a "
                                     "new one with context.new_script()")
                continue
            if item.wait_for_results:
                try:
                    send = _completed(await runner.run(item))
                except (BatchError, ActivityError) as exc:
                    throw = exc
            else:
                send = tg.create_task(runner.run(item))


async def start_activity(backend: Backend, agreement: Agreement, *, job_id: str,
                         emit: Callable[[events.Event], None], stream_output: bool
                         ) -> tuple[Activity, WorkContext, ScriptRunner]:
    """A new activity on ``agreement`` (announced), with the worker's context and its runner."""
    activity = await backend.create_activity(agreement)
    emit(events.ActivityCreated(job_id=job_id, activity_id=activity.id,
                                agreement_id=agreement.id, provider_name=agreement.provider_name))
    ctx = WorkContext(backend=backend, agreement=agreement, activity=activity, job_id=job_id,
                      emit=emit, stream_output=stream_output)
    runner = ScriptRunner(ctx, backend=backend, agreement=agreement, activity=activity,
                          job_id=job_id, emit=emit, stream_output=stream_output)
    return activity, ctx, runner


async def end_activity(backend: Backend, activity: Activity, provider_name: str,
                       emit: Callable[[events.Event], None]) -> None:
    """Destroy ``activity`` (whatever state it is in) and announce it."""
    with contextlib.suppress(Exception):
        await backend.destroy_activity(activity)
    emit(events.ActivityDestroyed(activity_id=activity.id, provider_name=provider_name))


def _completed(results: list[Result]) -> asyncio.Future[list[Result]]:
    future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
    future.set_result(results)
    return future


async def _nothing() -> AsyncIterator[RuntimeEvent]:
    return
    yield  # an empty async generator


def _result(index: int, command: Any, raw: CommandOutcome, started: datetime | None,
            code: int | None) -> Result:
    # A code the runtime events reported wins over none; the backend's otherwise.
    if code is None or code < 0:
        code = raw.return_code
    return Result(index=index, command=command, success=raw.ok, return_code=code,
                  stdout=raw.stdout, stderr=raw.stderr, message=raw.message,
                  started_at=started, finished_at=raw.event_date)


def _failure(result: Result, kind: FailureKind | None) -> BatchError:
    message = result.message or "command failed"
    if kind is FailureKind.TIMED_OUT:
        return BatchTimeoutError(f"command {result.index}: {message}")
    return CommandExecutionError(f"command {result.index} ({_describe(result.command)}) "
                                 f"failed: {message}", result=result)


def _describe(command: Any) -> str:
    body = command.to_json()
    ((name, args),) = body.items()
    if name == "run":
        return " ".join([args["entry_point"], *args.get("args", [])])[:80]
    if name == "transfer":
        return f"transfer {args['from']} -> {args['to']}"
    return str(name)


def _fail(future: asyncio.Future[Result], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        # Marked as retrieved: a worker that caught the error at its yield need not await
        # every future of the script, and asyncio must not complain about those it did not.
        future.exception()
