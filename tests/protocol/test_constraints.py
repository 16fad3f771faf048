"""Tests for the Golem constraint language: parsing, evaluation, rendering and matching."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workgen.protocol.constraints import (
    MAX_DEPTH,
    And,
    Compare,
    Constraint,
    Constraints,
    ConstraintSyntaxError,
    Like,
    Not,
    Op,
    Or,
    Present,
    compare,
    like,
    match,
    parse_constraints,
)

OFFER = {
    "golem.inf.mem.gib": 4.0,
    "golem.inf.storage.gib": 80.5,
    "golem.inf.cpu.threads": 8,
    "golem.runtime.name": "vm",
    "golem.node.id.name": "provider-1",
    "golem.node.debug.subnet": "public",
    "golem.srv.caps.multi-activity": True,
    "golem.activity.caps.transfer.protocol": ["http", "https", "gftp"],
}

YAPAPI_DEMAND = """(&(golem.inf.mem.gib>=0.5)
\t(golem.inf.storage.gib>=2.0)
\t(golem.runtime.name=vm)
\t(golem.node.debug.subnet=public))"""


def holds(text: str, props: dict[str, object] = OFFER) -> bool:
    return parse_constraints(text).matches(props)


def test_yapapi_style_demand_with_tabs_and_newlines_parses_and_matches() -> None:
    parsed = parse_constraints(YAPAPI_DEMAND)
    assert parsed == And(
        (
            Compare("golem.inf.mem.gib", Op.GE, "0.5"),
            Compare("golem.inf.storage.gib", Op.GE, "2.0"),
            Compare("golem.runtime.name", Op.EQ, "vm"),
            Compare("golem.node.debug.subnet", Op.EQ, "public"),
        )
    )
    assert parsed.matches(OFFER)
    assert not parsed.matches({**OFFER, "golem.inf.mem.gib": 0.25})


def test_whitespace_is_allowed_around_clauses_but_kept_inside_values() -> None:
    assert parse_constraints("  ( &\n ( a=1 )\n\t(! (b=2) ) )  ") == And(
        (Compare("a", Op.EQ, "1 "), Not(Compare("b", Op.EQ, "2")))
    )
    # Numbers ignore the padding; strings, as in yagna, do not.
    assert holds("(a=1 )", {"a": 1})
    assert not holds("(a=x )", {"a": "x"})


@pytest.mark.parametrize("text", ["(&)", "()", "( )", "(&\n)"])
def test_empty_clause_is_true(text: str) -> None:
    assert parse_constraints(text) == And(())
    assert holds(text, {})


def test_empty_or_is_false() -> None:
    assert not holds("(|)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(golem.inf.cpu.threads=8)", True),
        ("(golem.inf.cpu.threads=8.0)", True),
        ("(golem.inf.cpu.threads=7)", False),
        ("(golem.inf.cpu.threads<9)", True),
        ("(golem.inf.cpu.threads<8)", False),
        ("(golem.inf.cpu.threads<=8)", True),
        ("(golem.inf.cpu.threads<=7.99)", False),
        ("(golem.inf.cpu.threads>7)", True),
        ("(golem.inf.cpu.threads>8)", False),
        ("(golem.inf.cpu.threads>=8)", True),
        ("(golem.inf.cpu.threads>=8.01)", False),
        ("(golem.inf.cpu.threads<>7)", True),
        ("(golem.inf.cpu.threads<>8)", False),
    ],
)
def test_each_comparison_operator_on_numbers(text: str, expected: bool) -> None:
    assert holds(text) is expected


def test_numbers_compare_numerically_not_lexically() -> None:
    assert holds("(golem.inf.cpu.threads>10)", {"golem.inf.cpu.threads": 12})
    assert holds("(golem.inf.mem.gib>=10)", {"golem.inf.mem.gib": "12.5"})
    assert holds("(x=1e3)", {"x": 1000})


def test_numbers_with_huge_exponents_compare_without_errors() -> None:
    assert holds("(x<1e99999999999)", {"x": 5})
    assert holds("(x>-1e-99999999999)", {"x": 0.0})
    assert not holds("(x=1e99999999999999999999)", {"x": 5})


def test_object_valued_properties_never_match_a_value() -> None:
    assert not holds("(x=1)", {"x": {"y": 1}})
    assert not holds("(x=*1*)", {"x": {"y": 1}})
    assert holds("(x=*)", {"x": {"y": 1}})


def test_float_properties_compare_by_their_decimal_spelling() -> None:
    assert holds("(price=0.1)", {"price": 0.1})
    assert holds("(price<=0.3)", {"price": 0.1 + 0.2 - 0.0000000000000001})
    assert holds("(price=0.10)", {"price": Decimal("0.1")})


def test_strings_compare_lexically() -> None:
    assert holds("(golem.runtime.name=vm)")
    assert not holds("(golem.runtime.name=VM)")
    assert holds("(golem.runtime.name>abc)")
    assert holds("(golem.runtime.name<wasm)")
    assert holds("(golem.runtime.name<>wasmtime)")


def test_mixed_number_and_text_compare_as_strings() -> None:
    assert not holds("(golem.inf.cpu.threads=eight)")
    assert holds("(golem.inf.cpu.threads<eight)")


def test_booleans_match_true_and_false_literals() -> None:
    assert holds("(golem.srv.caps.multi-activity=true)")
    assert holds("(golem.srv.caps.multi-activity=TRUE)")
    assert not holds("(golem.srv.caps.multi-activity=false)")
    assert holds("(golem.srv.caps.multi-activity<>false)")
    assert not holds("(golem.srv.caps.multi-activity=1)")
    assert not holds("(golem.srv.caps.multi-activity>false)")


def test_list_property_matches_when_any_element_matches() -> None:
    assert holds("(golem.activity.caps.transfer.protocol=gftp)")
    assert not holds("(golem.activity.caps.transfer.protocol=ftp)")
    assert holds("(golem.activity.caps.transfer.protocol=htt*)")
    assert holds("(sizes>5)", {"sizes": [1, 2, 10]})
    assert not holds("(sizes>50)", {"sizes": [1, 2, 10]})


def test_not_equal_on_a_list_requires_no_element_to_equal() -> None:
    assert holds("(golem.activity.caps.transfer.protocol<>ftp)")
    assert not holds("(golem.activity.caps.transfer.protocol<>http)")


def test_presence_matches_any_value_but_not_absence_or_null() -> None:
    assert parse_constraints("(golem.node.id.name=*)") == Present("golem.node.id.name")
    assert holds("(golem.node.id.name=*)")
    assert holds("(flag=*)", {"flag": False})
    assert not holds("(golem.node.id.name=*)", {})
    assert not holds("(golem.node.id.name=*)", {"golem.node.id.name": None})


def test_presence_allows_trailing_whitespace_like_yagna() -> None:
    assert parse_constraints("(a=*  )") == Present("a")


def test_absent_property_makes_every_comparison_false() -> None:
    for op in ("=", "<>", "<", "<=", ">", ">="):
        assert not holds(f"(missing{op}1)")
    assert not holds("(missing=a*)")


def test_negation_of_a_comparison_on_an_absent_property_is_true() -> None:
    assert holds("(!(missing=1))")
    assert not holds("(!(golem.runtime.name=vm))")


def test_wildcard_matches_prefix() -> None:
    assert parse_constraints("(golem.node.id.name=prov*)") == Like("golem.node.id.name", ("prov", ""))
    assert holds("(golem.node.id.name=prov*)")
    assert not holds("(golem.node.id.name=req*)")


def test_wildcard_matches_suffix_infix_and_several_pieces() -> None:
    assert holds("(golem.node.id.name=*-1)")
    assert holds("(golem.node.id.name=*vid*)")
    assert holds("(golem.node.id.name=p*v*r*1)")
    assert holds("(golem.node.id.name=provider-1*)")
    assert not holds("(golem.node.id.name=p*x*1)")
    assert not holds("(golem.node.id.name=provider*r-1)")
    assert holds("(x=a*a)", {"x": "aa"})
    assert not holds("(x=a*a)", {"x": "a"})


def test_wildcard_applies_to_the_text_of_numbers() -> None:
    assert holds("(v=1*)", {"v": 123})


def test_escaped_characters_are_literal_in_values() -> None:
    parsed = parse_constraints(r"(name=a\2ab\28c\29\5c)")
    assert parsed == Compare("name", Op.EQ, "a*b(c)\\")
    assert parsed.matches({"name": "a*b(c)\\"})
    assert not parsed.matches({"name": "axb(c)\\"})


def test_escapes_decode_as_utf8() -> None:
    assert parse_constraints(r"(n=caf\c3\a9)") == Compare("n", Op.EQ, "café")


def test_and_or_not_nest() -> None:
    text = "(|(&(golem.runtime.name=vm)(!(golem.inf.mem.gib<2)))(golem.runtime.name=wasm))"
    assert holds(text)
    assert not holds(text, {**OFFER, "golem.inf.mem.gib": 1})
    assert holds(text, {"golem.runtime.name": "wasm"})


def test_rendering_is_compact_and_canonical() -> None:
    parsed = parse_constraints(YAPAPI_DEMAND)
    assert str(parsed) == (
        "(&(golem.inf.mem.gib>=0.5)(golem.inf.storage.gib>=2.0)"
        "(golem.runtime.name=vm)(golem.node.debug.subnet=public))"
    )
    assert str(parse_constraints("()")) == "(&)"
    assert str(parse_constraints("(!(|(a=*)(b=x*y)))")) == "(!(|(a=*)(b=x*y)))"


def test_rendering_escapes_characters_that_would_change_the_parse() -> None:
    tricky = Compare("a", Op.LT, "=1 (x) * \\")
    assert str(tricky) == r"(a<\3d1 \28x\29 \2a \5c)"
    assert parse_constraints(str(tricky)) == tricky
    assert parse_constraints(str(Compare("a", Op.LT, ">b"))) == Compare("a", Op.LT, ">b")


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [
        ("", 0, "'('"),
        ("a=1", 0, "'('"),
        ("(a=1", 4, "')' to end the clause"),
        ("(&(a=1)", 7, "'(' or ')'"),
        ("(&(a=1) x)", 8, "'(' or ')'"),
        ("(a=1))", 5, "end of input"),
        ("(a=1)(b=2)", 5, "end of input"),
        ("(=1)", 1, "a property name"),
        ("(a 1)", 2, "a comparison operator"),
        ("(a~=1)", 2, "'~=' is not supported"),
        ("(a>=1*)", 5, "wildcards work only with '='"),
        ("(a=b(c)", 4, "'(' in a value"),
        (r"(a=\zz)", 4, "two hex digits"),
        (r"(a=\ff)", 3, "valid UTF-8"),
        ("(!(a=1)(b=2))", 7, "')'"),
        ("(!)", 2, "'('"),
    ],
)
def test_syntax_errors_name_the_position_and_what_was_expected(
    text: str, position: int, expected: str
) -> None:
    with pytest.raises(ConstraintSyntaxError) as caught:
        parse_constraints(text)
    assert caught.value.position == position
    assert expected in caught.value.expected
    assert f"at position {position}" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_syntax_error_message_gives_line_and_column_of_multiline_input() -> None:
    with pytest.raises(ConstraintSyntaxError, match=r"line 2, column 2\), found 'x'"):
        parse_constraints("(&(a=1)\n\tx)")


def test_nesting_beyond_the_limit_is_a_syntax_error_not_a_crash() -> None:
    deep = "(!" * (MAX_DEPTH + 5) + "(a=1)" + ")" * (MAX_DEPTH + 5)
    with pytest.raises(ConstraintSyntaxError, match="levels of nesting"):
        parse_constraints(deep)
    ok = "(!" * (MAX_DEPTH - 1) + "(a=1)" + ")" * (MAX_DEPTH - 1)
    assert parse_constraints(ok).matches({"a": 1}) is (MAX_DEPTH % 2 == 1)


def test_nodes_are_immutable_and_validate_their_fields() -> None:
    node = Compare("a", Op.EQ, "1")
    with pytest.raises(AttributeError):
        node.value = "2"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Compare("bad name", Op.EQ, "1")
    with pytest.raises(ValueError):
        Like("a", ("only",))
    with pytest.raises(ValueError):
        Like("a", ("", ""))
    with pytest.raises(TypeError):
        And(("(a=1)",))  # type: ignore[arg-type]
    assert hash(node) == hash(Compare("a", Op.EQ, "1"))


def test_operators_combine_constraints_and_flatten_groups() -> None:
    a, b, c = (compare(n, "=", 1) for n in "abc")
    assert a & b & c == And((a, b, c))
    assert (a | b) | c == Or((a, b, c))
    assert ~a == Not(a)
    single_and: Constraint = And((a,))
    assert single_and != Or((a,))


def test_builder_helpers_render_python_values() -> None:
    assert str(compare("golem.inf.mem.gib", ">=", 0.5)) == "(golem.inf.mem.gib>=0.5)"
    assert str(compare("flag", Op.EQ, True)) == "(flag=true)"
    assert str(compare("n", "<=", Decimal("2.50"))) == "(n<=2.50)"
    assert str(compare("name", "=", "a*b")) == r"(name=a\2ab)"
    assert like("name", "prov*") == Like("name", ("prov", ""))
    assert like("name", "*") == Present("name")
    assert like("name", "exact") == Compare("name", Op.EQ, "exact")
    with pytest.raises(ValueError):
        compare("x", "=", float("nan"))
    with pytest.raises(ValueError):
        compare("x", "!=", 1)


def test_constraints_builder_ands_its_clauses() -> None:
    built = Constraints("(golem.runtime.name=vm)").add(compare("golem.inf.mem.gib", ">=", 2))
    assert str(built) == "(&(golem.runtime.name=vm)(golem.inf.mem.gib>=2))"
    assert Constraints("(a=1)").build() == Compare("a", Op.EQ, "1")
    assert str(Constraints()) == "(&)"


def test_two_way_match_needs_both_sides_to_accept() -> None:
    demand_props = {"golem.srv.comp.expiration": 1_700_000_000_000, "golem.node.debug.subnet": "public"}
    demand_cons = YAPAPI_DEMAND
    offer_cons = "(&(golem.srv.comp.expiration>1600000000000)(golem.node.debug.subnet=public))"
    assert match(demand_props, demand_cons, OFFER, offer_cons)
    assert not match(demand_props, demand_cons, {**OFFER, "golem.runtime.name": "wasm"}, offer_cons)
    assert not match({**demand_props, "golem.node.debug.subnet": "devnet"}, demand_cons, OFFER, offer_cons)
    assert match({}, "(&)", {}, parse_constraints("()"))


def test_two_way_match_rejects_malformed_constraints() -> None:
    with pytest.raises(ConstraintSyntaxError):
        match({}, "(&)", {}, "(&")


_names = st.from_regex(r"[a-z][a-z0-9_.?@-]{0,12}", fullmatch=True)
_values = st.text(max_size=8)
_patterns = st.lists(_values, min_size=2, max_size=4).filter(
    # ("", "  ") renders as "(x=*  )", which is a presence test, so Like refuses it.
    lambda parts: not (len(parts) == 2 and parts[0] == "" and not parts[1].strip())
)
_leaves: st.SearchStrategy[Constraint] = st.one_of(
    st.builds(Present, _names),
    st.builds(Compare, _names, st.sampled_from(list(Op)), _values),
    st.builds(Like, _names, _patterns.map(tuple)),
)
_trees = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: And(tuple(xs))),
        st.lists(inner, max_size=4).map(lambda xs: Or(tuple(xs))),
        inner.map(Not),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_trees)
def test_parsing_a_rendering_gives_back_the_same_constraint(tree: Constraint) -> None:
    assert parse_constraints(str(tree)) == tree
