"""What an execution unit reports back: command results and runtime events.

JSON forms follow yagna's serde model (ya-client), which is what its daemon really sends:

* ``ExeScriptCommandResult`` (``GET /activity/{id}/exec/{batch}``)::

    {"index": 0, "eventDate": "2026-01-01T00:00:00.000000Z", "result": "Ok",
     "stdout": "text" | [0, 255, ...] | null, "stderr": ..., "message": null,
     "isBatchFinished": false}

* ``RuntimeEvent`` (the SSE stream of the same endpoint)::

    {"batch_id": "...", "index": 0, "timestamp": "2026-01-01T00:00:00.000000",
     "kind": {"started": {"command": {...}}} | {"stdout": "text" | [bytes]}
           | {"stderr": ...} | {"finished": {"return_code": 0, "message": null}}
           | {"progress": {"step": [0, 1], "message": null, "progress": [10, 100], "unit": "Bytes"}}}

Output is a string for the ``str`` capture format and a byte array for ``bin``. The parsers also
accept the camelCase spellings of the OpenAPI file (``batchId``, ``returnCode``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TypeAlias

Output: TypeAlias = str | bytes | None


def output_to_json(value: Output) -> str | list[int] | None:
    if isinstance(value, bytes):
        return list(value)
    return value


def output_from_json(value: Any) -> Output:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        # The OpenAPI file's tagged form: {"str": "..."} or {"bin": [...]}.
        ((tag, inner),) = value.items()
        return output_from_json(inner if tag == "str" else bytes(inner))
    if isinstance(value, (list, bytes)):
        return bytes(value)
    raise ValueError(f"command output must be a string or a byte array, got {value!r}")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CommandResult:
    """``ExeScriptCommandResult``: the outcome of one command of a batch."""

    index: int
    result: Literal["Ok", "Error"]
    event_date: datetime
    stdout: Output = None
    stderr: Output = None
    message: str | None = None
    is_batch_finished: bool = False

    @property
    def ok(self) -> bool:
        return self.result == "Ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "eventDate": self.event_date.astimezone(timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            ),
            "result": self.result,
            "stdout": output_to_json(self.stdout),
            "stderr": output_to_json(self.stderr),
            "message": self.message,
            "isBatchFinished": self.is_batch_finished,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CommandResult:
        result = obj["result"]
        if result not in ("Ok", "Error"):
            raise ValueError(f"result must be 'Ok' or 'Error', got {result!r}")
        date = obj.get("eventDate")
        return cls(
            index=int(obj["index"]),
            result=result,
            event_date=_parse_time(date) if date else utc_now(),
            stdout=output_from_json(obj.get("stdout")),
            stderr=output_from_json(obj.get("stderr")),
            message=obj.get("message"),
            is_batch_finished=bool(obj.get("isBatchFinished", False)),
        )


class FailureKind(enum.Enum):
    """Why a command failed, as its execution unit knows it (not read from any text)."""

    COMMAND_FAILED = "command-failed"
    """The command ran and failed (a non-zero exit, a signal, a limit hit, a bad request)."""
    TIMED_OUT = "timed-out"
    """The batch's timeout ran out while this command ran; it was killed."""
    CANCELLED = "cancelled"
    """The batch was cancelled while (or before) this command ran."""
    TRANSFER_FAILED = "transfer-failed"
    """A ``transfer`` could not move its file."""


@dataclass(frozen=True)
class CommandOutcome(CommandResult):
    """A command's result with its meaning typed: what crosses the backend seam.

    ``return_code`` is the command's exit code where known (0 for success; ``128 + N`` for a
    command killed by signal N), ``failure`` why it failed (``None`` if it did not). Its JSON is
    the wire result's: the typed fields are each side's own knowledge.
    """

    return_code: int | None = None
    failure: FailureKind | None = None

    @classmethod
    def of(cls, result: CommandResult, return_code: int | None,
           failure: FailureKind | None) -> CommandOutcome:
        return cls(index=result.index, result=result.result, event_date=result.event_date,
                   stdout=result.stdout, stderr=result.stderr, message=result.message,
                   is_batch_finished=result.is_batch_finished, return_code=return_code,
                   failure=failure)


@dataclass(frozen=True)
class Started:
    command: dict[str, Any]


@dataclass(frozen=True)
class StdOut:
    output: str | bytes


@dataclass(frozen=True)
class StdErr:
    output: str | bytes


@dataclass(frozen=True)
class Finished:
    return_code: int
    message: str | None = None


@dataclass(frozen=True)
class Progress:
    step: tuple[int, int]
    progress: tuple[int, int | None]
    message: str | None = None
    unit: str | None = None


EventKind: TypeAlias = Started | StdOut | StdErr | Finished | Progress


@dataclass(frozen=True)
class RuntimeEvent:
    batch_id: str
    index: int
    timestamp: datetime
    kind: EventKind

    def to_json(self) -> dict[str, Any]:
        kind: dict[str, Any]
        k = self.kind
        if isinstance(k, Started):
            kind = {"started": {"command": k.command}}
        elif isinstance(k, StdOut):
            kind = {"stdout": output_to_json(k.output)}
        elif isinstance(k, StdErr):
            kind = {"stderr": output_to_json(k.output)}
        elif isinstance(k, Finished):
            kind = {"finished": {"return_code": k.return_code, "message": k.message}}
        else:
            kind = {"progress": {"step": list(k.step), "message": k.message,
                                 "progress": list(k.progress), "unit": k.unit}}
        return {
            "batch_id": self.batch_id,
            "index": self.index,
            # yagna sends a naive UTC time here (chrono's NaiveDateTime), unlike eventDate.
            "timestamp": self.timestamp.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f"),
            "kind": kind,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RuntimeEvent:
        raw = obj["kind"]
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ValueError(f"runtime event kind must have one key, got {raw!r}")
        ((name, body),) = raw.items()
        kind: EventKind
        if name == "started":
            kind = Started(command=body["command"])
        elif name in ("stdout", "stderr"):
            out = output_from_json(body)
            if out is None:
                raise ValueError(f"{name} event without output")
            kind = StdOut(out) if name == "stdout" else StdErr(out)
        elif name == "finished":
            code = body.get("return_code", body.get("returnCode"))
            kind = Finished(return_code=int(code), message=body.get("message"))
        elif name == "progress":
            progress = body.get("progress") or [0, None]
            kind = Progress(
                step=(int(body["step"][0]), int(body["step"][1])),
                progress=(int(progress[0]), None if len(progress) < 2 or progress[1] is None
                          else int(progress[1])),
                message=body.get("message"),
                unit=body.get("unit"),
            )
        else:
            raise ValueError(f"unknown runtime event kind {name!r}")
        return cls(
            batch_id=obj.get("batch_id", obj.get("batchId", "")),
            index=int(obj["index"]),
            timestamp=_parse_time(obj["timestamp"]),
            kind=kind,
        )


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _parse_time(text: str) -> datetime:
    # chrono may print nanoseconds; datetime holds microseconds.
    value = datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00")))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value
