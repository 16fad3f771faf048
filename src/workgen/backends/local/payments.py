"""Debit notes and invoices on the local network: from providers to the requestor and back.

Providers send their documents here (:meth:`PaymentChannel.emit`); the requestor reads them
from one stream (:meth:`PaymentChannel.events`) and accepts or rejects them. Only documents
that a provider of this network issued are accepted, and an invoice is paid at the amount its
provider issued (whatever object the caller passes), from the :class:`~.ledger.Ledger`.

A provider sends a debit note per activity every interval for as long as its agreement lasts
(days, for a service), and each note's amount is cumulative: a later note covers an earlier one.
So the channel keeps the last :data:`KEEP_DEBIT_NOTES` notes of each of the
:data:`KEEP_AGREEMENTS` agreements that sent one most recently; an older one is refused by name
(its id is remembered among the last :data:`KEEP_FORGOTTEN`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator

from ..._bounded import RecentIds
from ..base import Allocation, DebitNote, Invoice, PaymentEvent
from .ledger import Ledger

log = logging.getLogger(__name__)

KEEP_DEBIT_NOTES = 64
"""Debit notes kept per agreement."""
KEEP_AGREEMENTS = 256
"""Agreements whose debit notes are kept: those that sent one most recently."""
KEEP_FORGOTTEN = 1024


class PaymentChannel:
    """The documents issued on one network, their stream, and what became of them."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self._debit_notes: dict[str, DebitNote] = {}  # the last few of each agreement
        self._notes_of: dict[str, collections.deque[str]] = {}  # agreement id -> note ids
        self._forgotten = RecentIds(KEEP_FORGOTTEN)
        self._invoices: dict[str, Invoice] = {}
        self._rejected_invoices: set[str] = set()
        self._note_status: dict[str, str] = {}
        self._queue: asyncio.Queue[PaymentEvent | None] = asyncio.Queue()

    def emit(self, event: PaymentEvent) -> None:
        """A provider sends a document to the requestor."""
        if isinstance(event, DebitNote):
            self._debit_notes[event.id] = event
            # The agreements whose notes came last stay; the least recent goes first.
            ids = self._notes_of.pop(event.agreement_id, None) or collections.deque()
            self._notes_of[event.agreement_id] = ids
            ids.append(event.id)
            if len(ids) > KEEP_DEBIT_NOTES:
                self._forget(ids.popleft())
            if len(self._notes_of) > KEEP_AGREEMENTS:
                for note_id in self._notes_of.pop(next(iter(self._notes_of))):
                    self._forget(note_id)
        else:
            self._invoices[event.id] = event
        self._queue.put_nowait(event)

    def _forget(self, note_id: str) -> None:
        self._debit_notes.pop(note_id, None)
        self._note_status.pop(note_id, None)
        self._forgotten.add(note_id)

    def close(self) -> None:
        """End the stream (after the documents already sent)."""
        self._queue.put_nowait(None)

    def events(self) -> AsyncIterator[PaymentEvent]:
        return _PaymentEvents(self._queue)

    def debit_note(self, note: DebitNote) -> DebitNote:
        """The debit note as its provider issued it; ``ValueError`` for any other."""
        known = self._debit_notes.get(note.id)
        if known is None and note.id in self._forgotten:
            raise ValueError(f"debit note {note.id} is no longer kept (the last {KEEP_DEBIT_NOTES} "
                             f"notes of each of the {KEEP_AGREEMENTS} agreements that sent one "
                             f"last are): a later note of its agreement covers it")
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
