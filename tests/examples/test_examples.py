"""Every example runs as a user would run it, as its own process, and does what it says."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from support.images import shared_dir

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


BACKENDS = ["local", pytest.param("yagna", marks=pytest.mark.timeout(300))]


def run_example(*args: str, cwd: Path, timeout: float = 120, backend: str = "local",
                devnet: Path | None = None, images: Path | None = None,
                image_cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "workgen.cli.main", "run", *args[:1], "--backend", backend]
    if devnet is not None:
        command += ["--devnet-dir", str(devnet)]
    command += ["--", *args[1:]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YAGNA_", "GSB_"))}
    if images is not None:
        env["WORKGEN_IMAGES"] = str(images)
    if image_cache is not None:
        env["WORKGEN_IMAGE_CACHE"] = str(image_cache)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)


@pytest.fixture
def where(request: pytest.FixtureRequest, image_store_dir: Path) -> Iterator[dict[str, object]]:
    """Where an example runs, with the session's image store (which the devnet serves) and an
    image cache of its own."""
    backend = request.param
    with shared_dir("workgen-example-cache-") as cache:
        found: dict[str, object] = {"backend": backend, "images": image_store_dir,
                                    "image_cache": cache}
        if backend == "yagna":
            found["devnet"] = request.getfixturevalue("test_devnet").directory
        yield found


@pytest.mark.parametrize("where", BACKENDS, indirect=True)
def test_hello_prints_the_provider_s_date(tmp_path: Path, where: dict[str, object]) -> None:
    done = run_example(str(EXAMPLES / "hello.py"), cwd=tmp_path, **where)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    assert re.search(r"\b\d\d:\d\d:\d\d\b.*\b20\d\d\b", done.stdout), done.stdout
    assert "1 accepted" in done.stderr


@pytest.mark.parametrize("where", BACKENDS, indirect=True)
def test_retries_example_retries_a_wrong_answer_and_reports_bad_input(
        tmp_path: Path, where: dict[str, object]) -> None:
    done = run_example(str(EXAMPLES / "retries.py"), cwd=tmp_path, **where)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "7^2 = 49 (attempts: 2)" in lines
    assert {"2^2 = 4 (attempts: 1)", "3^2 = 9 (attempts: 1)", "11^2 = 121 (attempts: 1)"} <= set(lines)
    assert any(line.startswith("failed: 'twelve': bad input") for line in lines)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", BACKENDS, indirect=True)
def test_render_example_makes_an_animation_from_frames_rendered_on_providers(
        tmp_path: Path, where: dict[str, object]) -> None:
    out = tmp_path / "out"
    done = run_example(str(EXAMPLES / "render.py"), "--frames", "6", "--size", "96x72",
                       "--out", str(out), cwd=tmp_path, timeout=280, **where)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    with Image.open(out / "animation.gif") as gif:
        assert gif.n_frames == 6 and gif.size == (96, 72)
    frames = sorted(out.glob("frame-*.png"))
    assert len(frames) == 6
    # The scene turns: frames differ.
    with Image.open(frames[0]) as first, Image.open(frames[3]) as fourth:
        assert first.tobytes() != fourth.tobytes()


CTRL_C_SCRIPT = """
import asyncio
from workgen import Golem, LocalNetwork, Task, vm

async def worker(context, tasks):
    async for task in tasks:
        script = context.new_script()
        script.run("/bin/sleep", "0.2")
        yield script
        task.accept_result()
        print("accepted", flush=True)

async def main():
    async with Golem(budget=1, backend=LocalNetwork(providers=2)) as golem:
        async for _ in golem.execute_tasks(worker, range(10_000), payload=vm.repo()):
            pass

asyncio.run(main())
"""


def test_ctrl_c_ends_a_run_within_seconds_and_settles_payments(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "accepted\n"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in stderr
    summary = stderr[stderr.index("workgen:"):]
    assert "accepted" in summary
    assert re.search(r"cost: [0-9.]+ tGLM \(2 invoices[;)]", summary), summary
    assert "unpaid" not in summary


@pytest.mark.parametrize("where", BACKENDS, indirect=True)
def test_service_http_example_talks_to_a_server_inside_its_instance(
        tmp_path: Path, where: dict[str, object]) -> None:
    done = run_example(str(EXAMPLES / "service_http.py"), cwd=tmp_path, **where)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "GET / -> 200 hello from the instance" in lines
    assert "GET /missing -> 404 File not found" in lines
    assert "the server answered 3 requests" in lines
    assert lines[-1].startswith("instance terminated on ")
    assert "1 service instance" in done.stderr and "(1 invoice)" in done.stderr


@pytest.mark.parametrize("where", BACKENDS, indirect=True)
def test_service_cluster_example_counts_words_across_its_instances(
        tmp_path: Path, where: dict[str, object]) -> None:
    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"line {i} of some words here" for i in range(100)) + "\n")
    done = run_example(str(EXAMPLES / "service_cluster.py"), str(text), "--instances", "2",
                       cwd=tmp_path, **where)  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    assert f"{len(text.read_text().split())} words in 5 chunks" in done.stdout.splitlines()
    assert done.stdout.count(" ran on ") == 2
    assert "2 service instances" in done.stderr and "(2 invoices)" in done.stderr


CTRL_C_SERVICE = """
import asyncio
from workgen import Golem, Service, vm

class Loop(Service):
    @staticmethod
    async def get_payload():
        return await vm.repo()

    async def start(self):
        async for script in super().start():
            yield script
        script = self._ctx.new_script()
        script.run("/bin/sh", "-c", "while true; do sleep 0.1; done &")
        yield script
        print("running", flush=True)

async def main():
    async with Golem(budget=1) as golem:  # the backend \'workgen run\' names
        await golem.run_service(Loop, num_instances=2)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("where", BACKENDS, indirect=True)
def test_ctrl_c_ends_a_service_run_cleanly(tmp_path: Path, where: dict[str, object]) -> None:
    script = tmp_path / "loop.py"
    script.write_text(CTRL_C_SERVICE)
    command = [sys.executable, "-m", "workgen.cli.main", "run", str(script),
               "--backend", str(where["backend"])]
    if "devnet" in where:
        command += ["--devnet-dir", str(where["devnet"])]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YAGNA_", "GSB_"))}
    proc = subprocess.Popen(command, cwd=tmp_path, text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "running\n"
        assert proc.stdout.readline() == "running\n"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "workgen:" in stderr, stderr
    summary = stderr[stderr.index("workgen:"):]
    assert "2 service instances" in summary and "2 terminated" in summary, summary
    assert re.search(r"cost: [0-9.]+ tGLM \(2 invoices[;)]", summary), summary
    assert "unpaid" not in summary
