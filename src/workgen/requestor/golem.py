"""``Golem``: the requestor's entry point. Owns the backend, the budget and the payments.

``async with Golem(budget=1.0) as golem`` brings up the backend (the embedded local network
unless another is given), makes an allocation for the budget and starts paying debit notes and
invoices as they come; ``execute_tasks`` runs jobs on it. Leaving the block closes running jobs,
waits (boundedly) for the last invoices, releases the allocation and closes the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import logging
import os
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any

from .._aio import task_scope
from ..backends.base import Agreement, Allocation, Backend, DebitNote, Demand, Invoice
from ..errors import BackendError, BackendUnavailable, PaymentError
from ..protocol.properties import NODE_DEBUG_SUBNET, NODE_ID_NAME, SRV_COMP_EXPIRATION
from ..protocol.results import utc_now
from . import events
from .budget import AgreementBudget, Budget
from .job import Job, Worker
from .payload import VmPayload
from .strategy import MarketStrategy, default_strategy
from .task import Task

log = logging.getLogger(__name__)

DEFAULT_MAX_WORKERS = 10
DEFAULT_MAX_RETRIES = 3
DEMAND_VALIDITY = timedelta(minutes=30)
# Amounts computed on both sides from the same usage may differ in the last digits.
AMOUNT_TOLERANCE = Decimal("1e-9")


@dataclass
class _AgreementBook:
    agreement: Agreement
    reservation: AgreementBudget | None
    ended: bool = False
    invoice: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


def _backend_from_env() -> Backend:
    name = os.environ.get("WORKGEN_BACKEND", "local").strip().lower()
    if name == "local":
        from ..backends.local import LocalNetwork

        return LocalNetwork()
    if name == "yagna":
        from ..backends.yagna import Yagna

        return Yagna()
    raise ValueError(f"WORKGEN_BACKEND={name!r} is not a known backend (known: local, yagna)")


class Golem:
    def __init__(
        self,
        *,
        budget: float | Decimal | str,
        backend: Backend | None = None,
        strategy: MarketStrategy | None = None,
        subnet_tag: str | None = None,
        event_consumer: events.EventConsumer | None = None,
        stream_output: bool = False,
        invoice_timeout: float = 30.0,
    ):
        try:
            amount = Decimal(str(budget))
        except InvalidOperation:
            raise ValueError(f"budget must be a number, got {budget!r}") from None
        if not amount.is_finite() or amount < 0:
            raise ValueError(f"budget must be a non-negative number, got {budget!r}")
        self.budget = Budget(amount)
        self._backend = backend
        if strategy is not None and not isinstance(strategy, MarketStrategy):
            raise TypeError(f"strategy must be a MarketStrategy (for example "
                            f"LeastExpensiveLinearPayuMS()), got {strategy!r}")
        if (isinstance(invoice_timeout, bool) or not isinstance(invoice_timeout, (int, float))
                or not math.isfinite(invoice_timeout) or invoice_timeout <= 0):
            raise ValueError(f"invoice_timeout must be a positive number of seconds, "
                             f"got {invoice_timeout!r}")
        self.strategy = strategy or default_strategy()
        self._subnet_tag = subnet_tag
        if event_consumer is None:
            from .display import ProgressDisplay

            event_consumer = ProgressDisplay()
        self._consumer = event_consumer
        self.stream_output = stream_output
        self.invoice_timeout = invoice_timeout
        self._stack = contextlib.AsyncExitStack()
        self._tg: asyncio.TaskGroup | None = None
        self._payments: asyncio.Task[None] | None = None
        self._allocation: Allocation | None = None
        self._books: dict[str, _AgreementBook] = {}
        self._jobs: set[Job] = set()
        self.failed_tasks: list[Task[Any, Any]] = []
        """Tasks that failed for good or were rejected without retry, over all jobs."""
        self._state = "new"

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = _backend_from_env()
        return self._backend

    @property
    def subnet_tag(self) -> str:
        """The subnet demands are published on: the one given, else the backend's (a yagna
        backend's comes from ``YAGNA_SUBNET``), else ``YAGNA_SUBNET``, else ``public``."""
        backend_subnet = getattr(self.backend, "subnet", None)
        return (self._subnet_tag or (backend_subnet if isinstance(backend_subnet, str) else None)
                or os.environ.get("YAGNA_SUBNET") or "public")

    @subnet_tag.setter
    def subnet_tag(self, value: str | None) -> None:
        self._subnet_tag = value

    def _emit(self, event: events.Event) -> None:
        try:
            self._consumer(event)
        except Exception:  # a consumer's bug must not break the run
            log.exception("event consumer failed on %r", event)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Golem:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"this Golem is {self._state}; make a new one")
        self._state = "starting"
        try:
            backend = self.backend
            await backend.start()
            self._stack.push_async_callback(backend.aclose)
            self._allocation = await backend.create_allocation(self.budget.total)
            self._tg = await self._stack.enter_async_context(task_scope())
            self._payments = self._tg.create_task(self._pay())
        except BaseException:
            await self._stack.aclose()
            self._state = "stopped"
            raise
        self._state = "running"
        self._emit(events.GolemStarted(backend=backend.name, budget=self.budget.total))

    async def stop(self) -> None:
        """Close jobs, settle payments (boundedly), release the allocation, close the backend."""
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        self._state = "stopping"
        try:
            for job in list(self._jobs):
                await job.cancel()
            await self._await_invoices()
            if self._allocation is not None:
                with contextlib.suppress(BackendError):
                    await self.backend.release_allocation(self._allocation)
            if self._payments is not None:
                self._payments.cancel()
        finally:
            await self._stack.aclose()
            self._state = "stopped"
            self._emit(events.GolemStopped())

    async def _invoices_settled(self) -> None:
        """Wait (boundedly) for the invoices of the agreements that have ended."""
        await self._wait_for_invoices(
            [b.invoice for b in self._books.values() if b.ended and not b.invoice.done()])

    async def _wait_for_invoices(self, invoices: list[asyncio.Future[Any]]) -> None:
        """Until the invoices came, the time allowed ran out, or no more can come (the
        payment events ended: the daemon went away)."""
        pending: set[asyncio.Future[Any]] = set(invoices)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.invoice_timeout
        while pending and self._payments is not None and not self._payments.done():
            done, _ = await asyncio.wait(pending | {self._payments},
                                         timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return
            pending -= done

    async def _await_invoices(self) -> None:
        waiting = {b.agreement.id: b for b in self._books.values() if not b.invoice.done()}
        if not waiting:
            return
        await self._wait_for_invoices([b.invoice for b in waiting.values()])
        for book in waiting.values():
            if not book.invoice.done():
                self._emit(events.PaymentMissing(agreement_id=book.agreement.id,
                                                 provider_name=book.agreement.provider_name))

    # -- jobs --------------------------------------------------------------------------------

    async def execute_tasks(
        self,
        worker: Worker,
        data: Iterable[Any] | AsyncIterable[Any],
        payload: VmPayload,
        max_workers: int | None = None,
        timeout: float | None = None,
        job_id: str | None = None,
        implicit_init: bool = True,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> AsyncIterator[Task[Any, Any]]:
        """Run ``worker`` over ``data``; yields each task as a worker accepts it.

        ``data`` (items, or :class:`Task` objects) is read lazily. Up to ``max_workers``
        activities work at once. A failed task is retried on another activity up to
        ``max_retries`` times; tasks that fail for good are in :attr:`failed_tasks`. The job
        ends with an error (``NoProvidersError``, ``BudgetExhausted``, ``JobTimeoutError``...)
        raised here after the accepted tasks were yielded.
        """
        if self._state != "running" or self._tg is None:
            raise RuntimeError("start the Golem first: 'async with Golem(...) as golem:'")
        _check_worker(worker)
        if max_workers is not None and not _whole(max_workers, 1):
            raise ValueError(f"max_workers must be a whole number, at least 1, got {max_workers!r}")
        if not _whole(max_retries, 0):
            raise ValueError(f"max_retries must be a whole number, at least 0, got {max_retries!r}")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        demand = await self._demand_for(payload)
        job = Job(self, worker=worker, data=data, demand=demand,
                  max_workers=max_workers or DEFAULT_MAX_WORKERS, timeout=timeout,
                  job_id=job_id or uuid.uuid4().hex[:8], implicit_init=implicit_init,
                  max_retries=max_retries)
        self._jobs.add(job)
        job.runner = self._tg.create_task(job.run())
        try:
            while True:
                task = await job.accepted.get()
                if task is None:
                    break
                yield task
            await job.done.wait()
            if job.error is not None and not isinstance(job.error, asyncio.CancelledError):
                raise job.error
        finally:
            await job.cancel()
            self.failed_tasks.extend(job.failed)
            self._jobs.discard(job)

    async def _demand_for(self, payload: VmPayload) -> Demand:
        if not hasattr(payload, "properties") or not hasattr(payload, "constraints"):
            raise TypeError(f"payload must come from vm.repo(...), got {payload!r}")
        assert self._allocation is not None
        properties: dict[str, object] = dict(payload.properties())
        expiration = utc_now() + DEMAND_VALIDITY
        properties[SRV_COMP_EXPIRATION] = int(expiration.timestamp() * 1000)
        properties[NODE_DEBUG_SUBNET] = self.subnet_tag
        properties.setdefault(NODE_ID_NAME, "workgen-requestor")
        clauses = list(payload.constraints())
        clauses.append(f"({NODE_DEBUG_SUBNET}={self.subnet_tag})")
        decoration = await self.backend.demand_decoration(self._allocation)
        properties.update(decoration.properties)
        if decoration.constraints:
            clauses.append(decoration.constraints)
        self.strategy.decorate_demand(properties, clauses)
        return Demand(properties=properties, constraints="(&" + "".join(clauses) + ")")

    # -- agreements and payments -------------------------------------------------------------

    def _agreement_started(self, agreement: Agreement, reservation: AgreementBudget) -> None:
        self._books[agreement.id] = _AgreementBook(agreement, reservation)

    async def _end_agreement(self, agreement: Agreement, reservation: AgreementBudget | None,
                             reason: str) -> None:
        book = self._books.setdefault(agreement.id, _AgreementBook(agreement, reservation))
        book.ended = True
        try:
            await self.backend.terminate_agreement(agreement, reason)
        except BackendError as exc:
            log.warning("terminating agreement with %s failed: %s", agreement.provider_name, exc)
        self._emit(events.AgreementTerminated(agreement_id=agreement.id,
                                              provider_name=agreement.provider_name,
                                              reason=reason))

    async def _pay(self) -> None:
        try:
            async for event in self.backend.payment_events():
                try:
                    if isinstance(event, DebitNote):
                        await self._on_debit_note(event)
                    else:
                        await self._on_invoice(event)
                except BackendError as exc:
                    log.warning("payment for %s failed: %s", event.agreement_id, exc)
        except BackendUnavailable as exc:
            # The jobs meet the same daemon and report it; payments just end here (the
            # invoices still awaited are reported missing), without tearing down the caller.
            log.warning("payment events ended: %s", exc)

    async def _on_debit_note(self, note: DebitNote) -> None:
        book = self._books.get(note.agreement_id)
        name = book.agreement.provider_name if book else note.issuer_id
        reason = self._check_amount(book, note.total_amount_due, note.usage_counter_vector)
        if reason is None:
            assert self._allocation is not None
            await self.backend.accept_debit_note(note, self._allocation)
            self._emit(events.DebitNoteAccepted(agreement_id=note.agreement_id,
                                                provider_name=name,
                                                amount=note.total_amount_due))
        else:
            await self.backend.reject_debit_note(note, reason)
            self._emit(events.DebitNoteRejected(agreement_id=note.agreement_id,
                                                provider_name=name,
                                                amount=note.total_amount_due, reason=reason))

    async def _on_invoice(self, invoice: Invoice) -> None:
        book = self._books.get(invoice.agreement_id)
        name = book.agreement.provider_name if book else invoice.issuer_id
        reason = self._check_amount(book, invoice.amount, None)
        if reason is None:
            assert self._allocation is not None
            try:
                await self.backend.accept_invoice(invoice, self._allocation)
            except PaymentError as exc:
                reason = str(exc)
        if reason is None:
            self._emit(events.InvoiceAccepted(agreement_id=invoice.agreement_id,
                                              provider_name=name, amount=invoice.amount))
            paid = invoice.amount
        else:
            with contextlib.suppress(BackendError):
                await self.backend.reject_invoice(invoice, reason)
            self._emit(events.InvoiceRejected(agreement_id=invoice.agreement_id,
                                              provider_name=name, amount=invoice.amount,
                                              reason=reason))
            paid = Decimal(0)
        if book is not None:
            if book.reservation is not None:
                book.reservation.close(paid)
            if not book.invoice.done():
                book.invoice.set_result(None)

    def _check_amount(self, book: _AgreementBook | None, amount: Decimal,
                      usage_vector: tuple[float, ...] | None) -> str | None:
        """Why ``amount`` must not be paid, or ``None`` if it is fine."""
        if book is None:
            return "no such agreement of ours"
        if book.reservation is not None and amount > book.reservation.reserved + AMOUNT_TOLERANCE:
            return (f"amount {amount} is over the {book.reservation.reserved} this agreement "
                    "may cost within the budget")
        if book.reservation is not None:
            # Whatever the usage, linear pricing can't have reached more than this by now.
            most = book.reservation.bound(time.monotonic() - book.reservation.started)
            if amount > most + AMOUNT_TOLERANCE:
                return (f"amount {amount} is over {most}, the most the agreed prices allow "
                        "for the time the agreement has run")
        if usage_vector is not None:
            pricing = book.agreement.pricing
            usage = dict(zip(pricing.usage_vector, usage_vector, strict=False))
            fair = self.strategy.acceptable_amount(pricing, usage)
            if amount > fair + AMOUNT_TOLERANCE:
                return f"amount {amount} is over {fair}, the agreed price for the usage reported"
        return None


def _whole(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_worker(worker: object) -> None:
    """A worker is an async generator function (or a callable returning an async generator,
    checked when it is called): anything else would leave the job waiting on it."""
    if inspect.isasyncgenfunction(worker):
        return
    if inspect.iscoroutinefunction(worker) or inspect.iscoroutinefunction(
            type(worker).__call__):
        raise TypeError(f"worker {worker!r} is an 'async def' without 'yield': a worker is an "
                        "async generator that yields scripts (async def worker(context, tasks): "
                        "... yield script ...)")
    if not callable(worker):
        raise TypeError(f"worker must be an async generator function, got {worker!r}")
