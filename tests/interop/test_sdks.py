"""The other Golem SDKs run against a devnet's Python providers, each with its own packages
(installed by scripts/setup.sh apart from ours): yapapi 0.13 from PyPI (its task API, files both
ways through workgen's ``gftp server``, streamed output kept in results) and golem-js 3 from npm
(its rental API, files both ways over the daemon's GSB, at its examples' price limits)."""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.http import serve
from support.sdks import OfflineRegistry, devnet_env
from support.networks import stop_test_devnet
from workgen.devnet import Devnet

INTEROP = Path(__file__).resolve().parents[2] / ".venv" / "interop"
YAPAPI_PYTHON = INTEROP / "yapapi" / "bin" / "python"
GOLEM_JS_MODULES = INTEROP / "golem-js" / "node_modules"
HERE = Path(__file__).parent


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
    with serve(OfflineRegistry) as url:
        env = devnet_env(sdk_devnet) | {"IMAGE_URL": f"{url}/hello.gvmi"}
        lines = run_requestor([str(YAPAPI_PYTHON), str(HERE / "yapapi_requestor.py")], env)
    assert lines["OUT"] == repr(b"SENT BY YAPAPI\n"), lines


@pytest.mark.timeout(300)
@pytest.mark.skipif(not YAPAPI_PYTHON.exists(), reason="scripts/setup.sh installs yapapi")
def test_a_yapapi_task_longer_than_the_debit_note_interval_completes(sdk_devnet: Devnet) -> None:
    """The devnet's providers send a debit note every 60 s; yapapi ends an agreement whose
    notes are payable without mid-agreement payments, or come too often."""
    with serve(OfflineRegistry) as url:
        env = devnet_env(sdk_devnet) | {"IMAGE_URL": f"{url}/hello.gvmi", "SLEEP": "70"}
        lines = run_requestor([str(YAPAPI_PYTHON), str(HERE / "yapapi_requestor.py")], env)
    assert lines["OUT"] == repr(b"SENT BY YAPAPI\n"), lines


@pytest.mark.timeout(200)
@pytest.mark.skipif(not GOLEM_JS_MODULES.exists(), reason="scripts/setup.sh installs golem-js")
def test_golem_js_rents_a_provider_and_moves_files_both_ways(sdk_devnet: Devnet) -> None:
    with serve(OfflineRegistry) as url:
        env = devnet_env(sdk_devnet) | {"GOLEM_REGISTRY_URL": url,
                                        "NODE_PATH": str(GOLEM_JS_MODULES)}
        lines = run_requestor(["node", str(HERE / "golem_js_requestor.cjs")], env)
    assert lines["OUT"] == json.dumps("SENT BY GOLEM-JS\n"), lines
