"""``WorkContext``: a worker's handle on its activity, and how a yielded script is run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..backends.base import Activity, Agreement, Backend
from ..errors import (
    ActivityClosed, ActivityLost, BatchError, BatchTimeoutError, CommandExecutionError,
    CommandSkipped, WorkgenError,
)
from ..protocol.exescript import Run, Stream
from ..protocol.results import (
    CommandOutcome, FailureKind, Finished, RuntimeEvent, Started, StdErr, StdOut, utc_now,
)
from . import events
from .script import Result, Script, _Step

# How much longer than a script's own timeout we wait for the backend to report it.
_TIMEOUT_GRACE = 10.0


class WorkContext:
    """Given to a worker for one activity on one provider; builds scripts for it."""

    def __init__(
        self,
        *,
        backend: Backend,
        agreement: Agreement,
        activity: Activity,
        job_id: str,
        emit: Callable[[events.Event], None],
        stream_output: bool = False,
    ):
        self._backend = backend
        self._agreement = agreement
        self._activity = activity
        self._job_id = job_id
        self._emit = emit
        self._stream_output = stream_output
        self._created = utc_now()
        self._retired = False
        """Set when a script could not be stopped: the activity takes no further tasks."""

    def __repr__(self) -> str:
        return f"WorkContext(activity={self.id}, provider={self.provider_name})"

    @property
    def id(self) -> str:
        """The activity's id."""
        return self._activity.id

    @property
    def provider_name(self) -> str:
        return self._agreement.provider_name

    @property
    def provider_id(self) -> str:
        return self._agreement.provider_id

    @property
    def agreement_id(self) -> str:
        return self._agreement.id

    def new_script(self, timeout: float | None = None, wait_for_results: bool = True) -> Script:
        """A new script for this activity.

        ``timeout`` (seconds) bounds the whole script; ``wait_for_results=False`` resumes the
        worker as soon as the script is sent (errors then surface when awaiting its results).
        """
        return Script(self, timeout=timeout, wait_for_results=wait_for_results)

    async def get_usage(self) -> dict[str, float]:
        """The activity's usage counters, as its provider measures them."""
        return await self._backend.activity_usage(self._activity)

    async def get_cost(self) -> Decimal:
        """What the activity has cost so far, by the agreement's pricing and its usage."""
        return self._agreement.pricing.price_for(await self.get_usage())

    async def get_raw_state(self) -> str:
        return await self._backend.activity_state(self._activity)

    # -- running scripts ---------------------------------------------------------------------

    async def _run_script(self, script: Script) -> list[Result]:
        """Run ``script``; resolve its futures; raise the first failure as a BatchError."""
        if script.context is not self:
            raise RuntimeError(f"{script!r} was made by another context; use this worker's "
                               "context.new_script()")
        script._sent = True
        steps = script._steps
        if not steps:
            return []
        try:
            if self._retired:
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

    async def _execute(self, script: Script, steps: list[_Step]) -> list[Result]:
        commands = [await step.build(self._backend.storage) for step in steps]
        sent_at = utc_now()
        batch = await self._backend.exec(self._activity, commands, script.timeout)
        self._emit(events.ScriptSent(job_id=self._job_id, activity_id=self.id, batch_id=batch.id,
                                     commands=tuple(c.to_json() for c in commands)))
        started: dict[int, datetime] = {}
        codes: dict[int, int] = {}
        limit = None if script.timeout is None else script.timeout + _TIMEOUT_GRACE
        follow = self._backend.cheap_events or self._stream_output or any(
            isinstance(c, Run) and c.capture is not None
            and (isinstance(c.capture.stdout, Stream) or isinstance(c.capture.stderr, Stream))
            for c in commands)
        try:
            async with asyncio.timeout(limit):
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
            with contextlib.suppress(Exception):
                stopped = await batch.cancel()
            if not stopped:
                # The command runs on (and is billed) until the activity ends: end it after
                # this task rather than run more work beside it.
                self._retired = True
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
        self._emit(events.ScriptFinished(job_id=self._job_id, activity_id=self.id,
                                         batch_id=batch.id, success=failure is None,
                                         message=str(failure) if failure else None))
        if failure is not None:
            raise failure
        if len(raw) < len(steps):
            raise ActivityLost(f"the batch on {self.provider_name} ended after "
                               f"{len(raw)} of {len(steps)} commands", activity_id=self.id)
        return results


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
