"""Images on real yagna daemons: the requestor names an image by tag, resolves it through the
devnet's image registry (the served store), and the Python provider downloads it from the
agreement's URL, checks it and runs the worker in it."""

from __future__ import annotations

from typing import Any

import pytest

from support.images import ONLY_IN_IMAGE, build_tiny
from support.networks import DevnetNet, devnet_image_store
from workgen import Golem, ProviderFilter, Task, WorkContext, vm
from workgen.devnet import Devnet
from workgen.errors import ImageNotFound
from workgen.requestor.strategy import default_strategy

pytestmark = [pytest.mark.watchdog(150), pytest.mark.timeout(300)]


async def test_a_provider_downloads_the_named_image_from_the_registry_and_runs_in_it(
        test_devnet: Devnet) -> None:
    net = DevnetNet(test_devnet)
    built = build_tiny(devnet_image_store(test_devnet), "test/devnet-tiny:1", marker="devnet")
    outputs: list[tuple[str, str]] = []

    async def worker(context: WorkContext, tasks: Any) -> Any:
        async for task in tasks:
            script = context.new_script()
            deployed = script.deploy()
            script.start()
            result = script.run("/bin/sh", "-c", f"{ONLY_IN_IMAGE}; cat /etc/image-marker")
            yield script
            outputs.append((str((await deployed).stdout), str((await result).stdout)))
            task.accept_result()

    strategy = ProviderFilter(default_strategy(), allow=net.provider_names(1))
    async with Golem(budget=1, backend=net.backend(registry=True), strategy=strategy,
                     event_consumer=lambda e: None) as golem:
        payload = await vm.repo(image_tag="test/devnet-tiny:1")
        async for _ in golem.execute_tasks(worker, [Task(None)], payload=payload,
                                           implicit_init=False):
            pass
    ((deploy_out, run_out),) = outputs
    assert run_out == "only in the image: hello\ndevnet"
    # The provider has no image store: it fetched the file, and said so in deploy's output.
    assert f"fetched and verified image {built.hash[:12]}" in deploy_out, deploy_out


async def test_an_image_the_registry_lacks_is_image_not_found(test_devnet: Devnet) -> None:
    net = DevnetNet(test_devnet)
    async with Golem(budget=1, backend=net.backend(registry=True),
                     event_consumer=lambda e: None) as golem:
        payload = await vm.repo(image_tag="test/never-built:1")

        async def worker(context: WorkContext, tasks: Any) -> Any:
            async for task in tasks:
                yield context.new_script()
                task.accept_result()

        with pytest.raises(ImageNotFound, match="test/never-built:1"):
            async for _ in golem.execute_tasks(worker, [Task(None)], payload=payload):
                pass
