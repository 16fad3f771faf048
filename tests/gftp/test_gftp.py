"""GFTP between two real yagna daemons: A is the central-net hub, B joins it.

The serving side (publisher, receiver) is on A's GSB and the moving side (download, upload) on
B's, so every call crosses both daemons as it would between a requestor and a provider. Fakes
registered on A in place of our publisher/receiver record what actually arrives, to pin the
wire shapes to yagna's, and serve wrong data, to check that it is caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.yagna import YagnaNode, start_yagna
from workgen.gftp import (
    GftpError, GftpIntegrityError, GftpLimitExceeded, GftpScheme, download, file_hash, gftp_url,
    is_content_hash,
    open_upload, parse_url, publish, upload,
)
from workgen.gsb import GsbClient, GsbHandlerError, GsbRemoteError, open_gsb
from workgen.provider.exeunit.transfer import Volumes, transfer

SHA3_EMPTY = "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
SHA3_ABC = "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"  # FIPS 202 vector
MIB = 1024 * 1024


@dataclass
class Net:
    a: YagnaNode
    b: YagnaNode
    bus_a: GsbClient
    bus_b: GsbClient

    def remote(self, name: str, message: str, prefix: str = "/transfer/net") -> str:
        """The address B calls to reach A's ``/public/gftp/<name>/<message>``."""
        return f"{prefix}/{self.a.node_id}/gftp/{name}/{message}"


@contextlib.asynccontextmanager
async def two_nodes(tmp_path: Path) -> AsyncIterator[Net]:
    async with start_yagna(tmp_path, name="a") as a:
        async with start_yagna(tmp_path, hub_gsb_port=a.gsb_port, name="b") as b:
            async with open_gsb(a.gsb_url) as bus_a, open_gsb(b.gsb_url) as bus_b:
                yield Net(a, b, bus_a, bus_b)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class FakePublisher:
    """Serves ``content`` as GFTP file ``name``, recording each call; ``short`` cuts chunks."""

    def __init__(self, content: bytes, *, short: bool = False) -> None:
        self.content = content
        self.short = short
        self.calls: list[tuple[str, str, Any]] = []

    async def __call__(self, message: str, caller: str, payload: Any) -> Any:
        self.calls.append((message, caller, payload))
        if message == "GetMetadata":
            return {"fileSize": len(self.content)}
        offset, size = payload["offset"], payload["size"]
        chunk = self.content[offset:offset + size]
        return {"offset": offset, "content": chunk[:-1] if self.short else chunk}


# --- pure units -----------------------------------------------------------------------------

def test_file_hash_is_sha3_256_of_the_content(tmp_path: Path) -> None:
    assert file_hash(write(tmp_path / "empty", b"")) == SHA3_EMPTY
    assert file_hash(write(tmp_path / "abc", b"abc")) == SHA3_ABC
    data = os.urandom(3 * MIB + 5)  # more than one read block
    assert file_hash(write(tmp_path / "big", data)) == hashlib.sha3_256(data).hexdigest()
    # yagna names its function hash_file_sha256, but it is SHA3: not SHA-256.
    assert SHA3_ABC != hashlib.sha256(b"abc").hexdigest()


def test_urls_name_a_node_and_a_file() -> None:
    node = "0x" + "Ab" * 20
    url = gftp_url(node, SHA3_ABC)
    assert url == f"gftp://0x{'ab' * 20}/{SHA3_ABC}"
    assert parse_url(url) == ("0x" + "ab" * 20, SHA3_ABC)
    assert is_content_hash(SHA3_ABC) and not is_content_hash("x" * 65)
    for bad in (f"http://{node}/{SHA3_ABC}", f"gftp://0x12/{SHA3_ABC}", f"gftp://{node}/",
                f"gftp://{node}/a/b", f"gftp://{node}/{SHA3_ABC}?x=1", "gftp:nothing"):
        with pytest.raises(GftpError):
            parse_url(bad)


# --- downloads ------------------------------------------------------------------------------

@pytest.mark.watchdog(120)
async def test_download_delivers_small_empty_and_multi_chunk_files(tmp_path: Path) -> None:
    files = {"small": b"hello, golem\n", "empty": b"", "random": os.urandom(5 * MIB + 123)}
    async with two_nodes(tmp_path) as net:
        for label, data in files.items():
            src = write(tmp_path / label, data)
            async with await publish(net.bus_a, net.a.node_id, src) as published:
                digest = hashlib.sha3_256(data).hexdigest()
                assert published.url == f"gftp://{net.a.node_id}/{digest}"
                assert published.size == len(data)
                dest = tmp_path / "got" / label  # the parent directory is created
                assert await download(net.bus_b, published.url, dest) == len(data)
                assert dest.read_bytes() == data
                # yagna's own chunk size and window, for many small chunks out of order
                small = tmp_path / "got" / f"{label}-40k"
                assert await download(net.bus_b, published.url, small, chunk_size=40 * 1024,
                                      concurrency=12) == len(data)
                assert file_hash(small) == digest


@pytest.mark.watchdog(120)
async def test_publisher_speaks_yagnas_messages_through_both_net_prefixes(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    async with two_nodes(tmp_path) as net:
        async with await publish(net.bus_a, net.a.node_id, write(tmp_path / "f", data)) as pub:
            for prefix in ("/net", "/transfer/net"):
                meta = await net.bus_b.call(net.remote(pub.hash, "GetMetadata", prefix), None)
                assert meta == {"fileSize": len(data)}
                chunk = await net.bus_b.call(net.remote(pub.hash, "GetChunk", prefix),
                                             {"offset": 99_000, "size": 40 * 1024})
                # content is a flexbuffers blob (serde_bytes), so it decodes as bytes, and the
                # last chunk is cut at the end of the file, as yagna does
                assert chunk == {"offset": 99_000, "content": data[99_000:]}
            with pytest.raises(GsbRemoteError) as beyond:
                await net.bus_b.call(net.remote(pub.hash, "GetChunk"), {"offset": 200_000, "size": 1})
            assert list(beyond.value.error) == ["ReadError"]  # yagna's gftp::Error, serde-tagged


@pytest.mark.watchdog(120)
async def test_download_sends_yagnas_requests(tmp_path: Path) -> None:
    data = os.urandom(3 * MIB)
    name = hashlib.sha3_256(data).hexdigest()
    fake = FakePublisher(data)
    async with two_nodes(tmp_path) as net:
        await net.bus_a.register(f"/public/gftp/{name}", fake)
        url = gftp_url(net.a.node_id, name)
        assert await download(net.bus_b, url, tmp_path / "got", concurrency=1) == len(data)
    assert fake.calls == [
        ("GetMetadata", net.b.node_id, None),  # a unit struct: null
        ("GetChunk", net.b.node_id, {"offset": 0, "size": MIB}),
        ("GetChunk", net.b.node_id, {"offset": MIB, "size": MIB}),
        ("GetChunk", net.b.node_id, {"offset": 2 * MIB, "size": MIB}),
    ]


@pytest.mark.watchdog(120)
async def test_download_rejects_content_that_does_not_match_its_hash(tmp_path: Path) -> None:
    data = os.urandom(2 * MIB)
    async with two_nodes(tmp_path) as net:
        src = write(tmp_path / "f", data)
        async with await publish(net.bus_a, net.a.node_id, src) as published:
            # Changed in place after publishing: the hash is stale.
            with open(src, "r+b") as f:  # noqa: ASYNC230 (a few bytes, before the transfer)
                f.seek(MIB)
                f.write(b"tampered")
            dest = tmp_path / "got"
            with pytest.raises(GftpIntegrityError, match="SHA3-256"):
                await download(net.bus_b, published.url, dest)
            assert not dest.exists()  # no partial or wrong file is left behind

        name = hashlib.sha3_256(data).hexdigest()  # a publisher that serves short chunks
        await net.bus_a.register(f"/public/gftp/{name}", FakePublisher(data, short=True))
        with pytest.raises(GftpIntegrityError, match="bytes of the"):
            await download(net.bus_b, gftp_url(net.a.node_id, name), dest)
        assert not dest.exists()


@pytest.mark.watchdog(120)
async def test_download_of_a_file_nobody_serves_fails(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as net:
        published = await publish(net.bus_a, net.a.node_id, write(tmp_path / "f", b"abc"))
        with pytest.raises(GftpError, match="already served"):
            await publish(net.bus_a, net.a.node_id, write(tmp_path / "g", b"abc"))
        await published.aclose()
        await published.aclose()  # idempotent
        with pytest.raises(GftpError):
            await download(net.bus_b, published.url, tmp_path / "got")
        with pytest.raises(GftpError):
            await publish(net.bus_a, net.a.node_id, tmp_path / "missing")


# --- uploads --------------------------------------------------------------------------------

@pytest.mark.watchdog(120)
async def test_upload_arrives_intact(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as net:
        for label, data in {"random": os.urandom(5 * MIB + 7), "empty": b""}.items():
            src = write(tmp_path / label, data)
            async with await open_upload(net.bus_a, net.a.node_id, tmp_path / "in" / label) as rx:
                _, name = parse_url(rx.url)
                assert len(name) == 65 and not is_content_hash(name)
                assert await upload(net.bus_b, src, rx.url, chunk_size=256 * 1024) == len(data)
                assert await rx.wait() == len(data)
                assert rx.path.read_bytes() == data
                if data:  # chunks after the end are refused (a repeated UploadFinished is not)
                    with pytest.raises(GftpError, match="already finished"):
                        await upload(net.bus_b, src, rx.url)


@pytest.mark.watchdog(120)
async def test_upload_sends_yagnas_messages(tmp_path: Path) -> None:
    data = os.urandom(MIB + 10)
    calls: list[tuple[str, Any]] = []

    async def fake_receiver(message: str, caller: str, payload: Any) -> None:
        calls.append((message, payload))

    async with two_nodes(tmp_path) as net:
        await net.bus_a.register("/public/gftp/x" + "y" * 64, fake_receiver)
        url = gftp_url(net.a.node_id, "x" + "y" * 64)
        await upload(net.bus_b, write(tmp_path / "f", data), url, concurrency=1)
    assert calls == [
        ("UploadChunk", {"chunk": {"offset": 0, "content": data[:MIB]}}),
        ("UploadChunk", {"chunk": {"offset": MIB, "content": data[MIB:]}}),
        ("UploadFinished", {"hash": hashlib.sha3_256(data).hexdigest()}),
    ]


@pytest.mark.watchdog(120)
async def test_receiver_refuses_a_wrong_hash_and_a_gap(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as net:
        async with await open_upload(net.bus_a, net.a.node_id, tmp_path / "in1") as rx:
            _, name = parse_url(rx.url)
            await net.bus_b.call(net.remote(name, "UploadChunk"),
                                 {"chunk": {"offset": 0, "content": b"abc"}})
            with pytest.raises(GsbRemoteError) as refused:
                await net.bus_b.call(net.remote(name, "UploadFinished"), {"hash": SHA3_EMPTY})
            assert refused.value.error == "IntegrityError"  # yagna's unit variant
            with pytest.raises(GftpIntegrityError, match="differs"):
                await rx.wait()

        async with await open_upload(net.bus_a, net.a.node_id, tmp_path / "in2") as rx:
            _, name = parse_url(rx.url)
            await net.bus_b.call(net.remote(name, "UploadChunk"),
                                 {"chunk": {"offset": 3, "content": b"def"}})
            with pytest.raises(GsbRemoteError) as refused:
                await net.bus_b.call(net.remote(name, "UploadFinished"), {"hash": None})
            assert list(refused.value.error) == ["WriteError"]
            with pytest.raises(GftpIntegrityError, match="0..3 never arrived"):
                await rx.wait()

        # chunks out of order and no hash (the protocol allows it) are fine
        async with await open_upload(net.bus_a, net.a.node_id, tmp_path / "in3") as rx:
            _, name = parse_url(rx.url)
            for offset, content in ((3, b"def"), (0, b"abc")):
                await net.bus_b.call(net.remote(name, "UploadChunk"),
                                     {"chunk": {"offset": offset, "content": content}})
            await net.bus_b.call(net.remote(name, "UploadFinished"), {"hash": None})
            assert await rx.wait() == 6 and rx.path.read_bytes() == b"abcdef"

        rx = await open_upload(net.bus_a, net.a.node_id, tmp_path / "in4")
        await rx.aclose()
        with pytest.raises(GftpError, match="closed before it finished"):
            await rx.wait()


@pytest.mark.watchdog(120)
async def test_receiver_refuses_an_upload_beyond_its_limit(tmp_path: Path) -> None:
    src = write(tmp_path / "f", os.urandom(3 * MIB))
    async with two_nodes(tmp_path) as net:
        async with await open_upload(net.bus_a, net.a.node_id, tmp_path / "in",
                                     max_size=2 * MIB) as rx:
            with pytest.raises(GftpError, match="exceeds the limit"):
                await upload(net.bus_b, src, rx.url)
            with pytest.raises(GftpLimitExceeded):
                await rx.wait()
            assert rx.path.stat().st_size <= 2 * MIB


@pytest.mark.watchdog(120)
async def test_uploader_reports_the_receivers_refusal(tmp_path: Path) -> None:
    async def refusing_receiver(message: str, caller: str, payload: Any) -> None:
        if message == "UploadFinished":
            raise GsbHandlerError("IntegrityError")

    async with two_nodes(tmp_path) as net:
        await net.bus_a.register("/public/gftp/refuses", refusing_receiver)
        with pytest.raises(GftpIntegrityError, match="File hash verification failed"):
            await upload(net.bus_b, write(tmp_path / "f", b"abc"),
                         gftp_url(net.a.node_id, "refuses"))


# --- the execution unit's transport, and memory ---------------------------------------------

@pytest.mark.watchdog(120)
async def test_gftp_scheme_serves_the_exe_units_transfer_command(tmp_path: Path) -> None:
    volumes = {"/golem/input": tmp_path / "input", "/golem/output": tmp_path / "output"}
    for directory in volumes.values():
        directory.mkdir()
    data = os.urandom(MIB // 2)
    async with two_nodes(tmp_path) as net:
        schemes = {"gftp": GftpScheme(net.bus_b)}
        async with await publish(net.bus_a, net.a.node_id, write(tmp_path / "f", data)) as pub:
            size = await transfer(pub.url, "container:/golem/input/data.bin",
                                  Volumes(volumes, None), schemes)
        assert size == len(data) and (tmp_path / "input" / "data.bin").read_bytes() == data

        write(tmp_path / "output" / "result.bin", data[::-1])
        async with await open_upload(net.bus_a, net.a.node_id, tmp_path / "result") as rx:
            size = await transfer("container:/golem/output/result.bin", rx.url,
                                  Volumes(volumes, None), schemes)
            assert size == len(data) and await rx.wait() == len(data)
        assert (tmp_path / "result").read_bytes() == data[::-1]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.watchdog(120)
async def test_memory_stays_bounded_for_a_large_file(tmp_path: Path) -> None:
    # Both ends of each transfer run in this process, each holding ~concurrency chunks (8 MiB by
    # default) plus the GSB codec's copies of them: measured ~20 MiB for a download and ~40 MiB
    # for an upload, the same for 32 MiB as for 192 MiB files. Reading the file whole would
    # exceed the limit on its own.
    size = 128 * MIB
    src, digest = tmp_path / "big", hashlib.sha3_256()
    # Written piecewise, so the test itself holds little; nothing else runs meanwhile.
    with open(src, "wb") as f:  # noqa: ASYNC230
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            digest.update(block)
            f.write(block)
    async with two_nodes(tmp_path) as net:
        # ru_maxrss is this process's peak so far: it only shows growth above earlier peaks,
        # so the current RSS is also sampled while the data moves. Both sides run here.
        peak_before, rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, _rss()
        highest = rss_before
        moving = True

        async def sample() -> None:
            nonlocal highest
            while moving:
                highest = max(highest, _rss())
                await asyncio.sleep(0.005)

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(sample())
            try:
                async with await publish(net.bus_a, net.a.node_id, src) as published:
                    assert await download(net.bus_b, published.url, tmp_path / "got") == size
                async with await open_upload(net.bus_a, net.a.node_id, tmp_path / "up") as rx:
                    assert await upload(net.bus_b, src, rx.url) == size
                    assert await rx.wait() == size
            finally:
                moving = False
        peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    assert file_hash(tmp_path / "got") == file_hash(tmp_path / "up") == digest.hexdigest()
    assert highest - rss_before < size // 2, f"RSS grew by {(highest - rss_before) // MIB} MiB"
    assert peak_growth < size // 2, f"peak RSS grew by {peak_growth // MIB} MiB"
