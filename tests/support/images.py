"""Small real images for tests: a root filesystem of the host's own programs (the shell and a few
coreutils, with the libraries they link) plus a program that exists only in the image."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support.http import serve
from workgen.images import BuiltImage, ImageFiles, ImageMetadata, build_image
from workgen.provider.exeunit.unit import ExeUnit, ExeUnitConfig
from workgen.provider.images import FetchPolicy, GvmiImage

PROGRAMS = ("/bin/sh", "/usr/bin/cat", "/usr/bin/date", "/usr/bin/echo", "/usr/bin/env",
            "/usr/bin/ls", "/usr/bin/pwd", "/usr/bin/sleep", "/usr/bin/stat", "/usr/bin/id",
            "/usr/bin/tr")
ONLY_IN_IMAGE = "/usr/local/bin/only-in-image"
"""Prints ``only in the image: $GREETING`` (not a program of the host)."""
SCRIPT = f"{ONLY_IN_IMAGE}; cat /etc/image-marker; echo; pwd"


def _copy(root: Path, path: str) -> None:
    real = os.path.realpath(path)
    target = root / real.lstrip("/")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, target)
    if real != path:
        link = root / path.lstrip("/")
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(real)


def make_root(root: Path, marker: str = "") -> Path:
    """A runnable root filesystem in ``root``; ``marker`` goes into a file, so that roots made
    with different markers are different images."""
    for program in PROGRAMS:
        _copy(root, program)
        linked = subprocess.run(["ldd", os.path.realpath(program)], capture_output=True,
                                text=True, check=True).stdout
        for line in linked.splitlines():
            fields = line.split()
            if "=>" in fields and fields[fields.index("=>") + 1].startswith("/"):
                _copy(root, fields[fields.index("=>") + 1])
            elif fields and fields[0].startswith("/"):
                _copy(root, fields[0])
    tool = root / ONLY_IN_IMAGE.lstrip("/")
    tool.parent.mkdir(parents=True, exist_ok=True)
    tool.write_text('#!/bin/sh\necho "only in the image: $GREETING"\n')
    tool.chmod(0o755)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "image-marker").write_text(marker or os.urandom(8).hex())
    return root


def build_tiny(store: ImageFiles, tag: str | None = None, *, marker: str = "",
               metadata: ImageMetadata | None = None, extra: dict[str, bytes] | None = None
               ) -> BuiltImage:
    with tempfile.TemporaryDirectory() as work:
        root = make_root(Path(work) / "root", marker)
        for name, data in (extra or {}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        return build_image(root, metadata or ImageMetadata(env=("GREETING=hello",)),
                           tags=[tag] if tag else [], store=store)


@contextlib.contextmanager
def shared_dir(prefix: str) -> Iterator[Path]:
    """A directory other users can pass through (sandboxes run as users of their own), removed
    afterwards; pytest's own temporary directories are private to root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def deploy_and_run(image: GvmiImage, command: str = SCRIPT) -> list[Any]:
    """Run deploy, start and ``sh -c command`` in a fresh activity; its results."""
    async with ExeUnit(config=ExeUnitConfig(rootfs=image)) as unit:
        batch = unit.exec(json.dumps([{"deploy": {}}, {"start": {}},
                                      {"run": {"entry_point": "/bin/sh",
                                               "args": ["-c", command]}}]))
        return await unit.results(batch, 2, timeout=60)


class Files(http.server.BaseHTTPRequestHandler):
    """Serves ``routes`` (path -> bytes); ``lie`` announces more bytes than it sends; counts
    requests."""

    routes: dict[str, bytes] = {}
    redirects: dict[str, str] = {}
    lie = False
    hits: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.routes.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data) * (2 if self.lie else 1)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True


def files_server(routes: dict[str, bytes], **attrs: Any) -> Any:
    handler = type("Handler", (Files,), {"routes": routes, "hits": [], "redirects": {},
                                         **attrs})
    return handler, serve(handler)


def loopback_policy(url: str, **kw: Any) -> FetchPolicy:
    return FetchPolicy(sources=(url,), **kw)
