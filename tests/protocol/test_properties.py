"""Tests for Golem property names and the flat/nested property conversions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workgen.protocol import properties as p
from workgen.protocol.properties import (
    PROPERTY_TAG,
    flatten_properties,
    payment_platform_address,
    unflatten_properties,
)

FLAT = {
    "golem.com.pricing.model": "linear",
    "golem.com.pricing.model.linear.coeffs": [0.001, 0.002, 0.0],
    "golem.com.scheme": "payu",
    "golem.com.scheme.payu.debit-note.interval-sec?": 120,
    "golem.com.usage.vector": ["golem.usage.duration_sec", "golem.usage.cpu_sec"],
    "golem.inf.cpu.threads": 7,
    "golem.inf.mem.gib": 10.6,
    "golem.node.id.name": "tworec@mf-market-devnet",
    "golem.runtime.name": "vm",
}

NESTED = {
    "golem": {
        "com": {
            "pricing": {"model": {PROPERTY_TAG: "linear", "linear": {"coeffs": [0.001, 0.002, 0.0]}}},
            "scheme": {PROPERTY_TAG: "payu", "payu": {"debit-note": {"interval-sec?": 120}}},
            "usage": {"vector": ["golem.usage.duration_sec", "golem.usage.cpu_sec"]},
        },
        "inf": {"cpu": {"threads": 7}, "mem": {"gib": 10.6}},
        "node": {"id": {"name": "tworec@mf-market-devnet"}},
        "runtime": {"name": "vm"},
    }
}


def test_property_names_are_the_golem_wire_names() -> None:
    assert p.INF_CPU_THREADS == "golem.inf.cpu.threads"
    assert p.INF_CPU_CORES == "golem.inf.cpu.cores"
    assert p.INF_CPU_ARCHITECTURE == "golem.inf.cpu.architecture"
    assert p.INF_MEM_GIB == "golem.inf.mem.gib"
    assert p.INF_STORAGE_GIB == "golem.inf.storage.gib"
    assert p.RUNTIME_NAME == "golem.runtime.name"
    assert p.RUNTIME_CAPABILITIES == "golem.runtime.capabilities"
    assert p.NODE_ID_NAME == "golem.node.id.name"
    assert p.NODE_DEBUG_SUBNET == "golem.node.debug.subnet"
    assert p.COM_PRICING_MODEL == "golem.com.pricing.model"
    assert p.COM_PRICING_MODEL_LINEAR_COEFFS == "golem.com.pricing.model.linear.coeffs"
    assert p.COM_USAGE_VECTOR == "golem.com.usage.vector"
    assert p.COM_SCHEME == "golem.com.scheme"
    assert p.COM_SCHEME_PAYU_DEBIT_NOTE_INTERVAL_SEC == "golem.com.scheme.payu.debit-note.interval-sec?"
    assert p.COM_SCHEME_PAYU_PAYMENT_TIMEOUT_SEC == "golem.com.scheme.payu.payment-timeout-sec?"
    assert p.COM_PAYMENT_DEBIT_NOTES_ACCEPT_TIMEOUT == "golem.com.payment.debit-notes.accept-timeout?"
    assert p.SRV_COMP_EXPIRATION == "golem.srv.comp.expiration"
    assert p.SRV_COMP_TASK_PACKAGE == "golem.srv.comp.task_package"
    assert p.SRV_COMP_VM_PACKAGE_FORMAT == "golem.srv.comp.vm.package_format"
    assert p.ACTIVITY_CAPS_TRANSFER_PROTOCOL == "golem.activity.caps.transfer.protocol"
    assert p.USAGE_DURATION_SEC == "golem.usage.duration_sec"
    assert p.USAGE_CPU_SEC == "golem.usage.cpu_sec"


def test_payment_platform_address_names_the_platform() -> None:
    assert (
        payment_platform_address("erc20-holesky-tglm")
        == "golem.com.payment.platform.erc20-holesky-tglm.address"
    )
    for bad in ("", "a.b"):
        with pytest.raises(ValueError):
            payment_platform_address(bad)


def test_flatten_turns_nested_objects_into_dotted_names() -> None:
    assert flatten_properties(NESTED) == FLAT


def test_flatten_leaves_a_flat_object_unchanged() -> None:
    assert flatten_properties(FLAT) == FLAT


def test_flatten_accepts_keys_that_mix_dots_and_nesting() -> None:
    mixed = {"golem": {"inf.mem.gib": 0.5, "inf": {"storage.gib": 5.0}}, "golem.node.id.name": "dany"}
    assert flatten_properties(mixed) == {
        "golem.inf.mem.gib": 0.5,
        "golem.inf.storage.gib": 5.0,
        "golem.node.id.name": "dany",
    }


def test_flatten_keeps_lists_whole_and_drops_empty_objects() -> None:
    assert flatten_properties({"a": {"b": [1, {"c": 2}]}, "e": {}}) == {"a.b": [1, {"c": 2}]}


def test_flatten_reads_tag_as_the_value_of_the_enclosing_name() -> None:
    assert flatten_properties({"a": {"b": {"c": 1, PROPERTY_TAG: 2}}}) == {"a.b.c": 1, "a.b": 2}


def test_flatten_rejects_conflicting_spellings_of_one_name() -> None:
    with pytest.raises(ValueError, match="conflicting values for 'a.b'"):
        flatten_properties({"a.b": 1, "a": {"b": 2}})
    assert flatten_properties({"a.b": 1, "a": {"b": 1}}) == {"a.b": 1}


@pytest.mark.parametrize(
    "bad",
    [
        {"": 1},
        {"a..b": 1},
        {"a.": 1},
        {"a": {".b": 1}},
        {PROPERTY_TAG: 1},
        {"a": {PROPERTY_TAG: {"b": 1}}},
        {"a.@tag": 1},
        {"a": {1: 2}},
    ],
)
def test_flatten_rejects_malformed_keys(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        flatten_properties(bad)


def test_unflatten_builds_the_nested_form_with_tags() -> None:
    assert unflatten_properties(FLAT) == NESTED


def test_unflatten_tags_a_value_whichever_order_names_arrive_in() -> None:
    expected = {"a": {"b": {PROPERTY_TAG: 1, "c": 2}}}
    assert unflatten_properties({"a.b": 1, "a.b.c": 2}) == expected
    assert unflatten_properties({"a.b.c": 2, "a.b": 1}) == expected


def test_unflatten_of_nested_input_is_idempotent() -> None:
    assert unflatten_properties(NESTED) == NESTED


_segment = st.from_regex(r"[a-z][a-z0-9_?-]{0,5}", fullmatch=True)
_name = st.lists(_segment, min_size=1, max_size=4).map(".".join)
_value = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.text(max_size=5), st.booleans(),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_name, _value, max_size=8))
def test_flatten_undoes_unflatten_for_any_flat_properties(flat: dict[str, object]) -> None:
    assert flatten_properties(unflatten_properties(flat)) == flat
