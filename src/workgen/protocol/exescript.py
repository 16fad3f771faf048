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
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

Format: TypeAlias = Literal["str", "bin"]
PartKind: TypeAlias = Literal["head", "tail", "headTail"]

# yagna's serde model accepts the spec's long spellings as aliases of the short ones.
_FORMAT_ALIASES: dict[str, Format] = {"str": "str", "string": "str", "bin": "bin", "binary": "bin"}
_PART_KINDS: tuple[PartKind, ...] = ("head", "tail", "headTail")


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
            where.append(f"field {field!r}")
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


def parse_batch(batch: str | Sequence[Any]) -> list[Command]:
    """Parse a batch from its JSON text or decoded list; raises :class:`BatchFormatError`."""
    if isinstance(batch, str):
        try:
            batch = json.loads(batch)
        except json.JSONDecodeError as exc:
            raise BatchFormatError(f"not valid JSON: {exc}") from exc
    if not isinstance(batch, list):
        raise BatchFormatError(f"a batch is a JSON array of commands, got {_kind(batch)}")
    if not batch:
        raise BatchFormatError("a batch needs at least one command")
    return [parse_command(item, index) for index, item in enumerate(batch)]


def parse_command(obj: Any, index: int = 0) -> Command:
    if not isinstance(obj, dict) or len(obj) != 1:
        raise BatchFormatError(
            "a command is an object with exactly one key, the command name", index=index
        )
    ((name, body),) = obj.items()
    parser = _PARSERS.get(name)
    if parser is None:
        known = ", ".join(sorted(_PARSERS))
        raise BatchFormatError(f"unknown command {name!r} (known: {known})", index=index)
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
        return value

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self.body.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be an array of strings")
        return tuple(value)

    def str_map(self, key: str) -> dict[str, str] | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.error(key, "must be an object of string values")
        return value

    def count(self, key: str) -> int | None:
        value = self.body.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise self.error(key, f"must be a non-negative integer, got {value!r}")
        if value != int(value):
            raise self.error(key, f"must be a whole number, got {value!r}")
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
        env=f.str_map("env") or {},
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
    return Run(entry_point=entry_point, args=f.str_list("args"), env=f.str_map("env"),
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
            raise m.error("format", f"must be 'str' or 'bin', got {fmt_text!r}")
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
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)
