"""A devnet: a local Golem network of real yagna daemons on loopback, entirely offline.

``Devnet(directory).up(providers=N)`` starts the requestor node, which is also the network's
central-net hub, then N provider nodes whose hub is the requestor's GSB router, records them in
``<directory>/devnet.json`` (see :mod:`.state`) and writes ``<directory>/devnet.env``, the
requestor's settings as the Golem SDKs read them (yapapi, golem-js and workgen's yagna backend)::

    export YAGNA_APPKEY=<requestor app key>
    export YAGNA_API_URL=http://127.0.0.1:<rest port>
    export YAGNA_SUBNET=public
    export GSB_URL=tcp://127.0.0.1:<gsb port>
    export YAGNA_PAYMENT_NETWORK=holesky
    export YAGNA_PAYMENT_DRIVER=erc20
    export PAYMENT_NETWORK=holesky
    export PAYMENT_DRIVER=erc20

The subnet is ``public``, the SDKs' default, so that an unmodified yapapi or golem-js program
finds the devnet's providers; a devnet is a closed network on loopback, so the name clashes with
nothing. Payments use ``erc20`` on ``holesky`` (platform ``erc20-holesky-tglm``), the SDKs'
default test network; offline, nothing reaches a chain.

The daemons outlive the command that started them; ``status`` and ``down`` work from the state
file, by PID. The default directory is ``$WORKGEN_DEVNET_DIR``, or else
``~/.local/state/workgen/devnet``; any number of devnets coexist in different directories (all
their ports are picked free at start).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import secrets
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._proc import ProcessRef, Stopped, stop_together
from .daemon import (
    LOOPBACK, READY_TIMEOUT_S, DaemonConfig, RestError, YagnaDaemon, find_yagna, get_me,
)
from .errors import DevnetError, DevnetRunning, NoDevnet, PortInUse
from .state import (
    ENV_NAME, STATE_NAME, AgentState, DevnetState, NodeState, Role, load, save, write_atomic,
)

logger = logging.getLogger(__name__)

SUBNET = "public"
PAYMENT_NETWORK = "holesky"
PAYMENT_DRIVER = "erc20"
DEFAULT_PROVIDERS = 2
REQUESTOR = "requestor"
# CENTRAL_NET_HOST accepts ports of at most 4 digits; all GSB ports come from this range.
GSB_PORTS = (2000, 9999)
_PORT_ATTEMPTS = 3  # a port found free can be taken before the daemon binds it: retry


def default_directory() -> Path:
    """``$WORKGEN_DEVNET_DIR``, else ``~/.local/state/workgen/devnet``."""
    configured = os.environ.get("WORKGEN_DEVNET_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "state" / "workgen" / "devnet"


def node_env(state: DevnetState, node: NodeState) -> dict[str, str]:
    """The settings an SDK or an agent needs to use ``node``'s daemon."""
    return {
        "YAGNA_APPKEY": node.appkey,
        "YAGNA_API_URL": node.api_url,
        "YAGNA_SUBNET": state.subnet,
        "GSB_URL": node.gsb_url,
        "YAGNA_PAYMENT_NETWORK": state.payment_network,
        "YAGNA_PAYMENT_DRIVER": state.payment_driver,
    }


@dataclass(frozen=True)
class NodeStatus:
    node: NodeState
    running: bool
    me: dict[str, Any] | None  # the /me answer, when the daemon gave one
    error: str | None


@dataclass(frozen=True)
class AgentStatus:
    agent: AgentState
    running: bool


@dataclass(frozen=True)
class DevnetStatus:
    state: DevnetState
    nodes: tuple[NodeStatus, ...]
    agents: tuple[AgentStatus, ...]

    @property
    def healthy(self) -> bool:
        """Every process runs and every daemon answered /me."""
        return all(n.running and n.me is not None for n in self.nodes) and all(
            a.running for a in self.agents)


class Devnet:
    """The devnet of one directory; nothing runs until :meth:`up`."""

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        path = Path(directory).expanduser() if directory is not None else default_directory()
        self.directory = path.absolute()

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_NAME

    @property
    def env_path(self) -> Path:
        return self.directory / ENV_NAME

    def state(self) -> DevnetState:
        """The recorded state; :class:`NoDevnet` if there is none."""
        state = load(self.directory)
        if state is None:
            raise NoDevnet(self.directory)
        return state

    def up(self, providers: int = DEFAULT_PROVIDERS, *,
           yagna: str | os.PathLike[str] | None = None,
           ready_timeout: float = READY_TIMEOUT_S) -> DevnetState:
        """Starts the requestor (hub) and ``providers`` provider daemons; returns the state.

        ``ready_timeout`` bounds the whole start: every daemon must answer ``/me`` by then.

        Fails with :class:`DevnetRunning` if this directory's devnet still runs (a record whose
        processes are all gone is stale and replaced). If anything fails, everything started so
        far is stopped and its data removed before the error propagates.
        """
        if providers < 0:
            raise ValueError(f"providers must be >= 0, not {providers}")
        binary = find_yagna(yagna)
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            previous = load(self.directory)
            if previous is not None:
                running = previous.running_pids()
                if running:
                    raise DevnetRunning(self.directory, running)
                logger.warning("%s: replacing a stale devnet record (nothing of it runs)",
                               self.directory)
                self._remove_data(previous, keep_directory=True)  # it holds our lock
            names = [REQUESTOR] + [f"provider-{i}" for i in range(1, providers + 1)]
            for name in names:
                # Never adopt a directory we did not make: `down` deletes node directories.
                if (self.directory / name).exists():
                    raise DevnetError(f"{self.directory / name} exists but belongs to no devnet "
                                      "here; remove it or choose another directory")
            launch = _Launch(self.directory, binary, time.monotonic() + ready_timeout)
            try:
                return launch.run(names)
            except BaseException:
                # Also on KeyboardInterrupt: an interrupted `up` must leave nothing behind.
                launch.abort()
                self._remove_data(launch.state)
                raise

    def status(self) -> DevnetStatus:
        """Which recorded processes run, and each daemon's ``/me`` answer."""
        state = self.state()
        nodes = []
        for node in state.nodes:
            running, me, error = node.process.running(), None, None
            if running:
                try:
                    me = get_me(node.api_url, node.appkey)
                except RestError as exc:
                    error = str(exc)
            else:
                error = "not running"
            nodes.append(NodeStatus(node, running, me, error))
        agents = tuple(AgentStatus(a, a.process.running()) for a in state.agents)
        return DevnetStatus(state, tuple(nodes), agents)

    def down(self, grace: float = 5.0) -> list[Stopped]:
        """Stops every recorded process by PID (agents, then providers, then the hub), then
        removes the devnet's data (node directories, state and env files)."""
        if not self.state_path.exists():
            raise NoDevnet(self.directory)
        with self._locked():
            state = self.state()
            stopped = []
            for group in state.stop_groups():
                stopped += stop_together(group, grace)
            self._remove_data(state)
            return stopped

    def add_agent(self, agent: AgentState) -> DevnetState:
        """Records a provider-agent process (started by the caller) so that ``down`` stops it."""
        with self._locked(wait=True):
            state = self.state().with_agent(agent)
            save(state)
            return state

    def start_agent(self, name: str, node: str, argv: Sequence[str], *,
                    env: Mapping[str, str] | None = None,
                    log_path: Path | None = None) -> AgentState:
        """Starts ``argv`` detached, as an agent serving ``node``, and records it.

        Its environment is ``env`` (default: this process's) plus ``node``'s settings
        (:func:`node_env`); its output goes to ``log_path`` (default: ``agent-<name>.log`` in
        the node's data directory, so ``down`` removes it).
        """
        state = self.state()
        target = state.node(node)
        full_env = dict(os.environ if env is None else env) | node_env(state, target)
        log = log_path or target.data_dir / f"agent-{name}.log"
        process = ProcessRef.spawn_detached(argv, env=full_env, log_path=log)
        agent = AgentState.of(name, node, process, tuple(argv), log)
        try:
            self.add_agent(agent)
        except BaseException:
            process.stop()
            raise
        return agent

    def serve_images(self, store: str | os.PathLike[str] | None = None, *,
                     timeout: float = 15.0) -> str:
        """Starts ``workgen image serve`` on the image store ``store`` (the default store if
        ``None``) as one of the devnet's agents, so ``down`` stops it; returns its URL, which
        the env file then names as ``GOLEM_REGISTRY_URL`` and :meth:`start_providers` lets its
        providers fetch from."""
        port = _PortPicker().rest()
        argv = [sys.executable, "-m", "workgen.cli.main", "image", "serve", "--port", str(port)]
        if store is not None:
            argv += ["--store", str(Path(store).absolute())]
        agent = self.start_agent(REGISTRY_AGENT, REQUESTOR, argv)
        url = f"http://{LOOPBACK}:{port}"
        deadline = time.monotonic() + timeout
        delay = 0.01
        while not _answers(LOOPBACK, port):
            if not agent.process.running() or time.monotonic() > deadline:
                raise DevnetError(f"the image registry did not start on {url}; see "
                                  f"{agent.log_path}")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        with self._locked(wait=True):
            write_atomic(self.env_path, env_text(self.state()))
        return url

    def start_providers(self, *, debit_note_interval: float = 60.0,
                        accept_timeout: float | None = None,
                        nodes: Sequence[str] | None = None,
                        dev_images: bool = True,
                        image_cache: str | os.PathLike[str] | None = None) -> list[AgentState]:
        """Starts one Python provider (``workgen provider run``) on each provider node (or on
        the ``nodes`` named).

        Their resources and prices vary as the local network's default providers' do; they
        send debit notes every ``debit_note_interval`` and offer ``accept_timeout`` as the
        deadline for accepting them (the provider's default if ``None``). With
        ``dev_images`` they run a demand's image they don't have on the host system image
        (other SDKs always name an image); without, they refuse such demands. They fetch
        images from the devnet's registry (:meth:`serve_images`) as from the internet, and
        unpack them into ``image_cache`` (the provider's default if ``None``).
        """
        from ..provider.offer import default_provider_configs
        from ..protocol.properties import USAGE_CPU_SEC, USAGE_DURATION_SEC

        state = self.state()
        targets = [n for n in state.nodes
                   if n.role == "provider" and (nodes is None or n.name in nodes)]
        agents = []
        for node, config in zip(targets, default_provider_configs(len(targets)), strict=True):
            prices = config.pricing.prices
            argv = [
                sys.executable, "-m", "workgen.cli.main", "provider", "run",
                "--name", f"devnet-{node.name}", "--subnet", state.subnet,
                "--threads", str(config.cpu_threads), "--mem-gib", str(config.mem_gib),
                "--storage-gib", str(config.storage_gib),
                "--price-duration", str(prices.get(USAGE_DURATION_SEC, 0)),
                "--price-cpu", str(prices.get(USAGE_CPU_SEC, 0)),
                "--price-start", str(config.pricing.fixed_price),
                "--debit-note-interval", str(debit_note_interval),
                "--dev-images" if dev_images else "--no-dev-images",
            ]
            if accept_timeout is not None:
                argv += ["--debit-note-accept-timeout", str(accept_timeout)]
            registry = registry_url(state)
            if registry is not None:
                argv += ["--image-source", registry]
            if image_cache is not None:
                argv += ["--image-cache", str(Path(image_cache).absolute())]
            agents.append(self.start_agent(f"agent-{node.name}", node.name, argv))
        return agents

    @contextmanager
    def _locked(self, *, wait: bool = False) -> Iterator[None]:
        """Holds an exclusive lock on the directory itself, so that two commands never work on
        one devnet at once (and the lock leaves no file behind)."""
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise NoDevnet(self.directory) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise DevnetError(f"another devnet command is working on {self.directory}; "
                                  "try again when it is done") from None
            yield
        finally:
            os.close(fd)

    def _remove_data(self, state: DevnetState, *, keep_directory: bool = False) -> None:
        """Removes what the devnet put in its directory, and the directory if that leaves it
        empty. Only paths inside the directory are touched, whatever the state file says."""
        for node in state.nodes:
            if node.data_dir.is_relative_to(self.directory) and node.data_dir != self.directory:
                shutil.rmtree(node.data_dir, ignore_errors=True)
        for agent in state.agents:
            if agent.log_path is not None and agent.log_path.is_relative_to(self.directory):
                agent.log_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        self.env_path.unlink(missing_ok=True)
        if keep_directory:
            return
        try:
            self.directory.rmdir()
        except OSError:
            pass  # not empty: it holds things that are not ours


class _Launch:
    """One ``up`` in progress: the daemons started so far, recorded as soon as they exist."""

    def __init__(self, directory: Path, yagna: Path, deadline: float):
        self.directory = directory
        self.yagna = yagna
        self.deadline = deadline
        self.ports = _PortPicker()
        self.daemons: dict[str, YagnaDaemon] = {}
        self.roles: dict[str, Role] = {}
        self.state = DevnetState(directory=directory, yagna=yagna, subnet=SUBNET,
                                 payment_network=PAYMENT_NETWORK, payment_driver=PAYMENT_DRIVER)

    def run(self, names: list[str]) -> DevnetState:
        """Starts the hub ``names[0]``, then the providers ``names[1:]``."""
        self._start_group(names[:1], "requestor")
        self._start_group(names[1:], "provider")
        # Account registration as the real agents do it: the requestor pays, providers get paid.
        for name, daemon in self.daemons.items():
            payment = daemon.payment_init(sender=name == REQUESTOR, network=PAYMENT_NETWORK,
                                          driver=PAYMENT_DRIVER)
            if not payment.ok:
                logger.warning("%s: %s", name, payment.detail)
            self._record(daemon, payment_init=payment)
        self.state = replace(self.state, phase="up")
        save(self.state)
        write_atomic(self.directory / ENV_NAME, env_text(self.state))
        return self.state

    def abort(self) -> None:
        """Stops what this launch started and removes the node directories it made."""
        for group in self.state.stop_groups():
            try:
                stop_together(group, grace=5.0)
            except DevnetError as exc:
                logger.error("cleaning up a failed up: %s", exc)
        for daemon in self.daemons.values():
            shutil.rmtree(daemon.config.data_dir, ignore_errors=True)

    def _start_group(self, names: list[str], role: Role) -> None:
        """Starts the daemons of ``names`` at once, then waits for each; a daemon that lost a
        port race is started again on fresh ports."""
        for name in names:
            self._spawn(name, role, attempt=1)
        for name in names:
            attempt = 1
            while True:
                try:
                    self.daemons[name].wait_ready(self.deadline)
                    break
                except PortInUse as exc:
                    if attempt >= _PORT_ATTEMPTS:
                        raise
                    attempt += 1
                    logger.info("%s; retrying on other ports", exc)
                    self._spawn(name, role, attempt=attempt)
            self._record(self.daemons[name])

    def _spawn(self, name: str, role: Role, attempt: int) -> None:
        gsb_port = self.ports.gsb()
        # The hub is its own central-net hub; every other node uses the hub's router.
        hub_port = gsb_port if role == "requestor" else self.state.hub.gsb_port
        hub = f"{LOOPBACK}:{hub_port}"
        config = DaemonConfig(
            name=name, data_dir=self.directory / name, gsb_port=gsb_port,
            rest_port=self.ports.rest(), hub=hub, appkey=secrets.token_hex(16), yagna=self.yagna,
        )
        daemon = YagnaDaemon(config)
        self.daemons[name] = daemon
        self.roles[name] = role
        daemon.spawn()
        self._record(daemon)

    def _record(self, daemon: YagnaDaemon, **extra: Any) -> None:
        config, process = daemon.config, daemon.process
        assert process is not None
        node = NodeState(
            name=config.name, role=self.roles[config.name],
            pid=process.pid, start_time=process.start_time, gsb_port=config.gsb_port,
            rest_port=config.rest_port, appkey=config.appkey, node_id=daemon.node_id,
            data_dir=config.data_dir, log_path=config.log_path,
        )
        self.state = self.state.with_node(replace(node, **extra))
        save(self.state)


def env_text(state: DevnetState) -> str:
    """The env file: the requestor node's settings, one ``export`` per line."""
    node = state.requestor
    lines = [
        f"# workgen devnet in {state.directory}: requestor node {node.name} ({node.node_id}).",
        f"# Load it with: source {shlex.quote(str(state.directory / ENV_NAME))}",
    ]
    settings = node_env(state, node)
    # golem-js reads the payment settings under these names.
    settings |= {"PAYMENT_NETWORK": state.payment_network, "PAYMENT_DRIVER": state.payment_driver}
    lines += [f"export {k}={shlex.quote(v)}" for k, v in settings.items()]
    registry = registry_url(state)
    if registry is not None:
        # Read by golem-js and workgen's yagna backend (yapapi: vm.repo(repository_url=...)).
        lines.append(f"export GOLEM_REGISTRY_URL={shlex.quote(registry)}")
    tools = Path(sys.executable).parent
    if (tools / "gftp").exists():
        # yapapi starts `gftp server` from PATH; workgen's is installed beside this Python.
        lines.append(f'export PATH={shlex.quote(str(tools))}:"$PATH"')
    return "\n".join(lines) + "\n"


REGISTRY_AGENT = "image-registry"


def registry_url(state: DevnetState) -> str | None:
    """The URL of the devnet's image registry, if it serves one."""
    for agent in state.agents:
        if agent.name == REGISTRY_AGENT and "--port" in agent.argv:
            return f"http://{LOOPBACK}:{agent.argv[agent.argv.index('--port') + 1]}"
    return None


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class _PortPicker:
    """Free loopback ports, none handed out twice within one ``up``."""

    def __init__(self) -> None:
        self.taken: set[int] = set()
        self.rng = random.Random()

    def gsb(self) -> int:
        """A random free port in :data:`GSB_PORTS` (random, so that devnets started at the
        same time rarely race for one)."""
        for _ in range(500):
            port = self.rng.randint(*GSB_PORTS)
            if port not in self.taken and _bindable(port):
                self.taken.add(port)
                return port
        raise DevnetError(f"no free port in {GSB_PORTS[0]}-{GSB_PORTS[1]} on {LOOPBACK}")

    def rest(self) -> int:
        """A free port chosen by the kernel (REST ports have no digit limit)."""
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port: int = sock.getsockname()[1]
            if port not in self.taken:
                self.taken.add(port)
                return port


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True
