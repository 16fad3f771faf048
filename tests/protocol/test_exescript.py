"""ExeScript batches from strangers: parsing is strict, bounded, and fails only with
BatchFormatError naming what is wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workgen.protocol.exescript import (
    MAX_BATCH_BYTES, MAX_COUNT, MAX_DEPTH, MAX_VALUES, AtEnd, BatchFormatError, Capture, Command,
    Deploy, Run, Start, Stream, Terminate, Transfer, batch_to_text, parse_batch,
)

# Every numeric field, as (where it goes in a batch, the field an error must name).
NUMERIC_FIELDS: list[tuple[str, str]] = [
    ('[{"run": {"entry_point": "/bin/true", "capture": {"stdout": {"atEnd": {"head": N}}}}}]',
     "run.capture.stdout.atEnd.head"),
    ('[{"run": {"entry_point": "/bin/true", "capture": {"stderr": {"atEnd": {"tail": N}}}}}]',
     "run.capture.stderr.atEnd.tail"),
    ('[{"run": {"entry_point": "/bin/true", "capture": {"stdout": {"atEnd": {"headTail": N}}}}}]',
     "run.capture.stdout.atEnd.headTail"),
    ('[{"run": {"entry_point": "/bin/true", "capture": {"stdout": {"stream": {"limit": N}}}}}]',
     "run.capture.stdout.stream.limit"),
    ('[{"transfer": {"from": "container:/a", "to": "file:///b", "depth": N}}]',
     "transfer.depth"),
    ('[{"deploy": {"progress": {"updateStep": N}}}]', "deploy.progress.updateStep"),
    ('[{"deploy": {"volumes": {"/golem/work": [1, {"size": N}]}}}]',
     "deploy.volumes./golem/work[1].size"),
    ('[{"transfer": {"from": "a", "to": "b", "fileset": [{"n": N}]}}]', "transfer.fileset[0].n"),
]
BAD_NUMBERS = ["Infinity", "-Infinity", "NaN", "1e400", "-1e400", "1" * 5000]


def error_of(batch: Any) -> str:
    with pytest.raises(BatchFormatError) as info:
        parse_batch(batch)
    return str(info.value)


@pytest.mark.parametrize("number", BAD_NUMBERS)
@pytest.mark.parametrize(("template", "field"), NUMERIC_FIELDS)
def test_non_finite_or_huge_numbers_are_refused_naming_the_field(
    template: str, field: str, number: str
) -> None:
    batch = template.replace("N", number)
    for form in (batch, batch.encode()):
        message = error_of(form)
        assert message.startswith(f"command 0, field {field!r}: ")
        assert "finite number" in message or "range" in message


@pytest.mark.parametrize("value", ["-1", "1.5", "9007199254740993", "1e300", "true", '"5"'])
@pytest.mark.parametrize(("template", "field"), NUMERIC_FIELDS[:5])
def test_limits_must_be_non_negative_whole_and_of_sane_size(
    template: str, field: str, value: str
) -> None:
    assert f"field {field!r}" in error_of(template.replace("N", value))


def test_limits_in_range_are_accepted() -> None:
    (run,) = parse_batch('[{"run": {"entry_point": "x", "capture": {'
                         f'"stdout": {{"atEnd": {{"headTail": {MAX_COUNT}}}}}, '
                         '"stderr": {"stream": {"limit": 5.0}}}}}]')
    assert isinstance(run, Run) and run.capture == Capture(
        stdout=AtEnd("headTail", MAX_COUNT), stderr=Stream(limit=5))


@pytest.mark.parametrize("number", ["Infinity", "NaN", "1e400"])
def test_bad_numbers_outside_commands_are_refused_too(number: str) -> None:
    assert number in error_of(number)
    assert "command 0" in error_of(f"[{number}]")


def test_decoded_batches_are_checked_the_same_way() -> None:
    # A batch that reached us already decoded (e.g. from the GSB) gets the same checks.
    bad: list[Any] = [{"run": {"entry_point": "x",
                               "capture": {"stdout": {"atEnd": {"head": float("inf")}}}}}]
    assert "field 'run.capture.stdout.atEnd.head'" in error_of(bad)
    assert "field 'deploy.volumes'" in error_of([{"deploy": {"volumes": float("nan")}}])
    assert "out of range" in error_of([{"deploy": {"volumes": 1 << 70}}])
    assert "JSON data" in error_of([{"deploy": {"volumes": {1, 2}}}])
    assert "not a string" in error_of([{"deploy": {"volumes": {1: "a"}}}])


# -- nesting --------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100, 999, 1000, 5000, 100_000])
def test_deep_nesting_is_refused_without_recursion_error(depth: int) -> None:
    text = "[" * depth + "]" * depth
    for form in (text, text.encode()):
        assert "nested too deeply" in error_of(form)
    inside = f'[{{"deploy": {{"volumes": {"[" * depth}{"]" * depth}}}}}]'
    assert "nested too deeply" in error_of(inside)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    # The batch's array, the command, its body and the volumes object make 4 levels.
    volumes = "[" * (MAX_DEPTH - 3) + "]" * (MAX_DEPTH - 3)
    (deploy,) = parse_batch(f'[{{"deploy": {{"volumes": {volumes}}}}}]')
    assert isinstance(deploy, Deploy)
    too_deep = "[" + volumes + "]"
    assert "nested too deeply" in error_of(f'[{{"deploy": {{"volumes": {too_deep}}}}}]')


def test_a_decoded_batch_that_contains_itself_is_too_deep() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert "nested too deeply" in error_of([{"deploy": {"volumes": loop}}])


# -- text, bytes and size -------------------------------------------------------------------

def test_bytes_are_parsed_as_utf8() -> None:
    batch = '[{"run": {"entry_point": "/bin/echo", "args": ["héllo ☃"]}}]'.encode()
    (run,) = parse_batch(batch)
    assert isinstance(run, Run) and run.args == ("héllo ☃",)
    assert parse_batch(bytearray(batch)) == [run]


@pytest.mark.parametrize("data", [b'[{"run": {"entry_point": "\xff"}}]', b"\xc3", b"\xed\xa0\x80",
                                  '[{"deploy": {}}]'.encode("utf-16")])
def test_bytes_that_are_not_utf8_are_refused_saying_so(data: bytes) -> None:
    assert "not valid UTF-8" in error_of(data)


def test_batches_over_the_size_limit_are_refused() -> None:
    padding = " " * (MAX_BATCH_BYTES - len('[{"terminate": {}}]'))
    assert parse_batch('[{"terminate": {}}]' + padding) == [Terminate()]
    assert "16777216" in error_of('[{"terminate": {}}]' + padding + " ")
    assert "16777216" in error_of(('[{"terminate": {}}]' + padding + " ").encode())
    # Characters that take several bytes count as their bytes.
    assert "16777216" in error_of('["' + "é" * (MAX_BATCH_BYTES // 2) + '"]')


@pytest.mark.parametrize(("batch", "field"), [
    ('[{"run": {"entry_point": "/bin/sh\\u0000x"}}]', "run.entry_point"),
    ('[{"run": {"entry_point": "/bin/sh", "args": ["-c", "a\\u0000b"]}}]', "run.args[1]"),
    ('[{"run": {"entry_point": "/bin/sh", "env": {"A": "x\\u0000"}}}]', "run.env.A"),
    ('[{"run": {"entry_point": "/bin/sh", "env": {"A\\u0000B": "x"}}}]', "run.env.A\x00B"),
    ('[{"deploy": {"env": {"A": "\\u0000"}}}]', "deploy.env.A"),
    ('[{"start": {"args": ["\\u0000"]}}]', "start.args[0]"),
    ('[{"transfer": {"from": "container:/a\\u0000", "to": "file:///b"}}]', "transfer.from"),
    ('[{"transfer": {"from": "container:/a", "to": "file:///b\\u0000"}}]', "transfer.to"),
])
def test_nul_in_arguments_environment_and_paths_is_refused(batch: str, field: str) -> None:
    message = error_of(batch)
    assert f"field {field!r}" in message and "NUL" in message


@pytest.mark.parametrize("batch", [
    '[{"run": {"entry_point": "/bin/sh", "args": ["\\ud800"]}}]',
    '[{"run": {"entry_point": "/bin/sh", "env": {"A": "\\udfff"}}}]',
])
def test_lone_surrogates_cannot_reach_a_program(batch: str) -> None:
    assert "lone surrogate" in error_of(batch)


@pytest.mark.parametrize("name", ["", "A=B", "=A"])
def test_environment_names_must_be_names(name: str) -> None:
    batch = json.dumps([{"run": {"entry_point": "/bin/sh", "env": {name: "x"}}}])
    assert "field 'run.env'" in error_of(batch)


def test_well_formed_batches_round_trip() -> None:
    batch: list[Command] = [
        Deploy(env={"A": "1"}), Start(args=("x",)),
        Run("/bin/sh", ("-c", "echo $A"), env={"B": "2"},
            capture=Capture(stdout=AtEnd("tail", 100, "str"), stderr=Stream(limit=10))),
        Transfer("container:/golem/output/x", "file:///tmp/x", depth=2), Terminate(),
    ]
    assert parse_batch(batch_to_text(batch)) == batch
    assert parse_batch(batch_to_text(batch).encode()) == batch


# -- anything else is a BatchFormatError too -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)
command_names = st.sampled_from(["deploy", "start", "run", "transfer", "terminate", "sign", "x"])
field_names = st.sampled_from(["entry_point", "args", "env", "capture", "from", "to", "depth",
                               "net", "hosts", "volumes", "progress", "stdout", "stderr",
                               "atEnd", "stream", "head", "tail", "headTail", "limit", "format"])
bodies = st.recursive(json_values, lambda inner: st.dictionaries(field_names, inner, max_size=5),
                      max_leaves=15)
batches = st.lists(st.dictionaries(command_names, bodies, min_size=1, max_size=2), max_size=3)


@settings(max_examples=300, deadline=None)
@given(batches)
def test_any_decoded_batch_parses_or_is_a_batch_format_error(batch: list[Any]) -> None:
    for form in (batch, json.dumps(batch), json.dumps(batch).encode()):
        try:
            parse_batch(form)
        except BatchFormatError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(alphabet='[]{}":,0123456789.eE-+ INaftrulsy\\\x00',
                                           max_size=200))
def test_any_text_parses_or_is_a_batch_format_error(data: str | bytes) -> None:
    try:
        parse_batch(data)
    except BatchFormatError:
        pass


def test_messages_stay_short_whatever_the_batch_holds() -> None:
    huge = "x" * (1 << 20)
    for batch in (
        [{huge: {}}],
        [{"run": {"entry_point": "x", "capture": {"stdout": {"atEnd": {huge: 1}}}}}],
        [{"run": {"entry_point": "x", "capture": {"stdout": {"atEnd": {"head": huge}}}}}],
        [{"run": {"entry_point": "x", "env": {huge + "=": "x"}}}],
        [{"run": {"entry_point": "x", "capture": {"stdout": {"atEnd": {"format": huge}}}}}],
        [{"deploy": {"volumes": 10 ** 5000}}],
    ):
        assert len(error_of(batch)) < 500


def test_a_decoded_batch_that_shares_its_parts_is_bounded() -> None:
    shared: list[Any] = []
    for _ in range(MAX_DEPTH - 4):
        shared = [shared, shared]  # 2**28 values if walked as a tree
    assert "more than" in error_of([{"deploy": {"volumes": shared}}])


def test_a_command_holds_a_bounded_number_of_values() -> None:
    many = '[{"start": {"args": [' + ",".join(['"a"'] * MAX_VALUES) + "]}}]"
    assert f"more than {MAX_VALUES} values" in error_of(many)
    (start,) = parse_batch('[{"start": {"args": [' + ",".join(['"a"'] * 100_000) + "]}}]")
    assert isinstance(start, Start) and len(start.args) == 100_000
