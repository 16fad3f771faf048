"""An image built from a Debian recipe (mmdebstrap, from Debian's mirror) runs a program the host
does not have."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.images import shared_dir
from workgen import Golem, LocalNetwork, Task, WorkContext, vm
from workgen.images import ImageFiles, read_gvmi
from workgen.provider.images import ImageCache

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400), pytest.mark.watchdog(300)]


@pytest.fixture
def hello_store(tmp_path: Path) -> ImageFiles:
    """A store holding ``test/hello:1``, built by the command line from Debian's ``hello``."""
    assert shutil.which("hello") is None, "the host has GNU hello: pick another package"
    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-m", "workgen.cli.main", "image", "build", "--debian", "bookworm",
         "--package", "hello", "--tag", "test/hello:1", "--env", "LANG=C.UTF-8",
         "--store", str(store)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = ImageFiles(store)
    image_hash = done.stdout.strip()
    assert files.resolve("test/hello:1") == image_hash
    path = files.path_of(image_hash)
    assert path is not None and read_gvmi(path).metadata.env == ("LANG=C.UTF-8",)
    listing = subprocess.run(["unsquashfs", "-l", str(path)], capture_output=True, text=True,
                             check=True).stdout
    assert "squashfs-root/usr/bin/hello" in listing
    assert "squashfs-root/dev/null" not in listing  # the build's device nodes stay out
    return files


async def test_a_recipe_image_runs_a_debian_package_the_host_lacks(hello_store: ImageFiles
                                                                    ) -> None:
    outputs = []

    async def worker(context: WorkContext, tasks: Any) -> Any:
        async for task in tasks:
            script = context.new_script()
            greeting = script.run("/usr/bin/hello")
            yield script
            outputs.append((await greeting).stdout)
            task.accept_result()

    with shared_dir("workgen-test-cache-") as cache:
        net = LocalNetwork(1, image_files=hello_store, image_cache=ImageCache(cache))
        async with Golem(budget=1, backend=net, event_consumer=lambda e: None) as golem:
            async for _ in golem.execute_tasks(worker, [Task(None)],
                                               payload=await vm.repo(image_tag="test/hello:1")):
                pass
    assert outputs == ["Hello, world!\n"]
