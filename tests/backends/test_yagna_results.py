"""The yagna backend's reading of exe-unit results: codes and failure kinds from the start of
the message only (a command's stderr follows it there and must never be taken for it)."""

from __future__ import annotations

import pytest

from workgen.backends.yagna.results import outcome
from workgen.protocol.results import CommandResult, FailureKind, utc_now


def failed(message: str | None) -> CommandResult:
    return CommandResult(index=0, result="Error", event_date=utc_now(), message=message)


@pytest.mark.parametrize("message, code, kind", [
    ("command exited with return code 3: connect: timed out", 3, FailureKind.COMMAND_FAILED),
    ("command exited with return code 2: batch timed out", 2, FailureKind.COMMAND_FAILED),
    ("ExeScript command exited with code 1", 1, FailureKind.COMMAND_FAILED),
    ("command killed by signal 9 (SIGKILL): return code 5", 137, FailureKind.COMMAND_FAILED),
    ("batch timed out after 30s; the running command was killed", None, FailureKind.TIMED_OUT),
    ("batch cancelled; the running command was killed", None, FailureKind.CANCELLED),
    ("transfer failed: no such file", None, FailureKind.TRANSFER_FAILED),
    ("run: output limit exceeded, return code 7", None, FailureKind.COMMAND_FAILED),
    ("something else entirely", None, FailureKind.COMMAND_FAILED),
    (None, None, FailureKind.COMMAND_FAILED),
])
def test_a_failure_is_read_from_the_start_of_its_message(message: str | None, code: int | None,
                                                         kind: FailureKind) -> None:
    typed = outcome(failed(message))
    assert (typed.return_code, typed.failure) == (code, kind)
    assert typed.message == message and not typed.ok


def test_a_code_from_the_runtime_events_stands_and_success_is_zero() -> None:
    assert outcome(failed("command exited with return code 3"), 4).return_code == 4
    ok = CommandResult(index=1, result="Ok", event_date=utc_now(), stdout="hi\n")
    typed = outcome(ok)
    assert (typed.return_code, typed.failure, typed.stdout) == (0, None, "hi\n")
    assert typed.to_json() == ok.to_json()  # the wire form is untouched
