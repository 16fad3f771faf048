"""Test harness: async tests under a watchdog, and a check that nothing is left running."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.networks import DevnetNet, LocalNet, Network, start_test_devnet, stop_test_devnet
from workgen.devnet import Devnet
from workgen.provider.runtime.sandbox import owns_sandbox_uid

# A shell that starts the suite in the background without job control leaves SIGINT ignored,
# and every process the tests start would inherit that: the Ctrl-C tests would then test the
# shell, not workgen. Python's own handler is reset to the default in each child it starts.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ASYNC_TEST_TIMEOUT = 90.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "watchdog(seconds): async test time limit")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Runs ``async def`` tests in a fresh event loop, cancelled if they overrun."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    # The longest limit wins: a test's own and its network's (the devnet is slower).
    limit = max((m.args[0] for m in pyfuncitem.iter_markers("watchdog")),
                default=ASYNC_TEST_TIMEOUT)
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run() -> None:
        async with asyncio.timeout(limit):
            await pyfuncitem.obj(**kwargs)

    asyncio.run(run())
    return True


@pytest.fixture(scope="session")
def image_store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's image store: the test devnet's registry serves it, and tests on the local
    network resolve from it, so an image built once serves both."""
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def test_devnet(tmp_path_factory: pytest.TempPathFactory, image_store_dir: Path
                ) -> Iterator[Devnet]:
    """One devnet for the whole session, started when a test first needs it."""
    net = start_test_devnet(tmp_path_factory.mktemp("devnet") / "net", images=image_store_dir)
    try:
        yield net
    finally:
        stop_test_devnet(net)


@pytest.fixture(params=["local", pytest.param("yagna", marks=[pytest.mark.watchdog(150),
                                                              pytest.mark.timeout(300)])])
def net(request: pytest.FixtureRequest) -> Network:
    """The network a requestor test runs on: every test that takes it runs on both."""
    if request.param == "yagna":
        return DevnetNet(request.getfixturevalue("test_devnet"))
    return LocalNet()


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _ours_or_orphaned(pid: int, me: int) -> bool:
    """Whether ``pid`` descends from this process, or from nobody (reparented to init).

    Sandboxes of other live processes (another test run, a devnet's provider agents) are
    theirs to clean up, not this test's: walking up from the sandbox's processes, the first
    one that is not part of a sandbox says whose it is.
    """
    seen = 0
    while pid > 1 and seen < 64:
        if pid == me:
            return True
        if _is_provider_agent(pid):
            return False  # a devnet's provider agent: its devnet's teardown checks it
        if not _is_sandbox_part(pid):
            return False  # another live process started it
        pid = _parent(pid)
        seen += 1
    return pid <= 1


def _is_sandbox_part(pid: int) -> bool:
    """A process of a sandbox: bubblewrap itself, or anything running as a sandbox user."""
    try:
        with open(f"/proc/{pid}/status") as f:
            uid = int(next(line for line in f if line.startswith("Uid:")).split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, StopIteration, ValueError):
        return False
    return owns_sandbox_uid(uid) or b"bwrap" in cmdline.split(b"\0")[0]


def _is_provider_agent(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"\0provider\0run\0" in f.read()
    except OSError:
        return False


def sandbox_processes() -> list[tuple[int, str]]:
    """Processes that run as a sandbox user, or are bubblewrap children of this process."""
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if status["State"].strip().startswith("Z"):
            continue  # already dead, waiting for init to reap it: holds nothing
        uid = int(status["Uid"].split()[0])
        ppid = int(status["PPid"])
        if (owns_sandbox_uid(uid) or (ppid == me and "bwrap" in cmdline)) and \
                _ours_or_orphaned(int(name), me):
            found.append((int(name), f"{status['State'].strip()} ppid={ppid} {cmdline[:120]}"))
    return found


def activity_disks() -> set[str]:
    """Activity disks this process mounted (their mountpoints name its pid)."""
    mine = f"/workgen-act-{os.getpid()}-"
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f if mine in line.split()[4]}


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Any) -> Iterator[None]:
    before = {pid for pid, _ in sandbox_processes()}
    disks = activity_disks()
    yield
    left = [p for p in sandbox_processes() if p[0] not in before]
    assert not left, f"processes left behind by the test: {left}"
    mounted = activity_disks() - disks
    assert not mounted, f"activity disks left mounted by the test: {sorted(mounted)}"
