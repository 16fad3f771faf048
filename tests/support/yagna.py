"""Starts a real yagna daemon (PyPI ``golem-node``) offline, for tests that need one.

The recipe is the one of ``shared/reference/yagna-offline.md`` §1: central-net mode with the
daemon as its own hub (``CENTRAL_NET_HOST`` = its GSB TCP address; yagna embeds the central-net
router), a fresh data directory, an app key created at start, metrics pointed at a dead port.
The daemon is stopped by its pid (SIGINT, then SIGKILL of its process group), never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from workgen.devnet.daemon import MARKET_DISCOVERY

YAGNA = Path(sys.executable).parent / "yagna"
READY_TIMEOUT = 30.0
READY_POLL_INTERVAL = 0.05
STOP_TIMEOUT = 5.0
_START_ATTEMPTS = 3


class YagnaNode:
    """A running daemon: its addresses, app key and identity; ``stop()`` ends it early."""

    def __init__(self, process: asyncio.subprocess.Process, *, gsb_url: str, api_url: str,
                 appkey: str, node_id: str, datadir: Path, log_path: Path) -> None:
        self._process = process
        self._stopped = False
        self.gsb_url = gsb_url  # tcp://127.0.0.1:<4-digit port>
        self.api_url = api_url  # http://127.0.0.1:<port>
        self.appkey = appkey
        self.node_id = node_id  # 0x…, the default identity
        self.datadir = datadir
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def gsb_port(self) -> int:
        return int(self.gsb_url.rsplit(":", 1)[1])

    async def stop(self) -> None:
        """Stops the daemon (idempotent); the block's exit does it anyway."""
        if not self._stopped:
            self._stopped = True  # once only: a later killpg could hit a reused pid
            await _stop(self._process)

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def __repr__(self) -> str:
        return f"<YagnaNode {self.node_id} pid={self.pid} gsb={self.gsb_url} api={self.api_url}>"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a process that has not been reaped (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return not line.split(":", 1)[1].strip().startswith("Z")
    except FileNotFoundError:
        return False
    return True


def _free_gsb_port() -> int:
    # CENTRAL_NET_HOST accepts ports of at most 4 digits, so the GSB port (which is also the
    # hub's address) is drawn from 2000-9999 and checked by binding it.
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randint(2000, 9999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free 4-digit loopback port for the GSB")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get_me(api_url: str, appkey: str) -> dict[str, str] | None:
    request = urllib.request.Request(f"{api_url}/me", headers={"Authorization": f"Bearer {appkey}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            me: dict[str, str] = json.load(response)
            return me
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None  # not listening yet, or not answering yet


@contextlib.asynccontextmanager
async def start_yagna(tmp_path: Path, *, hub_gsb_port: int | None = None, name: str = "node",
                      env: Mapping[str, str] | None = None) -> AsyncIterator[YagnaNode]:
    """Runs one yagna daemon for the block and stops it (by pid) at the end.

    ``hub_gsb_port`` joins the central net of another daemon (its GSB port) instead of being
    its own hub; ``env`` adds variables (``GSB_PING_TIMEOUT``, ``RUST_LOG``, ...).
    """
    if not YAGNA.exists():
        raise RuntimeError(f"no yagna binary at {YAGNA} (pip install golem-node==0.17.6)")
    last_error: Exception | None = None
    for attempt in range(_START_ATTEMPTS):
        # A randomly drawn port can be taken between our check and the daemon's bind (tests
        # run in parallel with other work): then the daemon exits and we draw again.
        workdir = tmp_path / f"yagna-{name}-{attempt}"
        try:
            node = await _spawn(workdir, hub_gsb_port, env or {})
        except _StartFailed as exc:
            last_error = exc
            continue
        try:
            yield node
        finally:
            await node.stop()
        return
    raise RuntimeError(f"yagna did not start after {_START_ATTEMPTS} attempts") from last_error


class _StartFailed(Exception):
    pass


async def _spawn(workdir: Path, hub_gsb_port: int | None,
                 extra_env: Mapping[str, str]) -> YagnaNode:
    datadir = workdir / "data"
    datadir.mkdir(parents=True)
    gsb_port, api_port = _free_gsb_port(), _free_port()
    gsb_url, api_url = f"tcp://127.0.0.1:{gsb_port}", f"http://127.0.0.1:{api_port}"
    appkey = secrets.token_hex(16)  # 32 characters
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YAGNA_", "YA_", "GSB_"))}
    env.update({
        "YA_NET_TYPE": "central",
        "CENTRAL_NET_HOST": f"127.0.0.1:{hub_gsb_port or gsb_port}",
        "GSB_URL": gsb_url,
        "YAGNA_API_URL": api_url,
        "YAGNA_DATADIR": str(datadir),
        "YAGNA_AUTOCONF_APPKEY": appkey,
        "YAGNA_DEV_SKIP_ALLOCATION_VALIDATION": "1",
        "YAGNA_METRICS_URL": "http://127.0.0.1:9/",
        **MARKET_DISCOVERY,
        **extra_env,
    })
    log_path = workdir / "yagna.log"
    with open(log_path, "wb") as log:  # noqa: ASYNC230 (opening a log file: instant)
        process = await asyncio.create_subprocess_exec(
            str(YAGNA), "service", "run", "--disable-metrics-push",
            env=env, cwd=workdir, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,  # its own process group, so that children can be killed too
        )
    try:
        me = await _wait_ready(process, api_url, appkey, log_path)
    except BaseException:
        await _stop(process)
        raise
    node = YagnaNode(process, gsb_url=gsb_url, api_url=api_url, appkey=appkey,
                     node_id=me["identity"], datadir=datadir, log_path=log_path)
    return node


async def _wait_ready(process: asyncio.subprocess.Process, api_url: str, appkey: str,
                      log_path: Path) -> dict[str, str]:
    # yagna gives no readiness signal (no notify socket, nothing reliable on stdout), so this is
    # a poll of GET /me with a short interval under an overall deadline. It also proves that the
    # app key exists, which YAGNA_AUTOCONF_APPKEY creates only after the REST server is up.
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise _StartFailed(f"yagna exited with {process.returncode}:\n{_tail(log_path)}")
        me = await asyncio.to_thread(_get_me, api_url, appkey)
        if me is not None and me.get("identity"):
            return me
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_POLL_INTERVAL):
                await process.wait()  # wakes at once if the daemon dies
    raise RuntimeError(f"yagna not ready after {READY_TIMEOUT} s:\n{_tail(log_path)}")


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGINT (yagna's clean shutdown; it ignores SIGTERM in some loops), then SIGKILL."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    # Anything it spawned stays in its process group (pgid = its pid): take it down too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
