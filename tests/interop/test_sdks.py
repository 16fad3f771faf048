"""The other Golem SDKs run against a devnet's Python providers, each with its own packages
(installed by scripts/setup.sh apart from ours): yapapi 0.13 from PyPI (its task API, files both
ways through workgen's ``gftp server``, streamed output kept in results, its services API, a
requestor killed mid-agreement) and golem-js 3 from npm (its rental API, files both ways over
the daemon's GSB, at its examples' price limits) with its task executor 2 (its README's
example).

The devnet's providers send a debit note every :data:`INTERVAL` seconds and offer
:data:`ACCEPT_TIMEOUT` seconds to accept one (yapapi takes the provider's deadline, down to its
own minimum of 30 s), so a requestor that vanishes loses its agreements within about their sum.
"""

from __future__ import annotations

import datetime
import json
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.http import serve
from support.images import build_tiny, shared_dir
from support.sdks import OfflineRegistry, devnet_env
from support.networks import stop_test_devnet
from workgen.devnet import Devnet
from workgen.devnet.network import registry_url
from workgen.images import ImageFiles

INTEROP = Path(__file__).resolve().parents[2] / ".venv" / "interop"
YAPAPI_PYTHON = INTEROP / "yapapi" / "bin" / "python"
GOLEM_JS_MODULES = INTEROP / "golem-js" / "node_modules"
HERE = Path(__file__).parent
INTERVAL = 10.0
ACCEPT_TIMEOUT = 30.0


INTEROP_TAG = "workgen/interop-tiny:1"


@pytest.fixture(scope="module")
def sdk_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """A devnet as `workgen devnet up` makes it for other SDKs: it serves an image store (with
    ``INTEROP_TAG`` in it) as its registry, and its providers run the images those SDKs name
    that they can't get (Golem's public ones, offline) on the host image."""
    net = Devnet(tmp_path_factory.mktemp("sdk-devnet"))
    net.up(2)
    store = ImageFiles(tmp_path_factory.mktemp("sdk-images"))
    build_tiny(store, INTEROP_TAG, marker="interop")
    with shared_dir("workgen-sdk-cache-") as cache:
        try:
            net.serve_images(store.root)
            net.start_providers(dev_images=True, debit_note_interval=INTERVAL,
                                accept_timeout=ACCEPT_TIMEOUT, image_cache=cache)
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


def run_node_requestor(devnet: Devnet, script: str) -> dict[str, str]:
    """Run a golem-js requestor with golem-js's own packages, its registry look-ups answered
    by the offline stand-in."""
    with serve(OfflineRegistry) as url:
        env = devnet_env(devnet) | {"GOLEM_REGISTRY_URL": url, "NODE_PATH": str(GOLEM_JS_MODULES)}
        return run_requestor(["node", str(HERE / script)], env)


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
    """yapapi ends an agreement whose notes are payable without mid-agreement payments, or come
    too often; the provider ends one whose notes go unaccepted. Neither happens here."""
    with serve(OfflineRegistry) as url:
        env = devnet_env(sdk_devnet) | {"IMAGE_URL": f"{url}/hello.gvmi",
                                        "SLEEP": str(int(2.5 * INTERVAL))}
        lines = run_requestor([str(YAPAPI_PYTHON), str(HERE / "yapapi_requestor.py")], env)
    assert lines["OUT"] == repr(b"SENT BY YAPAPI\n"), lines


@pytest.mark.timeout(200)
@pytest.mark.skipif(not YAPAPI_PYTHON.exists(), reason="scripts/setup.sh installs yapapi")
def test_yapapi_resolves_a_tag_through_the_devnet_registry_and_runs_in_that_image(
        sdk_devnet: Devnet) -> None:
    env = devnet_env(sdk_devnet) | {"IMAGE_TAG": INTEROP_TAG,
                                    "REGISTRY_URL": env_registry(sdk_devnet)}
    lines = run_requestor([str(YAPAPI_PYTHON), str(HERE / "yapapi_requestor.py")], env)
    assert lines["OUT"] == repr(b"SENT BY YAPAPI\n"), lines


@pytest.mark.timeout(200)
@pytest.mark.skipif(not GOLEM_JS_MODULES.exists(), reason="scripts/setup.sh installs golem-js")
def test_golem_js_resolves_a_tag_through_the_devnet_registry_and_runs_in_that_image(
        sdk_devnet: Devnet) -> None:
    """golem-js reads GOLEM_REGISTRY_URL from devnet.env as it is, and the provider downloads
    the image from the link the registry gave."""
    env = devnet_env(sdk_devnet) | {"IMAGE_TAG": INTEROP_TAG,
                                    "NODE_PATH": str(GOLEM_JS_MODULES)}
    assert env["GOLEM_REGISTRY_URL"] == env_registry(sdk_devnet)
    lines = run_requestor(["node", str(HERE / "golem_js_requestor.cjs")], env)
    assert lines["OUT"] == json.dumps("SENT BY GOLEM-JS\n"), lines


def env_registry(devnet: Devnet) -> str:
    url = registry_url(devnet.state())
    assert url is not None
    return url


@pytest.mark.timeout(200)
@pytest.mark.skipif(not GOLEM_JS_MODULES.exists(), reason="scripts/setup.sh installs golem-js")
def test_golem_js_rents_a_provider_and_moves_files_both_ways(sdk_devnet: Devnet) -> None:
    lines = run_node_requestor(sdk_devnet, "golem_js_requestor.cjs")
    assert lines["OUT"] == json.dumps("SENT BY GOLEM-JS\n"), lines


@pytest.mark.timeout(200)
@pytest.mark.skipif(not (GOLEM_JS_MODULES / "@golem-sdk" / "task-executor").exists(),
                    reason="scripts/setup.sh installs golem-js's task executor")
def test_golem_js_task_executor_runs_its_readme_example(sdk_devnet: Devnet) -> None:
    lines = run_node_requestor(sdk_devnet, "task_executor_requestor.cjs")
    assert lines["OUT"] == json.dumps("Hello World\n"), lines


@pytest.mark.timeout(300)
@pytest.mark.skipif(not YAPAPI_PYTHON.exists(), reason="scripts/setup.sh installs yapapi")
def test_yapapi_runs_a_hello_style_service(sdk_devnet: Devnet) -> None:
    """Its services API: ``start`` leaves a loop running in the background, ``run`` reads what
    it writes, and the cluster stops cleanly."""
    with serve(OfflineRegistry) as url:
        env = devnet_env(sdk_devnet) | {"IMAGE_URL": f"{url}/hello.gvmi"}
        done = subprocess.run([str(YAPAPI_PYTHON), str(HERE / "yapapi_service.py")], env=env,
                              cwd=HERE, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    states = [line.split()[1] for line in lines if line.startswith("STATE ")]
    dates = [line.removeprefix("DATE ") for line in lines if line.startswith("DATE ")]
    assert "running" in states, lines
    assert len(dates) >= 3 and all(d.endswith(str(datetime.date.today().year)) for d in dates), \
        lines
    assert lines[-1] == "STOPPED terminated", lines


@pytest.mark.timeout(300)
@pytest.mark.skipif(not YAPAPI_PYTHON.exists(), reason="scripts/setup.sh installs yapapi")
def test_a_killed_requestors_providers_come_back_for_the_next_one(sdk_devnet: Devnet) -> None:
    """A yapapi requestor holding every provider is killed (no termination, no more debit-note
    acceptances); the providers break its agreements at the acceptance deadline, and a new
    requestor gets one."""
    with serve(OfflineRegistry) as url:
        env = devnet_env(sdk_devnet) | {"IMAGE_URL": f"{url}/hello.gvmi"}
        with subprocess.Popen(
                [str(YAPAPI_PYTHON), str(HERE / "yapapi_requestor.py")],
                env=env | {"TASKS": "2", "SLEEP": "600"}, cwd=HERE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True) as first:
            try:
                running = _lines_starting(first, "RUNNING ", 2, timeout=120)
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait()
        assert len(set(running)) == 2, running  # both providers held
        killed = time.monotonic()
        lines = run_requestor([str(YAPAPI_PYTHON), str(HERE / "yapapi_requestor.py")], env)
        waited = time.monotonic() - killed
    assert lines["OUT"] == repr(b"SENT BY YAPAPI\n"), lines
    print(f"a provider came back {waited:.1f} s after its requestor was killed")


def _lines_starting(proc: subprocess.Popen[str], prefix: str, count: int, *,
                    timeout: float) -> list[str]:
    """The first ``count`` lines of ``proc`` starting with ``prefix`` (without it)."""
    assert proc.stdout is not None
    found: list[str] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"only {found} in {timeout:g} s"
        line = proc.stdout.readline()
        assert line, f"the requestor ended early (exit {proc.wait()}), after {found}"
        if line.startswith(prefix):
            found.append(line.removeprefix(prefix).strip())
    return found
