"""yapapi, installed from PyPI in an environment of its own, runs against the devnet's Python
providers: its task API, files both ways through workgen's ``gftp server``, streamed output
kept in results (yapapi's ``run`` captures as a stream)."""

from __future__ import annotations

import http.server
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.http import serve
from support.networks import stop_test_devnet
from workgen.devnet import Devnet

YAPAPI_PYTHON = Path(__file__).resolve().parents[2] / ".venv" / "interop" / "yapapi" / "bin" / \
    "python"
REQUESTOR = Path(__file__).with_name("yapapi_requestor.py")

pytestmark = pytest.mark.skipif(not YAPAPI_PYTHON.exists(),
                                reason="yapapi's environment is made by scripts/setup.sh")


class _Image(http.server.BaseHTTPRequestHandler):
    """Stands in for an image host: yapapi looks the URL up; the providers never fetch it."""

    BODY = b"\0" * 1024

    def do_HEAD(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.do_HEAD()
        self.wfile.write(self.BODY)

    def log_message(self, *args: Any) -> None:
        pass


def devnet_env(devnet: Devnet) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YAGNA_", "GSB_"))}
    for line in devnet.env_path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0].replace("$PATH", env.get("PATH", ""))
    return env


@pytest.fixture(scope="module")
def sdk_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """A devnet as `workgen devnet up` makes it for other SDKs: its providers run the images
    those SDKs name (which they don't have) on the host image."""
    net = Devnet(tmp_path_factory.mktemp("sdk-devnet"))
    net.up(2)
    try:
        net.start_providers(dev_images=True)
        yield net
    finally:
        stop_test_devnet(net)


@pytest.mark.timeout(200)
def test_yapapi_runs_its_task_api_with_files_both_ways(sdk_devnet: Devnet) -> None:
    with serve(_Image) as url:
        env = devnet_env(sdk_devnet) | {"IMAGE_URL": f"{url}/hello.gvmi"}
        done = subprocess.run([str(YAPAPI_PYTHON), str(REQUESTOR)], env=env, cwd=REQUESTOR.parent,
                              capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines()
                 if line.startswith(("DATE ", "OUT ")))
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    assert lines["DATE"].endswith(str(__import__("datetime").date.today().year)), lines
    assert lines["OUT"] == repr(b"SENT BY YAPAPI\n"), lines
