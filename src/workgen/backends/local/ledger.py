"""The local network's ledger: allocations, payments, and the records of accepted documents.

It plays the part yagna's payment service and the chain play on Golem: the requestor reserves
an amount in an *allocation*, and accepting an invoice pays the provider from it. The ledger is
the one place that enforces the budget: a payment that does not fit in what remains of its
allocation is refused whole (:class:`~workgen.errors.BudgetExhausted`), so an allocation can
never be overspent. Amounts are :class:`~decimal.Decimal` throughout.
"""

from __future__ import annotations

import collections
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from ..base import Allocation, DebitNote, Invoice
from ...errors import BudgetExhausted, PaymentError
from ...protocol.results import utc_now

log = logging.getLogger(__name__)

KEEP_RECORDS = 1024
"""Records kept of each kind of accepted or rejected document."""

PLATFORM = "workgen-local-tglm"
"""The payment platform of every local network (``golem.com.payment.chosen-platform``)."""


def new_address() -> str:
    """A fresh node or wallet address in Golem's form: ``0x`` and 40 hex digits."""
    return "0x" + secrets.token_hex(20)


@dataclass(frozen=True)
class Payment:
    """Money that moved: ``amount`` from an allocation to ``payee`` for one invoice."""

    invoice_id: str
    agreement_id: str
    allocation_id: str
    payee: str
    amount: Decimal
    timestamp: datetime = field(default_factory=utc_now)


@dataclass
class _AllocationAccount:
    allocation: Allocation
    spent: Decimal = Decimal(0)
    released: bool = False

    @property
    def remaining(self) -> Decimal:
        return Decimal(0) if self.released else self.allocation.total_amount - self.spent


class Ledger:
    """Allocations of one requestor (``address``) on :data:`PLATFORM`, and what they paid."""

    def __init__(self) -> None:
        self.platform = PLATFORM
        self.address = new_address()
        self._accounts: dict[str, _AllocationAccount] = {}
        self._payments: list[Payment] = []
        self._paid: dict[str, Payment] = {}
        # A note comes per activity and interval for as long as an agreement lasts: the records
        # of documents keep the latest, while payments (one per agreement) are all kept.
        self.accepted_debit_notes: collections.deque[tuple[DebitNote, str]] = \
            collections.deque(maxlen=KEEP_RECORDS)
        """``(note, allocation id)`` for the last accepted debit notes, oldest first."""
        self.rejected_debit_notes: collections.deque[tuple[DebitNote, str]] = \
            collections.deque(maxlen=KEEP_RECORDS)
        """``(note, reason)`` for the last rejected debit notes, oldest first."""
        self.rejected_invoices: collections.deque[tuple[Invoice, str]] = \
            collections.deque(maxlen=KEEP_RECORDS)
        """``(invoice, reason)`` for the last rejected invoices, oldest first."""

    # -- allocations ------------------------------------------------------------------------

    def create_allocation(self, amount: Decimal) -> Allocation:
        if isinstance(amount, float):
            amount = Decimal(repr(amount))  # the amount as written, not its binary expansion
        if not isinstance(amount, (Decimal, int)) or isinstance(amount, bool):
            raise TypeError(f"an allocation amount is a Decimal, got {amount!r}")
        total = Decimal(amount)
        if not total.is_finite() or total < 0:
            raise ValueError(f"an allocation amount must be finite and not negative: {amount}")
        allocation = Allocation(
            id=secrets.token_hex(16), total_amount=total,
            payment_platform=self.platform, address=self.address,
        )
        self._accounts[allocation.id] = _AllocationAccount(allocation)
        log.debug("allocation %s of %s created", allocation.id, total)
        return allocation

    def release_allocation(self, allocation: Allocation) -> None:
        """Free what remains; later payments from it are refused. Idempotent."""
        self._account(allocation).released = True

    def _account(self, allocation: Allocation) -> _AllocationAccount:
        try:
            return self._accounts[allocation.id]
        except KeyError:
            raise ValueError(f"allocation {allocation.id} was not made by this ledger") from None

    def check_usable(self, allocation: Allocation) -> None:
        """``ValueError`` for a foreign allocation, ``PaymentError`` for a released one."""
        if self._account(allocation).released:
            raise PaymentError(f"allocation {allocation.id} has been released")

    # -- inspection -------------------------------------------------------------------------

    @property
    def spent(self) -> Decimal:
        """What was paid, from all allocations."""
        return sum((a.spent for a in self._accounts.values()), Decimal(0))

    @property
    def remaining(self) -> Decimal:
        """What all allocations can still pay (released ones count zero)."""
        return sum((a.remaining for a in self._accounts.values()), Decimal(0))

    def spent_from(self, allocation: Allocation) -> Decimal:
        return self._account(allocation).spent

    def remaining_in(self, allocation: Allocation) -> Decimal:
        """What ``allocation`` can still pay (zero once released)."""
        return self._account(allocation).remaining

    @property
    def payments(self) -> list[Payment]:
        """Every payment made, in order (a copy)."""
        return list(self._payments)

    def paid(self, invoice_id: str) -> Payment | None:
        return self._paid.get(invoice_id)

    # -- money moving -----------------------------------------------------------------------

    def pay(self, invoice: Invoice, allocation: Allocation) -> Payment:
        """Pay ``invoice`` in full from ``allocation``, or nothing at all.

        Paying an invoice already paid returns the earlier payment (accepting twice is
        harmless). Raises :class:`~workgen.errors.BudgetExhausted` if the amount is more than
        the allocation has left, and :class:`~workgen.errors.PaymentError` if it was released.
        """
        earlier = self._paid.get(invoice.id)
        if earlier is not None:
            return earlier
        self.check_usable(allocation)
        account = self._account(allocation)
        if invoice.amount > account.remaining:
            raise BudgetExhausted(
                f"invoice {invoice.id} for {invoice.amount} exceeds what remains of "
                f"allocation {allocation.id} ({account.remaining} of "
                f"{allocation.total_amount}); nothing was paid"
            )
        account.spent += invoice.amount
        payment = Payment(invoice.id, invoice.agreement_id, allocation.id,
                          invoice.issuer_id, invoice.amount)
        self._payments.append(payment)
        self._paid[invoice.id] = payment
        log.info("paid %s to %s for agreement %s", invoice.amount, invoice.issuer_id,
                 invoice.agreement_id)
        return payment
