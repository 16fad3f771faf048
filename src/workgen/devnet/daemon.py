"""One real yagna daemon (``yagna service run``) on loopback, offline, in central-net mode.

The daemon comes from the ``golem-node`` package. Offline it only works in central-net mode
with a reachable hub: yagna embeds the central-net router in its own GSB, so the first daemon
of a devnet is its own hub (``CENTRAL_NET_HOST`` = its own GSB address) and every other daemon
uses that hub. Nothing else is needed to bring one up: ``YAGNA_AUTOCONF_APPKEY`` creates the
app key at start and ``YAGNA_DEV_SKIP_ALLOCATION_VALIDATION`` lets allocations be made without
reaching a chain.

The daemon is started detached (see :mod:`._proc`) so that it outlives the command that started
it, and is stopped later by PID.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._proc import ProcessRef, SpawnError
from .errors import DaemonStartError, PortInUse, YagnaNotFound

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 30.0
# The daemon signals readiness only by answering REST: /me is polled at this interval (the wait
# in between is a wait on the process's exit, so a daemon that dies is noticed at once).
_READY_POLL_S = 0.1
LOG_NAME = "yagna.log"

# The chains the erc20 driver knows. Each gets its RPC endpoint pinned to loopback's discard
# port: otherwise the driver resolves its RPC pool by DNS from sockets bound on all interfaces,
# and on a machine that is online a devnet would start talking to public chains.
_CHAINS = (
    "MAINNET", "POLYGON", "HOLESKY", "HOODI", "SEPOLIA", "AMOY", "GOERLI", "MUMBAI", "RINKEBY",
)
_NOWHERE = f"http://{LOOPBACK}:9"
# yagna's market spreads offers by broadcast: a new offer after OFFER_BROADCAST_DELAY (5 s by
# default), and every offer again about every MEAN_CYCLIC_BCAST_INTERVAL (4 min). A node that
# missed the first broadcast (its first demand came later, or the provider re-offered after an
# agreement) would wait minutes. On a few loopback nodes broadcasting every second costs nothing,
# and Golem's own test networks shorten these the same way.
MARKET_DISCOVERY = {
    "OFFER_BROADCAST_DELAY": "200ms",
    "UNSUB_BROADCAST_DELAY": "200ms",
    "MEAN_CYCLIC_BCAST_INTERVAL": "1s",
    "MEAN_CYCLIC_UNSUBSCRIBES_INTERVAL": "1s",
}

# What a daemon inherits from the caller's environment: only what a process needs to run.
# Anything else (YA_*, YAGNA_*, GSB_URL, CENTRAL_NET_HOST from a shell that sourced another
# devnet's env file, ...) could silently reconfigure it.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "RUST_LOG", "RUST_BACKTRACE")


def find_yagna(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The yagna binary: ``explicit`` if given, else the one next to this Python (where
    ``pip install golem-node`` puts it, also when the venv is not activated), else ``PATH``."""
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(Path(explicit))
    else:
        candidates.append(Path(sys.executable).parent / "yagna")
        found = shutil.which("yagna")
        if found:
            candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.absolute()
    looked = [str(c) for c in candidates] if explicit is not None else [
        str(Path(sys.executable).parent), "PATH"
    ]
    raise YagnaNotFound(looked)


@dataclass(frozen=True)
class DaemonConfig:
    """Everything that makes one daemon: where it lives, its ports, its hub and its app key."""

    name: str
    data_dir: Path
    gsb_port: int
    rest_port: int
    hub: str  # the central-net hub's GSB address, host:port (port of at most 4 digits)
    appkey: str
    yagna: Path

    @property
    def gsb_address(self) -> str:
        return f"{LOOPBACK}:{self.gsb_port}"

    @property
    def gsb_url(self) -> str:
        return f"tcp://{self.gsb_address}"

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.rest_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    def env(self) -> dict[str, str]:
        """The daemon's whole environment."""
        env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        env.setdefault("RUST_LOG", "info")  # yagna's default is far chattier
        env.update({f"{chain}_GETH_ADDR": _NOWHERE for chain in _CHAINS})
        env.update(
            YA_NET_TYPE="central",
            CENTRAL_NET_HOST=self.hub,
            GSB_URL=self.gsb_url,
            YAGNA_API_URL=self.api_url,
            YAGNA_DATADIR=str(self.data_dir),
            YAGNA_AUTOCONF_APPKEY=self.appkey,
            YAGNA_DEV_SKIP_ALLOCATION_VALIDATION="1",
            YAGNA_METRICS_URL=f"http://{LOOPBACK}:9/",
        )
        env.update(MARKET_DISCOVERY)
        return env


@dataclass(frozen=True)
class PaymentInit:
    """The outcome of ``yagna payment init``: recorded, never fatal (see :meth:`payment_init`)."""

    ok: bool
    detail: str


class RestError(Exception):
    """A REST call did not give the expected answer (connection refused, non-200, not JSON)."""


def get_me(api_url: str, appkey: str, *, timeout: float = 2.0) -> dict[str, Any]:
    """``GET /me`` of a daemon: ``{identity, name, role}``.

    http.client rather than urllib: urllib would route loopback through an ``http_proxy`` of
    the environment.
    """
    host_port = api_url.removeprefix("http://").rstrip("/")
    host, _, port = host_port.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/me", headers={"Authorization": f"Bearer {appkey}"})
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        raise RestError(f"GET {api_url}/me: {exc}") from exc
    finally:
        conn.close()
    if response.status != 200:
        raise RestError(f"GET {api_url}/me: HTTP {response.status} {body[:200]!r}")
    try:
        me: dict[str, Any] = json.loads(body)
    except ValueError as exc:
        raise RestError(f"GET {api_url}/me: not JSON: {body[:200]!r}") from exc
    return me


class YagnaDaemon:
    """One ``yagna service run`` process, started by :meth:`start` (or :meth:`spawn` then
    :meth:`wait_ready`), or re-attached by PID with :meth:`attach`."""

    def __init__(self, config: DaemonConfig):
        self.config = config
        self.process: ProcessRef | None = None
        self.node_id: str | None = None
        self._log_offset = 0  # where this run's output starts in the (appended) log

    @classmethod
    def attach(cls, config: DaemonConfig, process: ProcessRef, node_id: str | None) -> YagnaDaemon:
        """The handle of a daemon started earlier, possibly by another command."""
        daemon = cls(config)
        daemon.process = process
        daemon.node_id = node_id
        return daemon

    def start(self, timeout: float = READY_TIMEOUT_S) -> str:
        """Starts the daemon and waits until it answers; returns its node id."""
        self.spawn()
        return self.wait_ready(time.monotonic() + timeout)

    def spawn(self) -> ProcessRef:
        """Starts the process without waiting for it to be ready."""
        if self.process is not None:
            raise RuntimeError(f"daemon {self.config.name} was already started")
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [str(self.config.yagna), "service", "run", "--disable-metrics-push"]
        log = self.config.log_path
        self._log_offset = log.stat().st_size if log.exists() else 0
        try:
            self.process = ProcessRef.spawn_detached(
                argv, env=self.config.env(), log_path=self.config.log_path
            )
        except (SpawnError, OSError, subprocess.SubprocessError) as exc:
            raise DaemonStartError(str(exc), node=self.config.name) from exc
        logger.info("%s: started pid %d", self.config.name, self.process.pid)
        return self.process

    def wait_ready(self, deadline: float) -> str:
        """Polls ``/me`` until it answers 200 (until ``deadline``, a ``time.monotonic()``);
        returns the node id. Fails at once if the process exits."""
        process = self._require_process()
        last_error = "no answer yet"
        while True:
            try:
                me = get_me(self.config.api_url, self.config.appkey, timeout=1.0)
            except RestError as exc:
                last_error = str(exc)
            else:
                self.node_id = str(me["identity"])
                return self.node_id
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonStartError(
                    f"{self.config.name}: no answer from {self.config.api_url}/me in time "
                    f"({last_error}); see {self.config.log_path}",
                    node=self.config.name, log_path=self.config.log_path,
                )
            if process.wait(min(_READY_POLL_S, remaining)):
                raise self._exited_error()

    def me(self, timeout: float = 2.0) -> dict[str, Any]:
        return get_me(self.config.api_url, self.config.appkey, timeout=timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def stop(self, grace: float = 5.0) -> str:
        """Stops the process by PID (SIGINT, then SIGKILL after ``grace`` s); see
        :meth:`ProcessRef.stop`. Idempotent."""
        if self.process is None:
            return "not running"
        outcome = self.process.stop(grace)
        logger.info("%s: pid %d %s", self.config.name, self.process.pid, outcome)
        return outcome

    def payment_init(self, *, sender: bool, network: str, driver: str) -> PaymentInit:
        """``yagna payment init --sender|--receiver`` through this daemon's GSB.

        It only registers the account with the local payment service, so it works offline.
        A failure is returned, not raised: allocations still work offline thanks to
        ``YAGNA_DEV_SKIP_ALLOCATION_VALIDATION``, so a devnet without it is still useful.
        """
        role = "--sender" if sender else "--receiver"
        argv = [str(self.config.yagna), "payment", "init", role,
                "--network", network, "--driver", driver]
        env = self.config.env()
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return PaymentInit(False, f"payment init {role}: {exc}")
        output = " ".join((done.stdout + done.stderr).split())
        if done.returncode != 0:
            return PaymentInit(False, f"payment init {role} exited {done.returncode}: {output}")
        return PaymentInit(True, f"payment init {role} --network {network} --driver {driver}: ok")

    def _require_process(self) -> ProcessRef:
        if self.process is None:
            raise RuntimeError(f"daemon {self.config.name} was not started")
        return self.process

    def _exited_error(self) -> DaemonStartError:
        tail = _log_tail(self.config.log_path, self._log_offset)
        message = (f"{self.config.name}: yagna exited while starting: {tail}; "
                   f"see {self.config.log_path}")
        error_type = PortInUse if "Address already in use" in tail else DaemonStartError
        return error_type(message, node=self.config.name, log_path=self.config.log_path)


def _log_tail(log_path: Path, offset: int) -> str:
    """The most telling line of a daemon's log from ``offset`` on: yagna ends with
    ``Error: <what>`` and the cause indented on the next line, before a backtrace."""
    try:
        with log_path.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    for i, line in enumerate(lines):
        if line.startswith("Error: "):
            cause = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{line.removeprefix('Error: ')}: {cause}" if cause else line
    return lines[-1].strip() if lines else "(empty log)"
