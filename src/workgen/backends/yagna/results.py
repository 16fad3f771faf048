"""What a yagna exe unit's command results mean: their return code and failure kind.

The daemon relays an exe unit's ``ExeScriptCommandResult`` as it is: ``result`` and a free-text
``message``. This is the one place that reads meaning from that text, and only from its start,
which the exe unit writes (a command's stderr may follow it, and must never be taken for it).
Both workgen's exe unit and yagna's own word their messages so:

* ``command exited with return code N`` / ``ExeScript command exited with code N`` (a failed
  run), ``command killed by signal N (...)`` (128 + N, as a shell reports it);
* ``batch timed out ...``; ``batch cancelled ...``;
* ``transfer ...`` (a failed transfer).

A failure whose message says none of these is a command failure with no known code.
"""

from __future__ import annotations

import re

from ...protocol.results import CommandOutcome, CommandResult, FailureKind

_EXITED = re.compile(r"(?:ExeScript )?command exited with (?:return )?code (\d+)\b", re.I)
_SIGNALLED = re.compile(r"command killed by signal (\d+)\b", re.I)
_TIMED_OUT = re.compile(r"batch timed out\b", re.I)
_CANCELLED = re.compile(r"batch cancelled\b", re.I)
_TRANSFER = re.compile(r"transfer\b", re.I)


def outcome(result: CommandResult, return_code: int | None = None) -> CommandOutcome:
    """``result`` typed; ``return_code`` is one the runtime events reported, if followed."""
    if result.ok:
        return CommandOutcome.of(result, 0 if return_code is None else return_code, None)
    message = (result.message or "").lstrip()
    failure = FailureKind.COMMAND_FAILED
    code = return_code
    if _TIMED_OUT.match(message):
        failure, code = FailureKind.TIMED_OUT, None
    elif _CANCELLED.match(message):
        failure, code = FailureKind.CANCELLED, None
    elif _TRANSFER.match(message):
        failure = FailureKind.TRANSFER_FAILED
    elif code is None and (found := _EXITED.match(message)) is not None:
        code = int(found.group(1))
    elif code is None and (found := _SIGNALLED.match(message)) is not None:
        code = 128 + int(found.group(1))
    if code is not None and code < 0:
        code = None  # the wire's -1: the unit killed it, no exit code
    return CommandOutcome.of(result, code, failure)
