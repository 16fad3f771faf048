"""Debit notes and invoices on the local network: from providers to the requestor and back.

Providers send their documents here (:meth:`PaymentChannel.emit`); the requestor reads them
from one stream (:meth:`PaymentChannel.events`) and accepts or rejects them. Only documents
that a provider of this network issued are accepted, and an invoice is paid at the amount its
provider issued (whatever object the caller passes), from the :class:`~.ledger.Ledger`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from ..base import Allocation, DebitNote, Invoice, PaymentEvent
from .ledger import Ledger

log = logging.getLogger(__name__)


class PaymentChannel:
    """The documents issued on one network, their stream, and what became of them."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self._debit_notes: dict[str, DebitNote] = {}
        self._invoices: dict[str, Invoice] = {}
        self._rejected_invoices: set[str] = set()
        self._note_status: dict[str, str] = {}
        self._queue: asyncio.Queue[PaymentEvent | None] = asyncio.Queue()

    def emit(self, event: PaymentEvent) -> None:
        """A provider sends a document to the requestor."""
        if isinstance(event, DebitNote):
            self._debit_notes[event.id] = event
        else:
            self._invoices[event.id] = event
        self._queue.put_nowait(event)

    def close(self) -> None:
        """End the stream (after the documents already sent)."""
        self._queue.put_nowait(None)

    def events(self) -> AsyncIterator[PaymentEvent]:
        return _PaymentEvents(self._queue)

    def debit_note(self, note: DebitNote) -> DebitNote:
        """The debit note as its provider issued it; ``ValueError`` for any other."""
        known = self._debit_notes.get(note.id)
        if known is None:
            raise ValueError(f"debit note {note.id} was not issued on this local network")
        return known

    def invoice(self, invoice: Invoice) -> Invoice:
        """The invoice as its provider issued it; ``ValueError`` for any other."""
        known = self._invoices.get(invoice.id)
        if known is None:
            raise ValueError(f"invoice {invoice.id} was not issued on this local network")
        return known

    def debit_note_status(self, note_id: str) -> str | None:
        """The note's status as yagna names it, for its provider."""
        if note_id not in self._debit_notes:
            return None
        return self._note_status.get(note_id, "RECEIVED")

    def accept_debit_note(self, note: DebitNote, allocation: Allocation) -> None:
        known = self.debit_note(note)
        self.ledger.check_usable(allocation)
        self.ledger.accepted_debit_notes.append((known, allocation.id))
        self._note_status[known.id] = "ACCEPTED"

    def reject_debit_note(self, note: DebitNote, reason: str) -> DebitNote:
        known = self.debit_note(note)
        self.ledger.rejected_debit_notes.append((known, reason))
        self._note_status[known.id] = "REJECTED"
        log.info("debit note %s of %s rejected: %s", known.id, known.issuer_id, reason)
        return known

    def accept_invoice(self, invoice: Invoice, allocation: Allocation) -> None:
        known = self.invoice(invoice)
        if known.id in self._rejected_invoices:
            raise ValueError(f"invoice {known.id} was rejected; it cannot be accepted now")
        self.ledger.pay(known, allocation)

    def reject_invoice(self, invoice: Invoice, reason: str) -> None:
        known = self.invoice(invoice)
        if self.ledger.paid(known.id) is not None:
            raise ValueError(f"invoice {known.id} is paid already")
        self._rejected_invoices.add(known.id)
        self.ledger.rejected_invoices.append((known, reason))
        log.info("invoice %s of %s rejected: %s", known.id, known.issuer_id, reason)


class _PaymentEvents:
    """An iterator over the one payment-event queue; ``None`` marks the end."""

    def __init__(self, queue: asyncio.Queue[PaymentEvent | None]):
        self._queue = queue

    def __aiter__(self) -> _PaymentEvents:
        return self

    async def __anext__(self) -> PaymentEvent:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # every other iterator ends too
            raise StopAsyncIteration
        return event
