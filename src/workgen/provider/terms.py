"""Payment terms a provider negotiates, and the reasons it breaks an agreement for.

Requestors observe both, so they follow ya-provider:

- the debit-note interval (``golem.com.scheme.payu.debit-note.interval-sec?``): the demand's,
  if it names one this provider can honour, else the provider's own;
- mid-agreement payments (``golem.com.scheme.payu.payment-timeout-sec?``): only when the demand
  asks for them. Only then is a debit note payable (it carries a ``paymentDueDate``); a
  requestor that did not ask treats a payable note as a breach of the agreement;
- the debit-note acceptance deadline (``golem.com.payment.debit-notes.accept-timeout?``): the
  provider offers one, and holds the requestor to it only when the demand names one too (the
  requestor's value, if not below the provider's minimum). A note not accepted by then breaks
  the agreement.

An agreement is broken, with ya-provider's codes in the reason's ``golem.provider.code``, when
no activity runs on it for a while (``NoActivity``), when it expires (``Expired``) and when a
debit note goes unaccepted past its deadline (``DebitNotesDeadline``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..protocol.properties import (
    COM_PAYMENT_DEBIT_NOTES_ACCEPT_TIMEOUT, COM_SCHEME_PAYU_DEBIT_NOTE_INTERVAL_SEC,
    COM_SCHEME_PAYU_PAYMENT_TIMEOUT_SEC,
)

MIN_DEBIT_NOTE_INTERVAL = 1.0
MIN_ACCEPT_TIMEOUT = 5.0
MIN_PAYMENT_TIMEOUT = 1.0
MAX_TIMEOUT = 24 * 3600.0
DEFAULT_ACCEPT_TIMEOUT = 240.0
DEFAULT_IDLE_TIMEOUT = 90.0
"""How long an agreement may go without a live activity before the provider breaks it."""

NO_ACTIVITY = "NoActivity"
EXPIRED = "Expired"
DEBIT_NOTES_DEADLINE = "DebitNotesDeadline"
SUCCESS = "Success"


class TermsRefused(Exception):
    """The demand's payment terms are not ones this provider takes (the message says why)."""


@dataclass(frozen=True)
class PaymentTerms:
    debit_note_interval: float
    payment_timeout: float | None = None
    """Seconds a debit note's payment may take; ``None``: no mid-agreement payments."""
    accept_timeout: float | None = None
    """Seconds the requestor has to accept a debit note; ``None``: not enforced."""

    def properties(self) -> dict[str, object]:
        """The terms as offer properties (for the provider's counter-proposal)."""
        props: dict[str, object] = {COM_SCHEME_PAYU_DEBIT_NOTE_INTERVAL_SEC:
                                    _number(self.debit_note_interval)}
        if self.payment_timeout is not None:
            props[COM_SCHEME_PAYU_PAYMENT_TIMEOUT_SEC] = _number(self.payment_timeout)
        if self.accept_timeout is not None:
            props[COM_PAYMENT_DEBIT_NOTES_ACCEPT_TIMEOUT] = _number(self.accept_timeout)
        return props

    @classmethod
    def from_agreement(cls, offer: Mapping[str, object], demand: Mapping[str, object],
                       default_interval: float) -> PaymentTerms:
        """The terms an agreement holds: what both sides' final proposals say."""
        interval = _seconds(offer.get(COM_SCHEME_PAYU_DEBIT_NOTE_INTERVAL_SEC))
        payment = _seconds(offer.get(COM_SCHEME_PAYU_PAYMENT_TIMEOUT_SEC))
        accept = _seconds(offer.get(COM_PAYMENT_DEBIT_NOTES_ACCEPT_TIMEOUT))
        return cls(
            debit_note_interval=interval if interval is not None else default_interval,
            payment_timeout=payment if demand.get(COM_SCHEME_PAYU_PAYMENT_TIMEOUT_SEC)
            is not None else None,
            accept_timeout=accept if demand.get(COM_PAYMENT_DEBIT_NOTES_ACCEPT_TIMEOUT)
            is not None else None,
        )


def negotiate(demand: Mapping[str, object], *, interval: float,
              minimum: float = MIN_DEBIT_NOTE_INTERVAL) -> PaymentTerms:
    """The terms this provider agrees to for ``demand`` (flat properties), or
    :class:`TermsRefused`; ``interval`` is the provider's own debit-note interval and
    ``minimum`` the shortest one it takes."""
    asked = demand.get(COM_SCHEME_PAYU_DEBIT_NOTE_INTERVAL_SEC)
    if asked is not None:
        interval = _require(asked, "debit-note interval", minimum)
    payment: float | None = None
    asked = demand.get(COM_SCHEME_PAYU_PAYMENT_TIMEOUT_SEC)
    if asked is not None:
        payment = _require(asked, "payment timeout", MIN_PAYMENT_TIMEOUT)
    # Offered, but enforced only when the requestor names a deadline too.
    accept: float | None = None
    asked = demand.get(COM_PAYMENT_DEBIT_NOTES_ACCEPT_TIMEOUT)
    if asked is not None:
        accept = _require(asked, "debit-note acceptance timeout", MIN_ACCEPT_TIMEOUT)
    return PaymentTerms(interval, payment, accept)


def offered_terms(interval: float, accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT
                  ) -> dict[str, object]:
    """What the provider's first offer says of its terms."""
    return PaymentTerms(interval, None, accept_timeout).properties()


def break_reason(code: str, message: str) -> dict[str, str]:
    """A termination reason as ya-provider writes it."""
    return {"message": message, "golem.provider.code": code}


def _require(value: object, what: str, minimum: float) -> float:
    seconds = _seconds(value)
    if seconds is None or not minimum <= seconds <= MAX_TIMEOUT:
        raise TermsRefused(f"{what} must be between {minimum:g} and {MAX_TIMEOUT:g} seconds, "
                           f"not {value!r}")
    return seconds


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
