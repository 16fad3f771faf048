"""The other Golem SDKs run against a devnet's Python providers, each with its own packages
(installed by scripts/setup.sh apart from ours): yapapi 0.13 from PyPI (its task API, files both
ways through workgen's ``gftp server``, streamed output kept in results) and golem-js 3 from npm
(its rental API, files both ways over the daemon's GSB, at its examples' price limits)."""

from __future__ import annotations

import datetime
import http.server
import json
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

INTEROP = Path(__file__).resolve().parents[2] / ".venv" / "interop"
YAPAPI_PYTHON = INTEROP / "yapapi" / "bin" / "python"
GOLEM_JS_MODULES = INTEROP / "golem-js" / "node_modules"
HERE = Path(__file__).parent
HELLO_IMAGE = "d646d7b93083d817846c2ae5c62c72ca0507782385a2e29291a3d376"


class _Registry(http.server.BaseHTTPRequestHandler):
    """Stands in for the image registry and an image host (offline): the SDKs look images up;
    the devnet's providers never fetch them (they run the host image)."""

    IMAGE = b"\0" * 1024

    def _body(self) -> bytes:
        if self.path.startswith("/v1/image/info"):
            port = self.server.server_address[1]
            url = f"http://127.0.0.1:{port}/hello.gvmi"
            return json.dumps({"http": url, "https": url, "sha3": HELLO_IMAGE,
                               "size": len(self.IMAGE)}).encode()
        return self.IMAGE

    def do_HEAD(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self._body())))
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.do_HEAD()
        self.wfile.write(self._body())

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


def run_requestor(argv: list[str], env: dict[str, str]) -> dict[str, str]:
    """Run an SDK's requestor; its ``DATE`` and ``OUT`` lines."""
    done = subprocess.run(argv, env=env, cwd=HERE, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines()
                 if line.startswith(("DATE ", "OUT ")))
    assert set(lines) == {"DATE", "OUT"}, done.stdout[-3000:] + done.stderr[-3000:]
    assert lines["DATE"].endswith(str(datetime.date.today().year)), lines
    return lines


@pytest.mark.timeout(200)
@pytest.mark.skipif(not YAPAPI_PYTHON.exists(), reason="scripts/setup.sh installs yapapi")
def test_yapapi_runs_its_task_api_with_files_both_ways(sdk_devnet: Devnet) -> None:
    with serve(_Registry) as url:
        env = devnet_env(sdk_devnet) | {"IMAGE_URL": f"{url}/hello.gvmi"}
        lines = run_requestor([str(YAPAPI_PYTHON), str(HERE / "yapapi_requestor.py")], env)
    assert lines["OUT"] == repr(b"SENT BY YAPAPI\n"), lines


@pytest.mark.timeout(300)
@pytest.mark.skipif(not YAPAPI_PYTHON.exists(), reason="scripts/setup.sh installs yapapi")
def test_a_yapapi_task_longer_than_the_debit_note_interval_completes(sdk_devnet: Devnet) -> None:
    """The devnet's providers send a debit note every 60 s; yapapi ends an agreement whose
    notes are payable without mid-agreement payments, or come too often."""
    with serve(_Registry) as url:
        env = devnet_env(sdk_devnet) | {"IMAGE_URL": f"{url}/hello.gvmi", "SLEEP": "70"}
        lines = run_requestor([str(YAPAPI_PYTHON), str(HERE / "yapapi_requestor.py")], env)
    assert lines["OUT"] == repr(b"SENT BY YAPAPI\n"), lines


@pytest.mark.timeout(200)
@pytest.mark.skipif(not GOLEM_JS_MODULES.exists(), reason="scripts/setup.sh installs golem-js")
def test_golem_js_rents_a_provider_and_moves_files_both_ways(sdk_devnet: Devnet) -> None:
    with serve(_Registry) as url:
        env = devnet_env(sdk_devnet) | {"GOLEM_REGISTRY_URL": url,
                                        "NODE_PATH": str(GOLEM_JS_MODULES)}
        lines = run_requestor(["node", str(HERE / "golem_js_requestor.cjs")], env)
    assert lines["OUT"] == json.dumps("SENT BY GOLEM-JS\n"), lines
