"""A hostile requestor's images: ``deploy`` of an image whose URL, bytes or archive entries were
chosen to hurt the provider, through the execution unit's batches (the entry point a requestor's
script reaches on both networks) and through a real yagna provider. The host stays untouched:
nothing is fetched from the provider's own network, nothing is written outside the cache, no
device file or setuid bit reaches the host's disk."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.http import serve
from support.images import (
    Files, build_tiny, deploy_and_run, files_server, loopback_policy, make_root, shared_dir,
)
from support.networks import DevnetNet
from workgen import Golem, NoProvidersError, ProviderFilter, Task, WorkContext, vm
from workgen.devnet import Devnet
from workgen.images import ImageFiles, ImageMetadata
from workgen.requestor.strategy import default_strategy
from workgen.images.gvmi import metadata_trailer
from workgen.provider.images import FetchPolicy, GvmiImage, ImageCache


@pytest.fixture
def cache_dir() -> Iterator[Path]:
    with shared_dir("workgen-test-cache-") as path:
        yield path


async def deploy_fails(image: GvmiImage) -> str:
    results = await deploy_and_run(image)
    assert results[0].result == "Error", results
    return str(results[0].message)


async def test_an_image_that_does_not_match_its_hash_is_refused(
        tmp_path: Path, cache_dir: Path) -> None:
    built = build_tiny(ImageFiles(tmp_path / "store"))
    other = "0" * 56
    _, server = files_server({"/i": built.path.read_bytes()})
    with server as url:
        cache = ImageCache(cache_dir)
        message = await deploy_fails(GvmiImage(other, cache, url=f"{url}/i",
                                               fetch=loopback_policy(url)))
    assert "does not match its hash" in message and built.hash in message
    assert cache.cached() == {} and list((cache_dir / "work").iterdir()) == []


async def test_a_truncated_download_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    built = build_tiny(ImageFiles(tmp_path / "store"))
    _, server = files_server({"/i": built.path.read_bytes()}, lie=True)
    with server as url:
        message = await deploy_fails(GvmiImage(built.hash, ImageCache(cache_dir),
                                               url=f"{url}/i", fetch=loopback_policy(url)))
    assert "was cut short" in message, message


async def test_an_oversized_image_is_refused_before_and_while_reading(
        tmp_path: Path, cache_dir: Path) -> None:
    built = build_tiny(ImageFiles(tmp_path / "store"))
    data = built.path.read_bytes()
    _, server = files_server({"/i": data})
    with server as url:
        small = loopback_policy(url, max_bytes=len(data) // 2)
        message = await deploy_fails(GvmiImage(built.hash, ImageCache(cache_dir),
                                               url=f"{url}/i", fetch=small))
    assert "over this provider's limit" in message
    # Unpacked, an image must fit the cache too.
    message = await deploy_fails(GvmiImage(built.hash, ImageCache(cache_dir, max_bytes=1000),
                                           file=built.path))
    assert "more than this provider's image cache holds" in message


async def test_a_url_on_the_provider_s_own_network_is_not_fetched(
        tmp_path: Path, cache_dir: Path) -> None:
    """The provider's loopback (its yagna API, say) is not a source unless its owner says so,
    nor is a public-looking URL that redirects there."""
    built = build_tiny(ImageFiles(tmp_path / "store"))
    handler, server = files_server({"/i": built.path.read_bytes()})
    with server as url:
        cache = ImageCache(cache_dir)
        message = await deploy_fails(GvmiImage(built.hash, cache, url=f"{url}/i",
                                               fetch=FetchPolicy()))
        assert "not a public address" in message
        for scheme_url in ("file:///etc/passwd", "ftp://127.0.0.1/i"):
            message = await deploy_fails(GvmiImage(built.hash, cache, url=scheme_url,
                                                   fetch=FetchPolicy()))
            assert "http or https only" in message
    assert handler.hits == []
    # An allowed source redirecting elsewhere on loopback: the redirect is refused.
    target, target_server = files_server({"/i": built.path.read_bytes()})
    with target_server as other, serve(type("R", (Files,), {
            "routes": {}, "hits": [], "redirects": {"/i": f"{other}/i"}})) as redirecting:
        message = await deploy_fails(GvmiImage(built.hash, cache, url=f"{redirecting}/i",
                                               fetch=loopback_policy(redirecting)))
    assert "not a public address" in message and target.hits == []


def hostile_image(tmp_path: Path, pseudo: list[str], *, escape: bool = False) -> Path:
    """A GVMI file with the given mksquashfs pseudo entries (devices, pipes) and a setuid
    program; with ``escape``, an entry named ``../escaped`` (patched into the raw filesystem,
    as no honest tool writes one)."""
    root = make_root(tmp_path / "hostile-root")
    suid = root / "usr" / "bin" / "suid-tool"
    suid.write_text("#!/bin/sh\necho hi\n")
    suid.chmod(0o4755)
    (root / "outside-link").symlink_to(str(tmp_path / "host-secret"))
    if escape:
        (root / "..Xescaped").write_text("escaped")
    fs = tmp_path / "hostile.sqfs"
    argv = ["mksquashfs", str(root), str(fs), "-noappend", "-quiet", "-no-progress", "-noI",
            "-noD", "-noF", "-noX", "-all-root"]
    for entry in pseudo:
        argv += ["-p", entry]
    subprocess.run(argv, check=True, capture_output=True)
    raw = fs.read_bytes()
    if escape:
        assert raw.count(b"..Xescaped") == 1
        raw = raw.replace(b"..Xescaped", b"../escaped")
    image = tmp_path / "hostile.gvmi"
    image.write_bytes(raw + metadata_trailer(ImageMetadata()))
    return image


async def test_device_files_pipes_and_setuid_bits_of_an_image_never_reach_the_host(
        tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "host-secret").write_text("host secret")
    image = hostile_image(tmp_path, ["dev/evil-mem c 600 0 0 1 1", "evil-disk b 666 0 0 8 0",
                                     "evil-fifo i 666 0 0 f"])
    image_hash = hashlib.sha3_224(image.read_bytes()).hexdigest()
    cache = ImageCache(cache_dir)
    results = await deploy_and_run(
        GvmiImage(image_hash, cache, file=image),
        "stat -c '%a' /usr/bin/suid-tool; ls /evil-disk /evil-fifo 2>&1; cat /outside-link 2>&1;"
        " true")
    assert [r.result for r in results] == ["Ok"] * 3, results
    assert "left out" in str(results[0].stdout)
    lines = str(results[2].stdout).splitlines()
    assert lines[0] == "755" and "No such file" in lines[1] and "No such file" in lines[2]
    assert "host secret" not in str(results[2].stdout)
    rootfs = cache_dir / "entries" / image_hash / "rootfs"
    for directory, dirs, files in os.walk(rootfs):
        for name in dirs + files:
            mode = os.lstat(os.path.join(directory, name)).st_mode
            assert not mode & 0o6000, name
            assert os.path.islink(os.path.join(directory, name)) or \
                os.path.isdir(os.path.join(directory, name)) or \
                os.path.isfile(os.path.join(directory, name)), name


async def test_an_entry_escaping_the_image_fails_deploy_and_writes_nothing_outside(
        tmp_path: Path, cache_dir: Path) -> None:
    image = hostile_image(tmp_path, [], escape=True)
    image_hash = hashlib.sha3_224(image.read_bytes()).hexdigest()
    cache = ImageCache(cache_dir)
    results = await deploy_and_run(GvmiImage(image_hash, cache, file=image), "true")
    escaped = [p for p in (cache_dir.parent, cache_dir, cache_dir / "work", cache_dir / "entries")
               if (p / "escaped").exists()]
    assert escaped == []
    assert results[0].result == "Error" and "cannot be unpacked" in str(results[0].message)
    assert not list(cache_dir.rglob("escaped")) and cache.cached() == {}


@pytest.mark.watchdog(150)
@pytest.mark.timeout(300)
async def test_a_yagna_provider_fetches_no_image_from_its_own_loopback(
        test_devnet: Devnet) -> None:
    """A requestor on the real network names an image at the provider's loopback (where its
    yagna API listens): the provider never connects, and the job ends saying why."""
    net = DevnetNet(test_devnet)
    handler, server = files_server({"/i": b"not an image"})

    async def worker(context: WorkContext, tasks: Any) -> Any:
        async for task in tasks:
            yield context.new_script()
            task.accept_result()

    with server as url:
        payload = await vm.repo(image_hash="ab" * 28, image_url=f"{url}/i")
        strategy = ProviderFilter(default_strategy(), allow=net.provider_names(1))
        async with Golem(budget=1, backend=net.backend(), strategy=strategy,
                         event_consumer=lambda e: None) as golem:
            with pytest.raises(NoProvidersError, match="not a public address"):
                async for _ in golem.execute_tasks(worker, [Task(None)], payload=payload):
                    pass
    assert handler.hits == []


async def test_a_server_that_stalls_cannot_hold_a_deploy(tmp_path: Path, cache_dir: Path) -> None:
    built = build_tiny(ImageFiles(tmp_path / "store"))
    release = threading.Event()

    class Stalling(Files):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            release.wait(60)  # sends nothing more until the test is over

    with serve(Stalling) as url:
        try:
            for policy in (loopback_policy(url, read_timeout=0.5),
                           loopback_policy(url, total_timeout=0.5)):
                message = await deploy_fails(GvmiImage(built.hash, ImageCache(cache_dir),
                                                       url=f"{url}/i", fetch=policy))
                assert "Timeout" in message or "took over 0.5s" in message, message
        finally:
            release.set()
