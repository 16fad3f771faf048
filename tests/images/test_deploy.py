"""Running images: ``deploy`` fetches, checks and unpacks a GVMI image (once, into a cache shared
by activities), and the sandbox runs on its root with its metadata applied."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.images import (
    SCRIPT, build_tiny, deploy_and_run, files_server, loopback_policy, shared_dir,
)
from workgen import Golem, LocalNetwork, NoProvidersError, Task, WorkContext, vm
from workgen.images import ImageFiles, ImageMetadata
from workgen.provider.images import FetchPolicy, GvmiImage, ImageCache


@pytest.fixture
def cache_dir() -> Iterator[Path]:
    with shared_dir("workgen-test-cache-") as path:
        yield path


async def test_a_worker_runs_a_tool_only_in_its_image_on_the_local_network(
        tmp_path: Path, cache_dir: Path) -> None:
    store = ImageFiles(tmp_path / "store")
    built = build_tiny(store, "test/tiny:1", marker="by tag", metadata=ImageMetadata(
        env=("GREETING=from metadata",), working_dir="/usr"))
    assert shutil.which("only-in-image") is None
    outputs = []

    async def worker(context: WorkContext, tasks: Any) -> Any:
        async for task in tasks:
            script = context.new_script()
            result = script.run("/bin/sh", "-c", SCRIPT)
            yield script
            task.accept_result((await result).stdout)

    net = LocalNetwork(1, image_files=store, image_cache=ImageCache(cache_dir))
    async with Golem(budget=1, backend=net, event_consumer=lambda e: None) as golem:
        for payload in (await vm.repo(image_tag="test/tiny:1"),
                        await vm.repo(image_hash=built.hash)):
            async for task in golem.execute_tasks(worker, [Task(None)], payload=payload):
                outputs.append(task.result)
    assert outputs == ["only in the image: from metadata\nby tag\n/usr\n"] * 2


async def test_an_image_is_fetched_from_its_url_checked_and_then_cached(
        tmp_path: Path, cache_dir: Path) -> None:
    store = ImageFiles(tmp_path / "store")
    built = build_tiny(store, marker="fetched")
    handler, server = files_server({"/image.gvmi": built.path.read_bytes()})
    with server as url:
        cache = ImageCache(cache_dir)
        image = GvmiImage(built.hash, cache, url=f"{url}/image.gvmi",
                          fetch=loopback_policy(url))
        first = await deploy_and_run(image)
        second = await deploy_and_run(image)
    assert [r.result for r in first + second] == ["Ok"] * 6
    assert "fetched and verified image" in first[0].stdout and "unpacked" in first[0].stdout
    assert "is cached" in second[0].stdout and "fetch" not in second[0].stdout
    assert first[2].stdout == second[2].stdout == "only in the image: hello\nfetched\n/\n"
    assert handler.hits == ["/image.gvmi"]  # one download for two activities
    assert list(cache.cached()) == [built.hash]


async def test_two_activities_deploying_one_image_at_once_share_one_download(
        tmp_path: Path, cache_dir: Path) -> None:
    built = build_tiny(ImageFiles(tmp_path / "store"))
    handler, server = files_server({"/i": built.path.read_bytes()})
    with server as url:
        # Two caches on one directory: as two provider processes sharing it.
        images = [GvmiImage(built.hash, ImageCache(cache_dir), url=f"{url}/i",
                            fetch=loopback_policy(url)) for _ in range(2)]
        results = await asyncio.gather(*(deploy_and_run(i) for i in images))
    assert all(r[2].stdout.startswith("only in the image") for r in results), results
    assert handler.hits == ["/i"]
    unpacked = [r[0].stdout for r in results]
    assert sum("unpacked" in out for out in unpacked) == 1, unpacked


async def test_the_cache_evicts_the_least_recently_used_image_not_in_use(
        tmp_path: Path, cache_dir: Path) -> None:
    store = ImageFiles(tmp_path / "store")
    first, second, third = (build_tiny(store, marker=m) for m in ("1", "2", "3"))
    probe = ImageCache(cache_dir)
    await deploy_and_run(GvmiImage(first.hash, probe, file=first.path))
    size = probe.cached()[first.hash]
    # Room for two images: the third pushes out the least recently used one not in use.
    cache = ImageCache(cache_dir, max_bytes=int(size * 2.5))
    await deploy_and_run(GvmiImage(second.hash, cache, file=second.path))
    await deploy_and_run(GvmiImage(first.hash, cache, file=first.path))  # used again: newest
    await deploy_and_run(GvmiImage(third.hash, cache, file=third.path))
    assert set(cache.cached()) == {first.hash, third.hash}
    # An image an activity holds stays, even when the bound says otherwise.
    held = await GvmiImage(first.hash, cache, file=first.path).prepare()
    try:
        await deploy_and_run(GvmiImage(second.hash, cache, file=second.path))
        assert set(cache.cached()) == {first.hash, second.hash}
    finally:
        held.release()


async def test_in_development_mode_an_image_that_cannot_be_had_runs_on_the_host_and_says_so(
        cache_dir: Path) -> None:
    image = GvmiImage("ab" * 28, ImageCache(cache_dir), url="http://no-such-host.invalid/i",
                      fetch=FetchPolicy(), host_if_unavailable=True)
    results = await deploy_and_run(image, "echo on the host")
    assert [r.result for r in results] == ["Ok"] * 3
    assert "development mode: image " + "ab" * 28 in str(results[0].stdout)
    assert results[2].stdout == "on the host\n"


async def test_a_job_whose_image_never_deploys_ends_with_the_reason_instead_of_looping(
        tmp_path: Path, cache_dir: Path) -> None:
    store = ImageFiles(tmp_path / "store")
    built = build_tiny(store, "test/broken:1")
    built.path.write_bytes(built.path.read_bytes()[:-1] + b"0")  # damaged in the store

    async def worker(context: WorkContext, tasks: Any) -> Any:
        async for task in tasks:
            yield context.new_script()
            task.accept_result()

    net = LocalNetwork(2, image_files=store, image_cache=ImageCache(cache_dir))
    async with Golem(budget=1, backend=net, event_consumer=lambda e: None) as golem:
        with pytest.raises(NoProvidersError, match="in a row failed to start") as caught:
            async for _ in golem.execute_tasks(worker, [Task(None)],
                                               payload=await vm.repo(image_tag="test/broken:1")):
                pass
    assert "does not match its hash" in str(caught.value)


async def test_a_deploy_cancelled_while_another_prepares_the_image_leaves_no_lock_behind(
        tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the image's preparation lock; an activity waiting for it ends
    (its requestor went away). The lock its waiting thread gets later must be let go."""
    from workgen.provider.images import cache as cache_module

    built = build_tiny(ImageFiles(tmp_path / "store"))
    cache = ImageCache(cache_dir)
    (cache_dir / "locks").mkdir(parents=True)
    holder = cache_module._lock_file(cache_dir / "locks" / f"{built.hash}.prep", fcntl.LOCK_EX)
    waiting = threading.Event()
    real_lock_file = cache_module._lock_file

    def lock_file(path: Path, how: int) -> int:
        waiting.set()
        return real_lock_file(path, how)

    monkeypatch.setattr(cache_module, "_lock_file", lock_file)
    image = GvmiImage(built.hash, cache, file=built.path)
    attempt = asyncio.ensure_future(image.prepare())
    await asyncio.to_thread(waiting.wait, 10)
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    os.close(holder)  # the other process is done
    lease = await image.prepare()  # would wait forever on a leaked lock
    lease.release()
