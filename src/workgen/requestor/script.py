"""``Script``: the commands a worker builds and ``yield``s for its activity to run.

Each command method returns an awaitable of that command's :class:`Result`; ``yield script``
gives back an awaitable of all of them. Commands that move data (``send_*``, ``download_*``) are
turned into ExeScript ``transfer`` commands when the script is sent: the backend's storage
publishes what is sent and receives what is downloaded, and the download's post-processing
(saving to a file, the size limit, ``on_download``, JSON decoding) runs once the batch is done.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from ..backends.base import Destination, Source, Storage
from ..protocol.exescript import (
    AtEnd, Capture, CaptureMode, Command, Deploy, Run, Start, Stream, Terminate, Transfer,
)

if TYPE_CHECKING:
    from .context import WorkContext


@dataclass(frozen=True)
class Result:
    """What one command of a script did."""

    index: int
    command: Command
    success: bool
    return_code: int | None
    stdout: str | bytes | None
    stderr: str | bytes | None
    message: str | None
    started_at: datetime | None
    finished_at: datetime
    data: Any = None
    """What a ``download_bytes`` (bytes) or ``download_json`` (the decoded value) fetched."""

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


Capturing = Literal["str", "bin"] | AtEnd | Stream | None
OnDownload = Callable[[Any], Awaitable[None] | None]


class Step:
    """One command of a script: how to build it, and what to do with its result."""

    def __init__(self, command: Command | None = None):
        self.command = command
        self.future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.sources: list[Source] = []
        self.destination: Destination | None = None

    async def build(self, storage: Storage) -> Command:
        assert self.command is not None
        return self.command

    async def finish(self, result: Result) -> Result:
        return result

    async def aclose(self) -> None:
        for source in self.sources:
            await source.aclose()
        if self.destination is not None:
            await self.destination.aclose()


class _Send(Step):
    def __init__(self, dst: str, *, path: Path | None = None, data: bytes | None = None):
        super().__init__()
        self._dst, self._path, self._data = dst, path, data

    async def build(self, storage: Storage) -> Command:
        if self._path is not None:
            source = await storage.publish_file(self._path)
        else:
            assert self._data is not None
            source = await storage.publish_bytes(self._data)
        self.sources.append(source)
        self.command = Transfer(source.url, _container(self._dst))
        return self.command


class _Download(Step):
    def __init__(self, src: str, *, to_path: Path | None = None, decode_json: bool = False,
                 on_download: OnDownload | None = None, limit: int | None = None):
        super().__init__()
        self._src, self._to_path, self._json = src, to_path, decode_json
        self._on_download, self._limit = on_download, limit

    async def build(self, storage: Storage) -> Command:
        self.destination = await storage.new_destination(PurePosixPath(self._src).name or "out")
        self.command = Transfer(_container(self._src), self.destination.url)
        return self.command

    async def finish(self, result: Result) -> Result:
        assert self.destination is not None
        if self._to_path is not None:
            self._to_path.parent.mkdir(parents=True, exist_ok=True)
            await self.destination.save_to(self._to_path)
            return result
        content: Any = await self.destination.read_bytes(self._limit)
        if self._json:
            content = json.loads(content)
        if self._on_download is not None:
            outcome = self._on_download(content)
            if inspect.isawaitable(outcome):
                await outcome
        return Result(**{**result.__dict__, "data": content})


def _container(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"remote paths are absolute container paths, like /golem/input/x; "
                         f"got {path!r}")
    return f"container:{path}"


def _capture(value: Capturing, default: CaptureMode) -> CaptureMode | None:
    if value is None:
        return default
    if isinstance(value, (AtEnd, Stream)):
        return value
    if value in ("str", "bin"):
        return AtEnd(format=value) if isinstance(default, AtEnd) else Stream(format=value)
    raise ValueError(f"capture must be 'str', 'bin', AtEnd(...) or Stream(...), got {value!r}")


class Script:
    """A batch of commands for one activity, built by a worker from its ``WorkContext``."""

    def __init__(self, context: WorkContext, timeout: float | None = None,
                 wait_for_results: bool = True, *, stream_output: bool = False):
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.context = context
        """The context it was made by: only that context's activity runs it."""
        self.timeout = timeout
        self.wait_for_results = wait_for_results
        self._stream_output = stream_output
        self._steps: list[Step] = []
        self._sent = False

    @property
    def sent(self) -> bool:
        """Whether the script was yielded already: a script runs once."""
        return self._sent

    def seal(self) -> list[Step]:
        """Its steps, for running; the script takes no more commands and runs only once."""
        if self._sent:
            raise RuntimeError(f"{self!r} was already sent: a script runs once; make a new "
                               "one with context.new_script()")
        self._sent = True
        return self._steps

    def __repr__(self) -> str:
        return f"Script({len(self._steps)} commands, activity={self.context.id})"

    def _add(self, step: Step) -> asyncio.Future[Result]:
        if self._sent:
            raise RuntimeError("this script was already yielded; build a new one with "
                               "context.new_script()")
        self._steps.append(step)
        return step.future

    # -- commands ----------------------------------------------------------------------------

    def add(self, command: Command) -> asyncio.Future[Result]:
        """Add a raw ExeScript command (from :mod:`workgen.protocol.exescript`)."""
        return self._add(Step(command))

    def deploy(self, **kwargs: Any) -> asyncio.Future[Result]:
        return self._add(Step(Deploy(**kwargs)))

    def start(self, *args: str) -> asyncio.Future[Result]:
        return self._add(Step(Start(tuple(args))))

    def terminate(self) -> asyncio.Future[Result]:
        return self._add(Step(Terminate()))

    def run(
        self,
        cmd: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        stdout: Capturing = None,
        stderr: Capturing = None,
    ) -> asyncio.Future[Result]:
        """Run ``cmd`` with ``args`` (no shell unless you run one) and ``env`` added.

        ``stdout``/``stderr``: ``"str"`` (default) or ``"bin"`` for the whole output in the
        result, or an explicit :class:`AtEnd`/:class:`Stream` capture mode. With
        ``Golem(stream_output=True)`` the default is to stream output live instead.
        """
        for arg in (cmd, *args):
            if not isinstance(arg, str):
                raise TypeError(f"run() takes strings, got {arg!r}")
        default: CaptureMode = Stream() if self._stream_output else AtEnd()
        capture = Capture(stdout=_capture(stdout, default), stderr=_capture(stderr, default))
        return self._add(Step(Run(cmd, tuple(args), env=dict(env) if env else None,
                                   capture=capture)))

    def send_file(self, src: str | Path, dst: str) -> asyncio.Future[Result]:
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"send_file: no such file {str(src)!r}")
        return self._add(_Send(dst, path=path.resolve()))

    def send_bytes(self, dst: str, data: bytes) -> asyncio.Future[Result]:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_bytes needs bytes, got {type(data).__name__}")
        return self._add(_Send(dst, data=bytes(data)))

    def send_json(self, dst: str, data: Any) -> asyncio.Future[Result]:
        return self._add(_Send(dst, data=json.dumps(data).encode()))

    upload_file = send_file
    upload_bytes = send_bytes
    upload_json = send_json

    def download_file(self, src: str, dst: str | Path) -> asyncio.Future[Result]:
        return self._add(_Download(src, to_path=Path(dst)))

    def download_bytes(self, src: str, on_download: OnDownload | None = None,
                       limit: int | None = None) -> asyncio.Future[Result]:
        """Fetch a file's bytes: in the result's ``data``, and passed to ``on_download``.

        A file bigger than ``limit`` fails the command with :class:`DownloadLimitExceeded`.
        """
        return self._add(_Download(src, on_download=on_download, limit=limit))

    def download_json(self, src: str, on_download: OnDownload | None = None,
                      limit: int | None = None) -> asyncio.Future[Result]:
        return self._add(_Download(src, decode_json=True, on_download=on_download, limit=limit))

    @property
    def commands(self) -> Sequence[Command | None]:
        return [s.command for s in self._steps]
