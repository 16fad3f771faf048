"""Payment terms negotiated as ya-provider does (plain tests on properties)."""

from __future__ import annotations

import pytest

from workgen.provider.terms import (
    DEFAULT_ACCEPT_TIMEOUT, PaymentTerms, TermsRefused, break_reason, negotiate, offered_terms,
)

INTERVAL = "golem.com.scheme.payu.debit-note.interval-sec?"
PAYMENT = "golem.com.scheme.payu.payment-timeout-sec?"
ACCEPT = "golem.com.payment.debit-notes.accept-timeout?"


def test_the_first_offer_names_an_acceptance_deadline_and_no_payment_timeout() -> None:
    assert offered_terms(60.0) == {INTERVAL: 60, ACCEPT: int(DEFAULT_ACCEPT_TIMEOUT)}


def test_a_demand_that_names_nothing_gets_the_providers_interval_and_no_obligations() -> None:
    terms = negotiate({}, interval=60.0)
    assert terms == PaymentTerms(60.0, None, None)
    assert terms.properties() == {INTERVAL: 60}  # the deadline is dropped from the counter


def test_a_demands_own_terms_are_taken_when_they_are_sane() -> None:
    terms = negotiate({INTERVAL: 10, PAYMENT: 120, ACCEPT: 30}, interval=60.0)
    assert terms == PaymentTerms(10.0, 120.0, 30.0)
    assert terms.properties() == {INTERVAL: 10, PAYMENT: 120, ACCEPT: 30}


@pytest.mark.parametrize("demand", [
    {INTERVAL: 0.5}, {INTERVAL: float("nan")}, {INTERVAL: "10"}, {INTERVAL: True},
    {PAYMENT: 0}, {PAYMENT: float("inf")}, {ACCEPT: 1}, {ACCEPT: 10 ** 9},
])
def test_terms_no_provider_could_keep_are_refused(demand: dict[str, object]) -> None:
    with pytest.raises(TermsRefused):
        negotiate(demand, interval=60.0)


def test_an_agreement_holds_deadlines_only_the_demand_asked_for() -> None:
    offer = {INTERVAL: 5, ACCEPT: 240, PAYMENT: 120}
    assert PaymentTerms.from_agreement(offer, {}, 60.0) == PaymentTerms(5.0, None, None)
    assert PaymentTerms.from_agreement(offer, {ACCEPT: 240, PAYMENT: 120}, 60.0) == \
        PaymentTerms(5.0, 120.0, 240.0)
    assert PaymentTerms.from_agreement({}, {}, 60.0) == PaymentTerms(60.0, None, None)


def test_break_reasons_carry_ya_providers_code() -> None:
    assert break_reason("NoActivity", "No activity created within 90s") == {
        "message": "No activity created within 90s", "golem.provider.code": "NoActivity"}
