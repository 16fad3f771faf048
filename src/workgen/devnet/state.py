"""The devnet's state file, ``<directory>/devnet.json``: every process a devnet started.

It is what ``status`` and ``down`` work from, possibly in another command than the ``up`` that
wrote it, so it records each process by PID *and* start time (see :mod:`._proc`). It is written
while ``up`` still runs (``"phase": "starting"``), as soon as each process exists, so that even
an ``up`` killed halfway leaves a record that ``down`` can clean up.

Format (``"format": "workgen-devnet/1"``; paths absolute; ``start_time`` in clock ticks since
boot, or null where ``/proc`` is unavailable)::

    {"format": "workgen-devnet/1", "directory": "/abs/dir", "phase": "starting" | "up",
     "created": "2026-01-01T12:00:00Z", "yagna": "/abs/bin/yagna",
     "subnet": "public", "payment_network": "holesky", "payment_driver": "erc20",
     "hub": "requestor",
     "nodes": [{"name": "requestor", "role": "requestor", "pid": 123, "start_time": 4567,
                "gsb_port": 7481, "rest_port": 41234, "gsb_url": "tcp://127.0.0.1:7481",
                "api_url": "http://127.0.0.1:41234", "appkey": "<32 hex>",
                "node_id": "0x…" | null, "data_dir": "/abs/dir/requestor",
                "log_path": "/abs/dir/requestor/yagna.log",
                "payment_init": {"ok": true, "detail": "…"} | null}, …],
     "agents": [{"name": "agent-1", "node": "provider-1", "pid": 130, "start_time": 4600,
                 "argv": ["…"], "log_path": "/abs/…" | null, "started": "2026-…Z"}, …]}

``gsb_url``/``api_url`` are written for readers of the file; they are derived from the ports.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from ._proc import ProcessRef
from .daemon import LOOPBACK, PaymentInit
from .errors import DevnetError

FORMAT = "workgen-devnet/1"
STATE_NAME = "devnet.json"
ENV_NAME = "devnet.env"

Role = Literal["requestor", "provider"]
Phase = Literal["starting", "up"]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class NodeState:
    """One yagna daemon of the devnet."""

    name: str
    role: Role
    pid: int
    start_time: int | None
    gsb_port: int
    rest_port: int
    appkey: str
    node_id: str | None  # None until the daemon answered /me
    data_dir: Path
    log_path: Path
    payment_init: PaymentInit | None = None

    @property
    def process(self) -> ProcessRef:
        return ProcessRef(self.pid, self.start_time)

    @property
    def gsb_url(self) -> str:
        return f"tcp://{LOOPBACK}:{self.gsb_port}"

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.rest_port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "role": self.role, "pid": self.pid, "start_time": self.start_time,
            "gsb_port": self.gsb_port, "rest_port": self.rest_port, "gsb_url": self.gsb_url,
            "api_url": self.api_url, "appkey": self.appkey, "node_id": self.node_id,
            "data_dir": str(self.data_dir), "log_path": str(self.log_path),
            "payment_init": None if self.payment_init is None else {
                "ok": self.payment_init.ok, "detail": self.payment_init.detail},
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> NodeState:
        payment = obj.get("payment_init")
        role = obj["role"]
        if role not in ("requestor", "provider"):
            raise ValueError(f"unknown node role {role!r}")
        return cls(
            name=str(obj["name"]), role=role, pid=int(obj["pid"]),
            start_time=_opt_int(obj.get("start_time")), gsb_port=int(obj["gsb_port"]),
            rest_port=int(obj["rest_port"]), appkey=str(obj["appkey"]),
            node_id=None if obj.get("node_id") is None else str(obj["node_id"]),
            data_dir=Path(obj["data_dir"]), log_path=Path(obj["log_path"]),
            payment_init=None if payment is None else PaymentInit(bool(payment["ok"]),
                                                                  str(payment["detail"])),
        )


@dataclass(frozen=True)
class AgentState:
    """A provider-agent process (any program started with a command line) serving a node.

    The devnet stops it by PID before any daemon, as it needs its node's daemon to shut down
    cleanly.
    """

    name: str
    node: str  # the name of the devnet node whose daemon the agent talks to
    pid: int
    start_time: int | None
    argv: tuple[str, ...]
    log_path: Path | None = None
    started: str = field(default_factory=utc_now)

    @classmethod
    def of(cls, name: str, node: str, process: ProcessRef, argv: list[str] | tuple[str, ...],
           log_path: Path | None = None) -> AgentState:
        return cls(name, node, process.pid, process.start_time, tuple(argv), log_path)

    @property
    def process(self) -> ProcessRef:
        return ProcessRef(self.pid, self.start_time)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "node": self.node, "pid": self.pid, "start_time": self.start_time,
            "argv": list(self.argv),
            "log_path": None if self.log_path is None else str(self.log_path),
            "started": self.started,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AgentState:
        log = obj.get("log_path")
        return cls(
            name=str(obj["name"]), node=str(obj["node"]), pid=int(obj["pid"]),
            start_time=_opt_int(obj.get("start_time")), argv=tuple(map(str, obj["argv"])),
            log_path=None if log is None else Path(log), started=str(obj.get("started", "")),
        )


@dataclass(frozen=True)
class DevnetState:
    """Everything one devnet directory holds: its nodes (hub first) and its agents."""

    directory: Path
    yagna: Path
    subnet: str
    payment_network: str
    payment_driver: str
    phase: Phase = "starting"
    created: str = field(default_factory=utc_now)
    nodes: tuple[NodeState, ...] = ()
    agents: tuple[AgentState, ...] = ()

    @property
    def hub(self) -> NodeState:
        """The requestor node, whose GSB router is every node's central-net hub."""
        for node in self.nodes:
            if node.role == "requestor":
                return node
        raise DevnetError(f"{self.directory / STATE_NAME} lists no requestor node")

    @property
    def requestor(self) -> NodeState:
        return self.hub

    @property
    def providers(self) -> tuple[NodeState, ...]:
        return tuple(n for n in self.nodes if n.role == "provider")

    def node(self, name: str) -> NodeState:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def with_node(self, node: NodeState) -> DevnetState:
        """This state with ``node`` added, or replacing the node of the same name."""
        nodes = list(self.nodes)
        for i, known in enumerate(nodes):
            if known.name == node.name:
                nodes[i] = node
                break
        else:
            nodes.append(node)
        return replace(self, nodes=tuple(nodes))

    def with_agent(self, agent: AgentState) -> DevnetState:
        if any(a.name == agent.name for a in self.agents):
            raise ValueError(f"agent {agent.name!r} is already recorded")
        if all(n.name != agent.node for n in self.nodes):
            raise ValueError(f"agent {agent.name!r} names unknown node {agent.node!r}")
        return replace(self, agents=self.agents + (agent,))

    def stop_groups(self) -> list[list[tuple[str, ProcessRef]]]:
        """Every recorded process, labelled, in groups to stop one after the other: agents
        (they need their daemon to leave cleanly), then providers, then the hub (the others'
        router). The members of a group can be stopped together."""
        agents = [(f"agent {a.name}", a.process) for a in self.agents]
        providers = [(n.name, n.process) for n in self.providers]
        hubs = [(n.name, n.process) for n in self.nodes if n.role == "requestor"]
        return [group for group in (agents, providers, hubs) if group]

    def running_pids(self) -> list[int]:
        return [p.pid for group in self.stop_groups() for _, p in group if p.running()]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "directory": str(self.directory), "phase": self.phase,
            "created": self.created, "yagna": str(self.yagna), "subnet": self.subnet,
            "payment_network": self.payment_network, "payment_driver": self.payment_driver,
            "hub": next((n.name for n in self.nodes if n.role == "requestor"), None),
            "nodes": [n.to_json() for n in self.nodes],
            "agents": [a.to_json() for a in self.agents],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DevnetState:
        if obj.get("format") != FORMAT:
            raise ValueError(f"format {obj.get('format')!r}, expected {FORMAT!r}")
        phase = obj["phase"]
        if phase not in ("starting", "up"):
            raise ValueError(f"unknown phase {phase!r}")
        return cls(
            directory=Path(obj["directory"]), yagna=Path(obj["yagna"]), subnet=str(obj["subnet"]),
            payment_network=str(obj["payment_network"]),
            payment_driver=str(obj["payment_driver"]), phase=phase, created=str(obj["created"]),
            nodes=tuple(NodeState.from_json(n) for n in obj["nodes"]),
            agents=tuple(AgentState.from_json(a) for a in obj["agents"]),
        )


def load(directory: Path) -> DevnetState | None:
    """The state recorded in ``directory``; None if there is none."""
    path = directory / STATE_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DevnetError(f"cannot read {path}: {exc}") from exc
    try:
        return DevnetState.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise DevnetError(f"{path} is not a devnet state file ({exc}); "
                          "remove it by hand if nothing of it is running") from exc


def save(state: DevnetState) -> None:
    """Writes the state atomically: a reader never sees half a file."""
    write_atomic(state.directory / STATE_NAME, json.dumps(state.to_json(), indent=2) + "\n")


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Replaces ``path`` by ``text`` in one step. Mode 0600: the files hold app keys."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
