"""``gftp server``: the GFTP helper other Golem SDKs start, on workgen's GFTP.

yapapi (and tools built like it) do not speak GFTP themselves: they start ``gftp server`` and
talk JSON-RPC 2.0 to it over its stdin and stdout, one request and one answer a line, in order.
The daemon package on PyPI ships no such program; this one is installed with workgen, so those
SDKs run against a yagna node with nothing else installed. It connects to the node's GSB
(``GSB_URL``, as the original does) and serves:

- ``version`` → a version string (the protocol level first, as callers parse it);
- ``publish {files}`` → ``[{file, url}]``: each file served by content hash (the same content
  published twice gets the same URL, as callers count on);
- ``close {urls}`` → ``["ok"|"error", …]``: stop serving those URLs (published or receiving);
- ``receive {output_file}`` → ``{file, url}``: a URL whose uploads land in ``output_file``;
- ``upload {file, url}`` → ``"ok"``: send a file to another node's receiving URL;
- ``shutdown`` → ``"ok"``: stop serving everything and exit.

Nothing but answers goes to stdout; diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..gsb import GsbClient, GsbError, open_gsb
from .publisher import Published, Receiver, open_upload, publish
from .transfer import GftpError, file_hash, upload

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "0.7.3"
"""The gftp version whose JSON-RPC this server answers (callers enable ``close`` from 0.7.3)."""
DEFAULT_GSB_URL = "tcp://127.0.0.1:7464"
MAX_LINE = 1 << 20
_IDENTITY = "/local/identity/Get"


class RpcError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class GftpServer:
    """The JSON-RPC methods, on one node's GSB."""

    def __init__(self, bus: GsbClient, node_id: str):
        self._bus = bus
        self._node_id = node_id
        self._published: dict[str, tuple[Published, int]] = {}  # url -> (published, count)
        self._receivers: dict[str, Receiver] = {}
        self.stopping = False

    async def call(self, method: str, params: Any) -> Any:
        handler = getattr(self, f"_rpc_{method}", None)
        if handler is None:
            raise RpcError(-32601, f"unknown method {method!r}")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(-32602, "params must be an object")
        try:
            return await handler(**params)
        except TypeError as exc:
            raise RpcError(-32602, f"{method}: {exc}") from exc
        except (GftpError, OSError, ValueError) as exc:
            raise RpcError(-32000, f"{method}: {exc}") from exc

    async def _rpc_version(self) -> str:
        return version_string()

    async def _rpc_publish(self, files: list[str]) -> list[dict[str, str]]:
        links = []
        for name in _strings(files, "files"):
            path = Path(name)
            digest = await asyncio.to_thread(file_hash, path)
            url = next((u for u, (p, _) in self._published.items() if u.endswith("/" + digest)),
                       None)
            if url is None:
                published = await publish(self._bus, self._node_id, path)
                url = published.url
                self._published[url] = (published, 1)
            else:
                published, count = self._published[url]
                self._published[url] = (published, count + 1)
            links.append({"file": name, "url": url})
        return links

    async def _rpc_close(self, urls: list[str]) -> list[str]:
        answers = []
        for url in _strings(urls, "urls"):
            if url in self._published:
                published, count = self._published[url]
                if count > 1:
                    self._published[url] = (published, count - 1)
                else:
                    del self._published[url]
                    await published.aclose()
                answers.append("ok")
            elif url in self._receivers:
                await self._receivers.pop(url).aclose()
                answers.append("ok")
            else:
                answers.append("error")
        return answers

    async def _rpc_receive(self, output_file: str) -> dict[str, str]:
        (name,) = _strings([output_file], "output_file")
        receiver = await open_upload(self._bus, self._node_id, Path(name))
        self._receivers[receiver.url] = receiver
        return {"file": name, "url": receiver.url}

    async def _rpc_upload(self, file: str, url: str) -> str:
        (name, target) = _strings([file, url], "file and url")
        await upload(self._bus, Path(name), target)
        return "ok"

    async def _rpc_shutdown(self) -> str:
        await self.aclose()
        self.stopping = True
        return "ok"

    async def aclose(self) -> None:
        items: list[Published | Receiver] = [p for p, _ in self._published.values()]
        items += self._receivers.values()
        self._published.clear()
        self._receivers.clear()
        for item in items:
            try:
                await item.aclose()
            except (GftpError, GsbError) as exc:
                log.warning("closing %s: %s", item.url, exc)


def version_string() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        ours = version("workgen")
    except PackageNotFoundError:
        ours = "unknown"
    return f"{PROTOCOL_VERSION} (workgen {ours})"


def _strings(values: Any, what: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise RpcError(-32602, f"{what} must be a list of non-empty strings")
    return list(values)


async def node_id_of(bus: GsbClient) -> str:
    """The node's default identity, asked of its identity service."""
    answer = await bus.call(_IDENTITY, "byDefault", timeout=10)
    node_id = answer.get("nodeId") if isinstance(answer, dict) else None
    if not isinstance(node_id, str):
        raise GftpError(f"{_IDENTITY} answered {answer!r}, not an identity")
    return node_id


async def serve(gsb_url: str, reader: asyncio.StreamReader, write: Any) -> None:
    """Answer requests from ``reader`` until it ends or ``shutdown``; ``write(bytes)`` sends."""
    async with open_gsb(gsb_url, name=f"gftp-{os.getpid()}") as bus:
        server = GftpServer(bus, await node_id_of(bus))
        try:
            while not server.stopping:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than the reader's limit
                    write(_error(None, -32600, f"request longer than {MAX_LINE} bytes"))
                    break
                if not line:
                    break
                if line.strip():
                    write(await _answer(server, line))
        finally:
            await server.aclose()


async def _answer(server: GftpServer, line: bytes) -> bytes:
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(None, -32700, f"not JSON: {exc}")
    if not isinstance(request, dict) or not isinstance(request.get("method"), str):
        return _error(None, -32600, "a request is an object with a method")
    rid = request.get("id")
    try:
        result = await server.call(request["method"], request.get("params"))
    except RpcError as exc:
        return _error(rid, exc.code, str(exc))
    return json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode() + b"\n"


def _error(rid: Any, code: int, message: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid,
                       "error": {"code": code, "message": message}}).encode() + b"\n"


async def _main_async(gsb_url: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    await serve(gsb_url, reader, write)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gftp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("server", help="serve JSON-RPC on stdin/stdout (as yapapi starts it)")
    args = parser.parse_args(argv)
    if args.version:
        print(version_string())
        return 0
    if args.command != "server":
        parser.print_usage(sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="gftp: %(levelname)s %(message)s")
    gsb_url = os.environ.get("GSB_URL", DEFAULT_GSB_URL)
    try:
        asyncio.run(_main_async(gsb_url))
    except (GsbError, GftpError, OSError) as exc:
        print(f"gftp: {exc} (is the yagna daemon at GSB_URL={gsb_url} running?)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
