"""The agreement book and its payments: one allocation for the budget, every agreement a job
signs recorded with its reservation, and each debit note and invoice checked against both
before it is paid.

A job tells the book when an agreement starts and ends (``agreement_started``,
``end_agreement``) and waits for what ended agreements give back (``invoices_settled``); the
book pays as the backend's payment events come, in a task of its own, and at ``close`` waits
(boundedly) for the last invoices, reports the missing ones and releases the allocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..backends.base import Agreement, Allocation, Backend, DebitNote, Invoice
from ..errors import BackendError, BackendUnavailable, PaymentError
from . import events
from .budget import AgreementBudget, Budget
from .strategy import MarketStrategy

log = logging.getLogger(__name__)

# Amounts computed on both sides from the same usage may differ in the last digits.
AMOUNT_TOLERANCE = Decimal("1e-9")


@dataclass
class _Entry:
    agreement: Agreement
    reservation: AgreementBudget | None
    ended: bool = False
    unconfirmed: bool = False
    """Its provider did not confirm the end (it may be gone): its invoice is paid if it comes,
    but nothing waits for it."""
    invoice: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Payments:
    def __init__(self, backend: Backend, budget: Budget, strategy: MarketStrategy,
                 emit: Callable[[events.Event], None], invoice_timeout: float):
        self.backend = backend
        self.budget = budget
        self._strategy = strategy
        self._emit = emit
        self.invoice_timeout = invoice_timeout
        self.allocation: Allocation | None = None
        self._entries: dict[str, _Entry] = {}
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> Allocation:
        """Make the budget's allocation and start paying what comes against it."""
        self.allocation = await self.backend.create_allocation(self.budget.total)
        self._task = asyncio.get_running_loop().create_task(self._pay(), name="payments")
        return self.allocation

    async def close(self) -> None:
        """Wait (boundedly) for every awaited invoice, report those that did not come, release
        the allocation and stop paying."""
        try:
            waiting = [e for e in self._entries.values() if not e.invoice.done()]
            if waiting:
                await self._wait_for([e.invoice for e in waiting if not e.unconfirmed])
                for entry in waiting:
                    if not entry.invoice.done():
                        self._emit(events.PaymentMissing(
                            agreement_id=entry.agreement.id,
                            provider_name=entry.agreement.provider_name))
            if self.allocation is not None:
                with contextlib.suppress(BackendError):
                    await self.backend.release_allocation(self.allocation)
        finally:
            if self._task is not None:
                self._task.cancel()
                await asyncio.wait([self._task])

    # -- the book ----------------------------------------------------------------------------

    def agreement_started(self, agreement: Agreement, reservation: AgreementBudget) -> None:
        self._entries[agreement.id] = _Entry(agreement, reservation)

    async def end_agreement(self, agreement: Agreement, reservation: AgreementBudget | None,
                            reason: str) -> None:
        """Terminate ``agreement`` with ``reason``; its invoice is awaited from then on."""
        entry = self._entries.setdefault(agreement.id, _Entry(agreement, reservation))
        entry.ended = True
        try:
            await self.backend.terminate_agreement(agreement, reason)
        except BackendError as exc:
            entry.unconfirmed = True
            log.warning("terminating agreement with %s failed: %s", agreement.provider_name, exc)
        self._emit(events.AgreementTerminated(agreement_id=agreement.id,
                                              provider_name=agreement.provider_name,
                                              reason=reason))

    async def invoices_settled(self) -> None:
        """Wait (boundedly) for the invoices of the agreements that have ended: what they did
        not cost goes back to the budget then."""
        await self._wait_for([e.invoice for e in self._entries.values()
                              if e.ended and not e.unconfirmed and not e.invoice.done()])

    async def _wait_for(self, invoices: list[asyncio.Future[None]]) -> None:
        """Until the invoices came, the time allowed ran out, or no more can come (the
        payment events ended: the daemon went away)."""
        pending: set[asyncio.Future[Any]] = set(invoices)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.invoice_timeout
        while pending and self._task is not None and not self._task.done():
            done, _ = await asyncio.wait(pending | {self._task},
                                         timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return
            pending -= done

    # -- paying ------------------------------------------------------------------------------

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
        except Exception:
            log.exception("paying debit notes and invoices failed")

    async def _on_debit_note(self, note: DebitNote) -> None:
        entry = self._entries.get(note.agreement_id)
        name = entry.agreement.provider_name if entry else note.issuer_id
        reason = self.check_amount(note.agreement_id, note.total_amount_due,
                                   note.usage_counter_vector)
        if reason is None:
            assert self.allocation is not None
            await self.backend.accept_debit_note(note, self.allocation)
            self._emit(events.DebitNoteAccepted(agreement_id=note.agreement_id,
                                                provider_name=name,
                                                amount=note.total_amount_due))
        else:
            await self.backend.reject_debit_note(note, reason)
            self._emit(events.DebitNoteRejected(agreement_id=note.agreement_id,
                                                provider_name=name,
                                                amount=note.total_amount_due, reason=reason))

    async def _on_invoice(self, invoice: Invoice) -> None:
        entry = self._entries.get(invoice.agreement_id)
        name = entry.agreement.provider_name if entry else invoice.issuer_id
        reason = self.check_amount(invoice.agreement_id, invoice.amount, None)
        if reason is None:
            assert self.allocation is not None
            try:
                await self.backend.accept_invoice(invoice, self.allocation)
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
        if entry is not None:
            if entry.reservation is not None:
                entry.reservation.close(paid)
            if not entry.invoice.done():
                entry.invoice.set_result(None)

    def check_amount(self, agreement_id: str, amount: Decimal,
                     usage_vector: tuple[float, ...] | None) -> str | None:
        """Why ``amount`` must not be paid for ``agreement_id``, or ``None`` if it is fine."""
        entry = self._entries.get(agreement_id)
        if entry is None:
            return "no such agreement of ours"
        reservation = entry.reservation
        if reservation is not None and amount > reservation.reserved + AMOUNT_TOLERANCE:
            return (f"amount {amount} is over the {reservation.reserved} this agreement "
                    "may cost within the budget")
        if reservation is not None:
            # Whatever the usage, linear pricing can't have reached more than this by now.
            most = reservation.bound(time.monotonic() - reservation.started)
            if amount > most + AMOUNT_TOLERANCE:
                return (f"amount {amount} is over {most}, the most the agreed prices allow "
                        "for the time the agreement has run")
        if usage_vector is not None:
            pricing = entry.agreement.pricing
            usage = dict(zip(pricing.usage_vector, usage_vector, strict=False))
            fair = self._strategy.acceptable_amount(pricing, usage)
            if amount > fair + AMOUNT_TOLERANCE:
                return f"amount {amount} is over {fair}, the agreed price for the usage reported"
        return None
