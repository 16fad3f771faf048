"""One ``execute_tasks`` job: worker slots that each sign an agreement, create an activity and
drive the user's worker on it, with tasks from the job's queue.

A job runs in a task of its ``Golem``, not in the caller's: ``execute_tasks`` only reads the
accepted tasks from a queue, so a caller that stops iterating (``break``, an exception) just
closes the job, which cancels its slots, destroys their activities and ends their agreements.

Failure handling: when a worker raises (including a remote failure it did not catch), the
tasks it held go back to the queue, counted as attempts, and its activity is given up; another
slot's activity, or a new one, picks them up. A task out of attempts, or rejected without
retry, fails for good and is reported, never dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from decimal import Decimal
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

from .._aio import task_scope
from ..backends.base import Activity, Agreement, Backend, Demand, Proposal
from ..errors import (
    BudgetExhausted, JobTimeoutError, NoProvidersError, WorkgenError,
)
from . import events
from .budget import AgreementBudget, extend_while_affordable, loop_time
from .context import WorkContext
from .market import Market, open_market
from .payments import Payments
from .queue import TaskQueue
from .runner import ScriptRunner, drive, end_activity, start_activity
from .script import Script
from .strategy import MarketStrategy
from .task import Task, TaskStatus

log = logging.getLogger(__name__)

Worker = Callable[[WorkContext, AsyncIterator[Task[Any, Any]]], AsyncGenerator[Script, Any]]

# The first task on a new agreement is assumed to take this long, for the budget's sake.
FIRST_TASK_GUESS_SEC = 1.0


class _WorkerFailed(Exception):
    pass


class _Misuse(Exception):
    """The job cannot run as asked (say, the worker is no async generator): it ends with
    ``error``, whatever the providers do."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


START_FAILURE_LIMIT = 5
"""Activities failing to start in a row (none started between) that end a job."""


class Job:
    def __init__(self, *, backend: Backend, payments: Payments, strategy: MarketStrategy,
                 emit: Callable[[events.Event], None], stream_output: bool, worker: Worker,
                 data: Iterable[Any] | AsyncIterable[Any], demand: Demand, max_workers: int,
                 timeout: float | None, job_id: str, implicit_init: bool, max_retries: int,
                 tasks_total: int | None = None):
        self._backend = backend
        self._payments = payments
        self._budget = payments.budget
        self._strategy = strategy
        self._emit = emit
        self._stream_output = stream_output
        self.id = job_id
        self._tasks_total = tasks_total
        self._worker = worker
        self._demand = demand
        self._max_workers = max_workers
        self._timeout = timeout
        self._implicit_init = implicit_init
        self._max_retries = max_retries
        self.queue = TaskQueue(data)
        self.accepted: asyncio.Queue[Task[Any, Any] | None] = asyncio.Queue(
            maxsize=max(64, 4 * max_workers))
        self.failed: list[Task[Any, Any]] = []
        self.error: BaseException | None = None
        self.done = asyncio.Event()
        self.runner: asyncio.Task[None] | None = None
        self._agreement_ended = asyncio.Condition()
        self._free_when_short: Decimal | None = None
        self._active_agreements = 0
        # Reservations held by signings still under way: they are money about to work, so a
        # slot short of budget must wait for them as for running agreements.
        self._signing_reserved = 0
        # Activities that failed to start (create, deploy, start) since one last started: a
        # provider that can never start one (an image it can't run) must not loop forever.
        self._failed_starts = 0
        self._last_start_failure = ""

    # -- the job as a whole ------------------------------------------------------------------

    async def run(self) -> None:
        """The job's task: runs everything, records the outcome, always signals the end."""
        self._emit(events.JobStarted(job_id=self.id, tasks_total=self._tasks_total))
        try:
            async with asyncio.timeout(self._timeout):
                await self._run_slots()
        except TimeoutError:
            self.error = JobTimeoutError(f"job {self.id} ran out of its {self._timeout:g}s")
        except asyncio.CancelledError:
            self.error = asyncio.CancelledError()
            raise
        except BaseExceptionGroup as group:
            # Several slots failed at once (say, all found no provider): report the first.
            self.error = _first_error(group)
        except Exception as exc:  # reported to the caller of execute_tasks
            self.error = exc
        finally:
            if isinstance(self.error, _Misuse):
                self.error = self.error.error
            reason = _describe_error(self.error)
            for task in self.queue.drain():
                await self._fail(task, reason or "the job ended before the task could run")
            await self.queue.close()
            self._emit(events.JobFinished(job_id=self.id, error=reason))
            self.done.set()
            await self.accepted.put(None)

    async def cancel(self) -> None:
        """Stop the job (if it still runs) and wait until it has cleaned up."""
        if self.runner is not None:
            if not self.runner.done():
                self.runner.cancel()
            await asyncio.wait([self.runner])

    async def _run_slots(self) -> None:
        async with open_market(self._backend, self._demand, self._strategy, self.id,
                               self._emit) as market:
            async with task_scope() as tg:
                for _ in range(self._max_workers):
                    tg.create_task(self._slot(market))

    # -- a worker slot -----------------------------------------------------------------------

    async def _slot(self, market: Market) -> None:
        # No agreement is made without work for it, and no task is held while negotiating
        # (a held task would keep the job from ending while this slot waits for a provider).
        while await self.queue.wait_for_work():
            if not self._budget_may_suffice():
                # What is free did not suffice last time: wait for a running agreement to end
                # and give back what it did not use; with none running, the job is over.
                await self.queue.release_claim()
                if self._active_agreements == 0 and self._signing_reserved == 0:
                    await self._payments.invoices_settled()
                    if self._budget_may_suffice():
                        continue
                    raise self._exhausted()
                await self._wait_for_an_agreement_to_end()
                continue
            try:
                signed = await self._sign_while_work_remains(market)
            except BaseException:
                await self.queue.release_claim()
                raise
            if signed is None:
                await self.queue.release_claim()
                if self.queue.finished:
                    return
                # The budget could not cover the best offer's terms.
                self._free_when_short = self._budget.free
                if self._active_agreements == 0 and self._signing_reserved == 0:
                    await self._payments.invoices_settled()
                    if self._budget.free > self._free_when_short:
                        continue  # settled invoices gave some back: try again
                    raise self._exhausted()
                await self._wait_for_an_agreement_to_end()
                continue
            agreement, reservation = signed
            self._signing_reserved -= 1
            self._free_when_short = None
            first = self.queue.take_claimed()
            if first is None:  # the others took it all meanwhile
                reservation.close(Decimal(0))
                await self._payments.end_agreement(agreement, None, "no work left")
                continue
            self._active_agreements += 1
            self._payments.agreement_started(agreement, reservation)
            try:
                await self._on_agreement(agreement, reservation, first)
            finally:
                self._active_agreements -= 1
                async with self._agreement_ended:
                    self._agreement_ended.notify_all()
            if self._failed_starts >= START_FAILURE_LIMIT:
                raise NoProvidersError(
                    f"job {self.id}: {self._failed_starts} activities in a row failed to "
                    f"start; the last: {self._last_start_failure}")

    def _budget_may_suffice(self) -> bool:
        free = self._budget.free
        if free <= 0:
            return False
        return self._free_when_short is None or free > self._free_when_short

    def _exhausted(self) -> BudgetExhausted:
        return BudgetExhausted(f"job {self.id}: the budget of {self._budget.total} cannot "
                               "pay for more work")

    def _reserve(self, proposal: Proposal) -> AgreementBudget | None:
        reservation = self._budget.reserve_for(proposal.properties)
        if reservation is not None:
            self._signing_reserved += 1
        return reservation

    def _release(self, reservation: AgreementBudget) -> None:
        self._signing_reserved -= 1
        reservation.close(Decimal(0))

    async def _wait_for_an_agreement_to_end(self) -> None:
        async with self._agreement_ended:
            await self._agreement_ended.wait()
        await self._payments.invoices_settled()

    async def _sign_while_work_remains(
        self, market: Market
    ) -> tuple[Agreement, AgreementBudget] | None:
        sign: asyncio.Task[tuple[Agreement, AgreementBudget] | None] | None = None
        try:
            async with task_scope() as tg:
                sign = tg.create_task(market.sign(self._reserve, self._release))
                over = tg.create_task(self.queue.all_done.wait())
                await asyncio.wait({sign, over}, return_when=asyncio.FIRST_COMPLETED)
                if sign.done():
                    over.cancel()
                else:
                    sign.cancel()
        except BaseException:
            # Cancelled, maybe just as the signing finished: undo what it did.
            if sign is not None and sign.done() and not sign.cancelled() \
                    and sign.exception() is None and (signed := sign.result()) is not None:
                self._release(signed[1])
                await self._payments.end_agreement(signed[0], None, "job closed")
            raise
        if sign.cancelled():
            return None
        return sign.result()

    async def _on_agreement(self, agreement: Agreement, reservation: AgreementBudget,
                            first: Task[Any, Any]) -> None:
        reason = "all work done"
        activity: Activity | None = None
        pending: Task[Any, Any] | None = first
        started = False
        try:
            activity, ctx, runner = await start_activity(
                self._backend, agreement, job_id=self.id, emit=self._emit,
                stream_output=self._stream_output)
            async with asyncio.timeout_at(loop_time(reservation.deadline())) as deadline, \
                    task_scope() as tg:
                extender = tg.create_task(extend_while_affordable(reservation, deadline))
                try:
                    if self._implicit_init:
                        init = ctx.new_script()
                        init.deploy()
                        init.start()
                        await runner.run(init)
                    started = True
                    self._failed_starts = 0
                    while pending is not None:
                        task, pending = pending, None
                        if await self._drive(ctx, runner, task, reservation, deadline):
                            reason = "the agreement used its share of the budget"
                            return
                        if runner.retired:
                            reason = ("a timed-out script could not be stopped on the provider; "
                                      "ending its activity stops it")
                            return
                        pending = await self.queue.get()
                finally:
                    extender.cancel()
        except TimeoutError:
            reason = "the agreement used its share of the budget"
            log.info("%s: %s", agreement.provider_name, reason)
        except _Misuse:
            reason = "the job cannot run"
            raise
        except (WorkgenError, _WorkerFailed, Exception) as exc:
            reason = f"failed: {_short(exc)}"
            if not started:
                self._failed_starts += 1
                self._last_start_failure = f"{agreement.provider_name}: {_short(exc)}"
            self._strategy.report_failure(agreement.provider_id, reason)
            self._emit(events.ActivityFailed(job_id=self.id,
                                             activity_id=activity.id if activity else "",
                                             provider_name=agreement.provider_name,
                                             reason=_short(exc)))
        finally:
            if pending is not None and pending.status is TaskStatus.WAITING:
                await self.queue.put_back(pending)
            if activity is not None:
                await end_activity(self._backend, activity, agreement.provider_name, self._emit)
            await self._payments.end_agreement(agreement, reservation, reason)

    async def _drive(self, ctx: WorkContext, runner: ScriptRunner, first: Task[Any, Any],
                     reservation: AgreementBudget, deadline: asyncio.Timeout) -> bool:
        """Run the user's worker once on ``ctx``; True if it stopped for the budget's sake."""
        held: list[Task[Any, Any]] = []
        state: dict[str, Any] = {"budget_stop": False, "longest": None}
        tasks = self._tasks(ctx, runner, first, held, reservation, deadline, state)
        gen = self._worker(ctx, tasks)
        if not inspect.isasyncgen(gen):
            if inspect.iscoroutine(gen):
                gen.close()
            await self.queue.put_back(first)  # never handed to the worker
            raise _Misuse(TypeError(
                f"the worker {self._worker!r} returned {gen!r}, not an async generator: a "
                "worker is an async generator function that yields scripts"))
        try:
            await drive(gen, runner, "the worker")
        except Exception as exc:
            for task in held:
                if task.status is TaskStatus.RUNNING:
                    await self._retry_or_fail(task, _short(exc))
            raise _WorkerFailed(_short(exc)) from exc
        except BaseException:
            # Cancelled (the job is closing, or the agreement's budget ran out): the tasks in
            # hand were not the worker's fault, so they go back without using an attempt.
            for task in held:
                if task.status is TaskStatus.RUNNING:
                    task.attempts -= 1
                    task._requeue()
                    await self.queue.put_back(task)
            raise
        finally:
            await gen.aclose()
            await tasks.aclose()
        for task in held:
            await self._settle(task, worker_done=True)
        return state["budget_stop"] is True

    async def _tasks(self, ctx: WorkContext, runner: ScriptRunner, first: Task[Any, Any],
                     held: list[Task[Any, Any]],
                     reservation: AgreementBudget, deadline: asyncio.Timeout,
                     state: dict[str, Any]) -> AsyncGenerator[Task[Any, Any], None]:
        """The ``tasks`` iterator a worker reads: one task at a time from the job's queue."""
        task: Task[Any, Any] | None = first
        reserved = None  # the reservation the deadline was last set for
        while task is not None:
            longest = state["longest"]
            if not reservation.ensure(FIRST_TASK_GUESS_SEC if longest is None else longest):
                await self.queue.put_back(task)
                state["budget_stop"] = True
                return
            if reservation.reserved != reserved:  # the deadline follows the reservation only
                reserved = reservation.reserved
                deadline.reschedule(loop_time(reservation.deadline()))
            task._start(ctx.provider_name)
            held.append(task)
            self._emit(events.TaskStarted(job_id=self.id, task_id=task.id, activity_id=ctx.id,
                                          provider_name=ctx.provider_name, data=task.data))
            started = time.monotonic()
            yield task
            state["longest"] = max(longest or 0.0, time.monotonic() - started)
            for done in [t for t in held if t.status is not TaskStatus.RUNNING]:
                held.remove(done)
                await self._settle(done)
            if runner.retired:
                return
            # The tasks this worker holds cannot come back while it waits for another.
            task = await self.queue.get(holding=sum(
                1 for t in held if t.status is TaskStatus.RUNNING))

    # -- settling tasks ----------------------------------------------------------------------

    async def _settle(self, task: Task[Any, Any], worker_done: bool = False) -> None:
        if task.status is TaskStatus.ACCEPTED:
            await self.queue.settle(task)
            self._emit(events.TaskAccepted(job_id=self.id, task_id=task.id,
                                           provider_name=task.provider_name or "",
                                           result=task.result, running_time=task.running_time))
            await self.accepted.put(task)
        elif task.status is TaskStatus.REJECTED:
            self._emit(events.TaskRejected(job_id=self.id, task_id=task.id,
                                           provider_name=task.provider_name or "",
                                           reason=task.reason, retry=task._retry))
            if task._retry:
                await self._retry_or_fail(task, f"rejected: {task.reason}")
            else:
                await self.queue.settle(task)
                self.failed.append(task)
                self._emit(events.TaskFailed(job_id=self.id, task_id=task.id, data=task.data,
                                             reason=f"rejected: {task.reason}",
                                             attempts=task.attempts))
        elif task.status is TaskStatus.RUNNING and worker_done:
            await self._retry_or_fail(
                task, "the worker finished without accepting or rejecting the task")

    async def _retry_or_fail(self, task: Task[Any, Any], reason: str) -> None:
        if task.attempts <= self._max_retries:
            task._requeue()
            self._emit(events.TaskRetried(job_id=self.id, task_id=task.id,
                                          attempt=task.attempts, reason=reason))
            await self.queue.put_back(task)
        else:
            await self.queue.settle(task)
            await self._fail(task, f"{reason} (after {task.attempts} attempts)", counted=True)

    async def _fail(self, task: Task[Any, Any], reason: str, counted: bool = False) -> None:
        task.reason = reason
        task._stop(TaskStatus.FAILED)
        self.failed.append(task)
        self._emit(events.TaskFailed(job_id=self.id, task_id=task.id, data=task.data,
                                     reason=reason, attempts=task.attempts))


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, _WorkerFailed) or isinstance(exc, WorkgenError):
        return text
    return f"{type(exc).__name__}: {text}"


def _describe_error(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, NoProvidersError | JobTimeoutError | BudgetExhausted):
        return str(exc)
    return _short(exc)
