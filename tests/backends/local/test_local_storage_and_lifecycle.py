"""Files to and from the local network's providers, and the network's own lifecycle."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import sandbox_processes
from localnet_support import paid_demand, ready_activity, sh
from workgen.backends.base import Invoice
from workgen.backends.local import LocalNetwork
from workgen.errors import BackendError, BackendUnavailable, DownloadLimitExceeded
from workgen.protocol.exescript import Transfer


async def test_files_go_to_the_provider_and_come_back(tmp_path: Path) -> None:
    given = tmp_path / "given.txt"
    given.write_text("from a file\n")
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        agreement, activity = await ready_activity(net, demand)
        data = await net.storage.publish_bytes(b"hello")
        source = await net.storage.publish_file(given)
        out = await net.storage.new_destination("out.txt")
        # Handles of the storage's own: nothing in a URL names a host path.
        assert all(url.startswith("local://") and str(tmp_path) not in url
                   for url in (data.url, source.url, out.url))
        results = await (await net.exec(activity, [
            Transfer(data.url, "container:/golem/input/in.txt"),
            Transfer(source.url, "container:/golem/input/given.txt"),
            sh("tr a-z A-Z < /golem/input/in.txt > /golem/output/out.txt;"
               "cat /golem/input/given.txt >> /golem/output/out.txt"),
            Transfer("container:/golem/output/out.txt", out.url),
        ], 30)).results()
        assert all(r.ok for r in results), results
        content = await out.read_bytes()
        with pytest.raises(DownloadLimitExceeded) as caught:
            await out.read_bytes(limit=3)
        await out.save_to(tmp_path / "saved.txt")
        await net.terminate_agreement(agreement, "done")
        await data.aclose()
        await source.aclose()
        await out.aclose()
    assert content == b"HELLOfrom a file\n"
    assert (caught.value.limit, caught.value.size) == (3, len(content))
    assert (tmp_path / "saved.txt").read_bytes() == content
    assert given.exists()  # a published file stays the user's


async def test_a_batch_can_name_only_what_this_requestor_published(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    async with LocalNetwork(1) as net:
        _, demand = await paid_demand(net)
        agreement, activity = await ready_activity(net, demand)
        published = await net.storage.publish_bytes(b"mine")
        out = await net.storage.new_destination("out")
        url = published.url
        await published.aclose()  # a handle no longer published
        for src, dst in [
            (secret.as_uri(), "container:/golem/input/s"),
            ("container:/golem/input/s", (tmp_path / "written").as_uri()),
            (url, "container:/golem/input/s"),
            ("local://" + "0" * 32, "container:/golem/input/s"),
            (out.url, "container:/golem/input/s"),  # a destination is not a source
        ]:
            (result,) = await (await net.exec(activity, [Transfer(src, dst)], 30)).results()
            assert result.result == "Error", (src, dst)
        await net.terminate_agreement(agreement, "done")
    assert not (tmp_path / "written").exists()


async def test_reading_a_destination_nothing_was_uploaded_to_is_an_error() -> None:
    async with LocalNetwork(1) as net:
        out = await net.storage.new_destination("never.txt")
        with pytest.raises(BackendError, match="nothing was uploaded"):
            await out.read_bytes()


async def test_aclose_ends_everything_and_leaves_no_process_and_no_files() -> None:
    net = LocalNetwork(2)
    await net.start()
    await net.start()  # idempotent
    events = net.payment_events()
    _, demand = await paid_demand(net)
    agreement, activity = await ready_activity(net, demand)
    await net.exec(activity, [sh("sleep 1000 & sleep 1000")], 60)
    unit = net.exe_unit(activity.id)
    published = await net.storage.publish_bytes(b"x")
    directory = net.directory
    assert directory is not None and directory.exists()
    assert published.path.exists()
    assert unit.sandbox_pid is not None
    await net.aclose()
    await net.aclose()  # idempotent
    received = [e async for e in events]  # ends once the network is closed
    assert not directory.exists()
    assert not published.path.exists()
    assert sandbox_processes() == []
    assert [e.agreement_id for e in received if isinstance(e, Invoice)] == [agreement.id]
    assert all(p.agreements[a].state == "Terminated"
               for p in net.providers for a in p.agreements)
    with pytest.raises(RuntimeError, match="closed"):
        await net.start()


async def test_a_network_that_never_started_closes_cleanly() -> None:
    net = LocalNetwork(1)
    await net.aclose()
    assert net.providers == []


async def test_the_default_is_one_provider_per_cpu_core() -> None:
    async with LocalNetwork() as net:
        names = [p.name for p in net.providers]
    assert names == [f"local-provider-{i}" for i in range(os.cpu_count() or 1)]


async def test_the_network_uses_the_given_work_root() -> None:
    root = Path(tempfile.mkdtemp(prefix="workgen-test-root-"))
    try:
        os.chmod(root, 0o711)
        async with LocalNetwork(1, work_root=root) as net:
            _, demand = await paid_demand(net)
            agreement, activity = await ready_activity(net, demand)
            volumes = net.exe_unit(activity.id).volumes
            assert all(root in path.parents for path in volumes.values())
            await net.storage.publish_bytes(b"x")
            await net.terminate_agreement(agreement, "done")
        assert list(root.iterdir()) == []
    finally:
        shutil.rmtree(root)


@pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes run as other users only under root")
async def test_a_work_root_sandboxes_cannot_reach_fails_at_start(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    net = LocalNetwork(1, work_root=hidden)
    with pytest.raises(BackendUnavailable, match="chmod o\\+x"):
        await net.start()
    await net.aclose()
