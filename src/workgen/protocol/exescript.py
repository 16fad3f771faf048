"""ExeScript commands: the batch a requestor sends to an execution unit.

Shared by the requestor (which builds batches) and the provider (which parses and runs them).
The JSON form is the one yagna's activity API carries in ``POST /activity/{id}/exec``
(``{"text": "<json array>"}``): one object per command, keyed by the command name::

    [{"deploy": {}}, {"start": {"args": []}},
     {"run": {"entry_point": "/bin/sh", "args": ["-c", "date"],
              "capture": {"stdout": {"atEnd": {"format": "str"}}, "stderr": {"stream": {}}}}},
     {"transfer": {"from": "container:/golem/output/x", "to": "file:///tmp/x"}},
     {"terminate": {}}]

``run`` also accepts an ``env`` object (name to value). yagna's daemon drops fields it does not
know, so a requestor talking to yagna must not rely on it there; our execution unit honours it.

A provider parses batches from strangers, so parsing is strict and bounded: at most
:data:`MAX_BATCH_BYTES` of UTF-8 JSON, nested at most :data:`MAX_DEPTH` levels deep, with at
most :data:`MAX_VALUES` values in a command; every number finite and in range (JSON has no
``NaN`` or ``Infinity``, whatever Python's ``json`` accepts); no NUL in a string that can reach
a program (its arguments, environment and paths cannot hold one). Whatever is wrong is a
:class:`BatchFormatError` that names the command and field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

Format: TypeAlias = Literal["str", "bin"]
PartKind: TypeAlias = Literal["head", "tail", "headTail"]

# yagna's serde model accepts the spec's long spellings as aliases of the short ones.
_FORMAT_ALIASES: dict[str, Format] = {"str": "str", "string": "str", "bin": "bin", "binary": "bin"}
_PART_KINDS: tuple[PartKind, ...] = ("head", "tail", "headTail")

MAX_BATCH_BYTES = 16 << 20
"""The largest batch accepted as JSON text, in bytes of UTF-8."""
MAX_DEPTH = 32
"""The deepest nesting of arrays and objects accepted; the batch's own array is level 1."""
MAX_COUNT = 1 << 53
"""The largest byte limit or count a command may give (the largest integer JSON numbers hold
exactly in every implementation)."""
# Any other integer must fit 64 bits, as it does in yagna's (Rust) model.
_MIN_INT, _MAX_INT = -(1 << 63), (1 << 64) - 1
# Longer digit strings are refused unparsed: Python's int() is quadratic and limited to 4300
# digits, and no integer in range has more.
_MAX_INT_DIGITS = 24
MAX_VALUES = 1 << 20
"""The most values (numbers, strings, arrays, ...) one command may hold."""


class BatchFormatError(ValueError):
    """A batch (or one command of it) does not follow the ExeScript format.

    ``index`` is the position of the bad command in the batch (``None`` when the batch as a whole
    is malformed) and ``field`` the dotted path of the bad field inside that command.
    """

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None):
        where = []
        if index is not None:
            where.append(f"command {index}")
        if field:
            # The field's path holds the batch's own keys: shown in part if it is long.
            where.append(f"field {field if len(field) <= 200 else field[:200] + '...'!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.index = index
        self.field = field


@dataclass(frozen=True)
class AtEnd:
    """Capture a stream whole and return it in the command's result.

    ``part`` keeps only the first (``head``), last (``tail``) or first-and-last (``headTail``)
    ``limit`` bytes; the result's message then says how much was left out.
    """

    part: PartKind | None = None
    limit: int | None = None
    format: Format | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.part is not None:
            body[self.part] = self.limit
        if self.format is not None:
            body["format"] = self.format
        return {"atEnd": body}


@dataclass(frozen=True)
class Stream:
    """Deliver a stream as runtime events while the command runs (at most ``limit`` bytes)."""

    limit: int | None = None
    format: Format | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.limit is not None:
            body["limit"] = self.limit
        if self.format is not None:
            body["format"] = self.format
        return {"stream": body}


CaptureMode: TypeAlias = AtEnd | Stream


@dataclass(frozen=True)
class Capture:
    stdout: CaptureMode | None = None
    stderr: CaptureMode | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.stdout is not None:
            body["stdout"] = self.stdout.to_json()
        if self.stderr is not None:
            body["stderr"] = self.stderr.to_json()
        return body


# When a run names no capture, both streams are captured whole: a requestor that forgot to ask
# still sees what the command printed.
DEFAULT_CAPTURE = Capture(stdout=AtEnd(), stderr=AtEnd())


@dataclass(frozen=True)
class Deploy:
    net: tuple[Mapping[str, Any], ...] = ()
    hosts: Mapping[str, str] = field(default_factory=dict)
    volumes: Any = None
    env: Mapping[str, str] = field(default_factory=dict)
    progress: Mapping[str, Any] | None = None

    name = "deploy"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.net:
            body["net"] = [dict(n) for n in self.net]
        if self.hosts:
            body["hosts"] = dict(self.hosts)
        if self.volumes is not None:
            body["volumes"] = self.volumes
        if self.env:
            body["env"] = dict(self.env)
        if self.progress is not None:
            body["progress"] = dict(self.progress)
        return {"deploy": body}


@dataclass(frozen=True)
class Start:
    args: tuple[str, ...] = ()

    name = "start"

    def to_json(self) -> dict[str, Any]:
        return {"start": {"args": list(self.args)}}


@dataclass(frozen=True)
class Run:
    entry_point: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    capture: Capture | None = None

    name = "run"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"entry_point": self.entry_point, "args": list(self.args)}
        if self.env:
            body["env"] = dict(self.env)
        if self.capture is not None:
            body["capture"] = self.capture.to_json()
        return {"run": body}


@dataclass(frozen=True)
class Transfer:
    from_: str
    to: str
    format: str | None = None
    depth: int | None = None
    fileset: Any = None
    progress: Mapping[str, Any] | None = None

    name = "transfer"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"from": self.from_, "to": self.to}
        for key in ("format", "depth", "fileset"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if self.progress is not None:
            body["progress"] = dict(self.progress)
        return {"transfer": body}


@dataclass(frozen=True)
class Terminate:
    name = "terminate"

    def to_json(self) -> dict[str, Any]:
        return {"terminate": {}}


@dataclass(frozen=True)
class Sign:
    name = "sign"

    def to_json(self) -> dict[str, Any]:
        return {"sign": {}}


Command: TypeAlias = Deploy | Start | Run | Transfer | Terminate | Sign


def batch_to_json(commands: Sequence[Command]) -> list[dict[str, Any]]:
    return [c.to_json() for c in commands]


def batch_to_text(commands: Sequence[Command]) -> str:
    """The ``text`` of an ``ExeScriptRequest``."""
    return json.dumps(batch_to_json(commands), separators=(",", ":"))


def parse_batch(batch: str | bytes | bytearray | Sequence[Any]) -> list[Command]:
    """Parse a batch from its JSON text (``str``, or ``bytes`` of UTF-8) or decoded list.

    Raises :class:`BatchFormatError` for anything malformed, and no other exception.
    """
    if isinstance(batch, (bytes, bytearray)):
        batch = _decode_utf8(batch)
    if isinstance(batch, str):
        batch = _load_json(batch)
    if not isinstance(batch, list):
        raise BatchFormatError(f"a batch is a JSON array of commands, got {_kind(batch)}")
    if not batch:
        raise BatchFormatError("a batch needs at least one command")
    return [parse_command(item, index) for index, item in enumerate(batch)]


def _decode_utf8(data: bytes | bytearray) -> str:
    if len(data) > MAX_BATCH_BYTES:
        raise BatchFormatError(f"the batch is {len(data)} bytes long; at most {MAX_BATCH_BYTES} "
                               "bytes of JSON are accepted")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.end].hex(" ")
        raise BatchFormatError(
            f"not valid UTF-8 (a batch is JSON text in UTF-8): byte {bad} at offset {exc.start} "
            f"({exc.reason})"
        ) from None


def _load_json(text: str) -> Any:
    # Characters first: cheap, and no text of fewer characters can exceed the byte limit.
    if len(text) > MAX_BATCH_BYTES or (
        len(text) > MAX_BATCH_BYTES // 4
        and len(text.encode("utf-8", "surrogatepass")) > MAX_BATCH_BYTES
    ):
        raise BatchFormatError(f"the batch is longer than the {MAX_BATCH_BYTES} bytes of JSON "
                               "accepted")
    try:
        # Out-of-range numbers become markers, not errors, so that the check of the decoded
        # batch (which knows the command and field) can report them.
        return json.loads(text, parse_constant=_BadNumber, parse_float=_parse_float,
                          parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise BatchFormatError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise BatchFormatError(
            f"nested too deeply: arrays and objects more than {MAX_DEPTH} levels deep are "
            "refused"
        ) from None
    except ValueError as exc:  # no other is known, but a batch is never more than malformed
        raise BatchFormatError(f"not valid JSON: {exc}") from None


class _BadNumber:
    """A JSON number that Python would parse but a batch must not hold (``NaN``, ``Infinity``,
    ``1e400``, a 5000-digit integer): kept as its text to be reported with its field."""

    def __init__(self, text: str):
        self.text = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"

    def __repr__(self) -> str:
        return self.text


def _parse_float(text: str) -> float | _BadNumber:
    value = float(text)
    return value if math.isfinite(value) else _BadNumber(text)


def _parse_int(text: str) -> int | _BadNumber:
    return int(text) if len(text) <= _MAX_INT_DIGITS else _BadNumber(text)


def _check_values(obj: Any, index: int) -> None:
    """Every value of a command is JSON data, nested at most :data:`MAX_DEPTH` levels deep
    (with the batch's array), and every number in it is finite and in range.

    Iterative, so no nesting can reach Python's recursion limit; a self-containing list (from
    a caller that hands decoded data) is just too deep.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(obj, ())]
    budget = MAX_VALUES
    while stack:
        value, path = stack.pop()
        budget -= 1
        if budget < 0:
            raise BatchFormatError(f"holds more than {MAX_VALUES} values", index=index)
        problem = None
        if value is None or isinstance(value, (bool, str)):
            continue
        if isinstance(value, int):
            if not _MIN_INT <= value <= _MAX_INT:
                problem = f"is out of range, got {_shown(value)}"
        elif isinstance(value, float):
            if not math.isfinite(value):
                problem = f"must be a finite number, got {value!r}"
        elif isinstance(value, _BadNumber):
            problem = f"must be a finite number in range, got {value.text}"
        elif isinstance(value, (dict, list, tuple)):
            # The batch's array is level 1, the command's object level 2.
            if len(path) + 2 > MAX_DEPTH:
                problem = f"nested too deeply: more than {MAX_DEPTH} levels of arrays and objects"
            elif isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        problem = f"has a key that is not a string: {_shown(key)}"
                        break
                    stack.append((item, (*path, key)))
            else:
                stack.extend((item, (*path, i)) for i, item in enumerate(value))
        else:
            problem = f"must be JSON data, got {_kind(value)}"
        if problem is not None:
            raise BatchFormatError(problem, index=index, field=_path_text(path) or None)


def _path_text(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def parse_command(obj: Any, index: int = 0) -> Command:
    _check_values(obj, index)
    if not isinstance(obj, dict) or len(obj) != 1:
        raise BatchFormatError(
            "a command is an object with exactly one key, the command name", index=index
        )
    ((name, body),) = obj.items()
    parser = _PARSERS.get(name)
    if parser is None:
        known = ", ".join(sorted(_PARSERS))
        raise BatchFormatError(f"unknown command {_shown(name)} (known: {known})", index=index)
    if not isinstance(body, dict):
        raise BatchFormatError(f"must be an object, got {_kind(body)}", index=index, field=name)
    command: Command = parser(_Fields(body, index, name))
    return command


class _Fields:
    """Typed access to one command body, raising errors that name the offending field."""

    def __init__(self, body: dict[str, Any], index: int, prefix: str):
        self.body, self.index, self.prefix = body, index, prefix

    def error(self, key: str, message: str) -> BatchFormatError:
        return BatchFormatError(message, index=self.index, field=f"{self.prefix}.{key}")

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self.body.get(key)
        if value is None:
            if required:
                raise self.error(key, "is required")
            return None
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {_kind(value)}")
        self._check_text(key, value)
        return value

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self.body.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be an array of strings")
        for i, item in enumerate(value):
            self._check_text(f"{key}[{i}]", item)
        return tuple(value)

    def str_map(self, key: str, *, env: bool = False) -> dict[str, str] | None:
        """An object of string values; ``env``: its names are environment variable names."""
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.error(key, "must be an object of string values")
        for name, item in value.items():
            self._check_text(f"{key}.{name}", name, what="its name")
            if env and (not name or "=" in name):
                raise self.error(key, f"{_shown(name)} is not a variable name: it must be "
                                      "non-empty and hold no '='")
            self._check_text(f"{key}.{name}", item)
        return value

    def _check_text(self, key: str, value: str, what: str = "it") -> None:
        """Text that can reach a program (argument, environment, path): no NUL, no lone
        surrogate (a ``\\ud800`` escape), as neither can be passed to it."""
        if "\0" in value:
            raise self.error(key, f"must not contain NUL characters, but {what} does: "
                                  f"{_excerpt(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self.error(key, f"is not valid Unicode text ({what} holds a lone surrogate): "
                                  f"{_excerpt(value)}") from None

    def count(self, key: str) -> int | None:
        value = self.body.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)
        ) or value < 0:
            raise self.error(key, f"must be a non-negative integer, got {_shown(value)}")
        if value != int(value):
            raise self.error(key, f"must be a whole number, got {_shown(value)}")
        if value > MAX_COUNT:
            raise self.error(key, f"must be at most {MAX_COUNT}, got {_shown(value)}")
        return int(value)

    def obj(self, key: str) -> dict[str, Any] | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"must be an object, got {_kind(value)}")
        return value

    def sub(self, key: str, body: dict[str, Any]) -> _Fields:
        return _Fields(body, self.index, f"{self.prefix}.{key}")


def _parse_deploy(f: _Fields) -> Deploy:
    net = f.body.get("net") or []
    if not isinstance(net, list) or not all(isinstance(n, dict) for n in net):
        raise f.error("net", "must be an array of objects")
    hosts = f.str_map("hosts") or {}
    return Deploy(
        net=tuple(net),
        hosts=hosts,
        volumes=f.body.get("volumes"),
        env=f.str_map("env", env=True) or {},
        progress=f.obj("progress"),
    )


def _parse_start(f: _Fields) -> Start:
    return Start(args=f.str_list("args"))


def _parse_run(f: _Fields) -> Run:
    entry_point = f.text("entry_point", required=True)
    assert entry_point is not None
    if not entry_point:
        raise f.error("entry_point", "must not be empty")
    capture_body = f.obj("capture")
    capture = None
    if capture_body is not None:
        c = f.sub("capture", capture_body)
        capture = Capture(stdout=_parse_mode(c, "stdout"), stderr=_parse_mode(c, "stderr"))
    return Run(entry_point=entry_point, args=f.str_list("args"), env=f.str_map("env", env=True),
               capture=capture)


def _parse_mode(f: _Fields, key: str) -> CaptureMode | None:
    body = f.obj(key)
    if body is None:
        return None
    if len(body) != 1:
        raise f.error(key, "must hold exactly one of 'atEnd' or 'stream'")
    ((mode, mode_body),) = body.items()
    if not isinstance(mode_body, dict):
        raise f.error(f"{key}.{mode}", f"must be an object, got {_kind(mode_body)}")
    m = f.sub(f"{key}.{mode}", mode_body)
    fmt_text = m.text("format")
    fmt = None
    if fmt_text is not None:
        if fmt_text not in _FORMAT_ALIASES:
            raise m.error("format", f"must be 'str' or 'bin', got {_shown(fmt_text)}")
        fmt = _FORMAT_ALIASES[fmt_text]
    if mode == "atEnd":
        parts = [p for p in _PART_KINDS if p in mode_body]
        unknown = set(mode_body) - {"format", *_PART_KINDS}
        if unknown:
            raise m.error(sorted(unknown)[0], "is not a capture option")
        if len(parts) > 1:
            raise m.error(parts[1], f"conflicts with {parts[0]!r}: give one of head, tail, headTail")
        if parts:
            limit = m.count(parts[0])
            if limit is None:
                raise m.error(parts[0], "must be a non-negative integer")
            return AtEnd(part=parts[0], limit=limit, format=fmt)
        return AtEnd(format=fmt)
    if mode == "stream":
        unknown = set(mode_body) - {"format", "limit"}
        if unknown:
            raise m.error(sorted(unknown)[0], "is not a capture option")
        return Stream(limit=m.count("limit"), format=fmt)
    raise f.error(f"{key}.{mode}", "unknown capture mode (expected 'atEnd' or 'stream')")


def _parse_transfer(f: _Fields) -> Transfer:
    src = f.text("from", required=True)
    dst = f.text("to", required=True)
    assert src is not None and dst is not None
    return Transfer(
        from_=src, to=dst, format=f.text("format"), depth=f.count("depth"),
        fileset=f.body.get("fileset"), progress=f.obj("progress"),
    )


def _parse_terminate(f: _Fields) -> Terminate:
    return Terminate()


def _parse_sign(f: _Fields) -> Sign:
    return Sign()


_PARSERS: dict[str, Callable[[_Fields], Command]] = {
    "deploy": _parse_deploy,
    "start": _parse_start,
    "run": _parse_run,
    "transfer": _parse_transfer,
    "terminate": _parse_terminate,
    "sign": _parse_sign,
}


def _kind(value: object) -> str:
    if isinstance(value, _BadNumber):
        return f"the number {value.text}"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(
                type(value), type(value).__name__)


def _excerpt(text: str) -> str:
    return ascii(text if len(text) <= 60 else text[:60] + "...")


def _shown(value: object) -> str:
    """A value from a batch for a message: short, whatever its size."""
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:60] + "...")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (bool, int, float, type(None), _BadNumber)):
        return repr(value)
    return _kind(value)
