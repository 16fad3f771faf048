"""The local image store served with the Golem image registry's HTTP API, on loopback.

Requestor SDKs resolve images through a registry (workgen's yagna backend and golem-js read
``GOLEM_REGISTRY_URL``; yapapi takes ``vm.repo(repository_url=...)``), so serving the store this
way makes its images reachable by tag or hash from any of them, and providers download them from
the ``http`` link the answer carries:

* ``GET /v1/image/info?tag=<tag>`` or ``?hash=<sha3>`` (plus the SDKs' ``count=true`` or
  ``dev=true``, ignored): ``{"tag", "sha3", "size", "http", "https"}``, or 404;
* ``GET|HEAD /download/<sha3>``, and ``/v1/image/download?hash=|tag=``: the GVMI file;
* ``GET /image.<sha3>.link``: the file's URL as text (older clients).

There is no TLS on loopback: ``https`` carries the same plain URL.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .store import HASH_RE, ImageFiles


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _RegistryServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, *, head: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        store = self.server.store
        if url.path == "/v1/image/info":
            tag, image_hash = query.get("tag"), query.get("hash")
            if (tag is None) == (image_hash is None):
                return self._json(400, {"error": "give exactly one of tag= and hash="}, head)
            found = store.resolve(tag if tag is not None else image_hash or "")
            if found is None:
                return self._json(404, {"error": f"no image {tag or image_hash}"}, head)
            return self._json(200, self._info(found, tag), head)
        if url.path.startswith("/download/"):
            return self._file(url.path.removeprefix("/download/"), head)
        if url.path == "/v1/image/download":
            name = query.get("hash") or query.get("tag") or ""
            return self._file(store.resolve(name) or "", head)
        if url.path.startswith("/image.") and url.path.endswith(".link"):
            image_hash = url.path.removeprefix("/image.").removesuffix(".link")
            if store.path_of(image_hash) is None:
                return self._text(404, "no such image\n", head)
            return self._text(200, self._link(image_hash), head)
        self._json(404, {"error": f"no such endpoint {url.path}"}, head)

    def _link(self, image_hash: str) -> str:
        return f"{self.server.base_url}/download/{image_hash}"

    def _info(self, image_hash: str, tag: str | None) -> dict[str, Any]:
        path = self.server.store.path_of(image_hash)
        tags = [t for t, h in self.server.store.tags().items() if h == image_hash]
        link = self._link(image_hash)
        return {"tag": tag or (tags[0] if tags else None), "sha3": image_hash,
                "size": path.stat().st_size if path else None, "http": link, "https": link}

    def _file(self, image_hash: str, head: bool) -> None:
        path = self.server.store.path_of(image_hash) if HASH_RE.fullmatch(image_hash) else None
        if path is None:
            return self._text(404, "no such image\n", head)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if not head:
                try:
                    shutil.copyfileobj(f, self.wfile, 1 << 20)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

    def _json(self, status: int, body: dict[str, Any], head: bool) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", head)

    def _text(self, status: int, body: str, head: bool) -> None:
        self._send(status, body.encode(), "text/plain; charset=utf-8", head)

    def _send(self, status: int, body: bytes, kind: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _RegistryServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: ImageFiles, verbose: bool):
        super().__init__(address, _Handler)
        self.store = store
        self.verbose = verbose
        host, port = self.server_address[:2]
        self.base_url = f"http://{host!s}:{port}"


class RegistryServer:
    """Serves ``store``; ``url`` is its address once made (``port=0`` picks a free port)."""

    def __init__(self, store: ImageFiles, *, host: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False):
        self._server = _RegistryServer((host, port), store, verbose)
        self.url = self._server.base_url

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @contextmanager
    def running(self) -> Iterator[str]:
        """Serve in a background thread for the block; yields the URL."""
        thread = threading.Thread(target=self.serve_forever, name="image-registry", daemon=True)
        thread.start()
        try:
            yield self.url
        finally:
            self.close()
            thread.join()
