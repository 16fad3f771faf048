"""``workgen devnet up|status|down``: a local Golem network of real yagna daemons, offline.

``up`` starts the daemons and returns while they keep running; ``status`` and ``down`` find them
again through the devnet's directory (``--dir``; default ``$WORKGEN_DEVNET_DIR`` or
``~/.local/state/workgen/devnet``). Exit codes: 0 success; 1 the operation failed (a devnet
already runs there, there is none, a daemon did not start, ``status`` found something down);
2 the environment or the arguments are wrong (no yagna binary, bad option); 130 after Ctrl-C and
143 after SIGTERM (an interrupted ``up`` stops what it started).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..devnet import Devnet, DevnetError, NodeState, YagnaNotFound, default_directory
from ..devnet.daemon import READY_TIMEOUT_S
from ..devnet.network import DEFAULT_PROVIDERS
from ..provider.terms import DEFAULT_ACCEPT_TIMEOUT
from ._options import seconds, whole

MAX_PROVIDERS = 256


def add_parser(commands: Any) -> None:
    devnet = commands.add_parser(
        "devnet", help="run a local Golem network of real yagna daemons",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = devnet.add_subparsers(dest="devnet_command", required=True, metavar="COMMAND")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--dir", type=Path, default=None, metavar="PATH",
                       help=f"the devnet's directory (default: {default_directory()})")
    up = sub.add_parser("up", parents=[where], help="start a requestor node and N provider nodes")
    up.add_argument("--providers", type=whole(minimum=0, maximum=MAX_PROVIDERS),
                    default=DEFAULT_PROVIDERS, metavar="N",
                    help=f"number of provider nodes (default: {DEFAULT_PROVIDERS})")
    up.add_argument("--yagna", type=Path, default=None, metavar="PATH",
                    help="the yagna binary (default: next to this Python, else on PATH)")
    up.add_argument("--timeout", type=seconds, default=READY_TIMEOUT_S, metavar="SECONDS",
                    help=f"time for all daemons to answer (default: {READY_TIMEOUT_S:.0f})")
    up.add_argument("--no-agents", action="store_true",
                    help="start the daemons only, without the Python providers")
    up.add_argument("--strict-images", action="store_true",
                    help="providers refuse demands whose image they can neither find nor "
                         "fetch (default: such images run on the host system image, which "
                         "the deploy's output and the provider's log say, so other SDKs' "
                         "examples that name images of Golem's registry run offline)")
    up.add_argument("--image-store", type=Path, default=None, metavar="DIR",
                    help="the image store served to the devnet's requestors and providers as "
                         "its image registry (default: $WORKGEN_IMAGES or "
                         "~/.local/share/workgen/images)")
    up.add_argument("--no-image-registry", action="store_true",
                    help="serve no image registry (GOLEM_REGISTRY_URL is then not set)")
    up.add_argument("--debit-note-interval", type=seconds, default=60.0, metavar="SECONDS",
                    help="how often the providers send debit notes (default: 60)")
    up.add_argument("--debit-note-accept-timeout", type=seconds, default=None,
                    metavar="SECONDS", help="the deadline for accepting a debit note the "
                    "providers offer; an agreement whose requestor misses it is broken "
                    "(default: the provider's, "
                    f"{DEFAULT_ACCEPT_TIMEOUT:g})")
    up.set_defaults(handler=_up)
    status = sub.add_parser("status", parents=[where], help="show the devnet's processes")
    status.set_defaults(handler=_status)
    down = sub.add_parser("down", parents=[where], help="stop the devnet and remove its data")
    down.set_defaults(handler=_down)


def _up(args: argparse.Namespace) -> int:
    devnet = Devnet(args.dir)
    try:
        state = devnet.up(args.providers, yagna=args.yagna, ready_timeout=args.timeout)
    except YagnaNotFound as exc:
        return _fail(exc, 2)
    except DevnetError as exc:
        return _fail(exc, 1)
    if not args.no_agents:
        try:
            if not args.no_image_registry:
                devnet.serve_images(args.image_store)
            devnet.start_providers(dev_images=not args.strict_images,
                                   debit_note_interval=args.debit_note_interval,
                                   accept_timeout=args.debit_note_accept_timeout)
        except BaseException as exc:
            devnet.down()
            if isinstance(exc, Exception):
                return _fail(exc, 1)
            raise
    print(devnet.env_path.read_text().rstrip())
    print(f"# written to {devnet.env_path}; state in {devnet.state_path}")
    for node in state.nodes:
        print(_node_line(node))
    for node in state.nodes:
        if node.payment_init is not None and not node.payment_init.ok:
            print(f"warning: {node.name}: {node.payment_init.detail}", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    devnet = Devnet(args.dir)
    try:
        status = devnet.status()
    except DevnetError as exc:
        return _fail(exc, 1)
    state = status.state
    print(f"devnet in {devnet.directory} ({state.phase}, since {state.created}, "
          f"subnet {state.subnet})")
    for node_status in status.nodes:
        node = node_status.node
        if node_status.me is not None:
            health = f"running, /me {node_status.me.get('identity')}"
        elif node_status.running:
            health = f"running, not answering: {node_status.error}"
        else:
            health = "NOT RUNNING"
        print(f"{_node_line(node)}  [{health}]")
        if node.payment_init is not None and not node.payment_init.ok:
            print(f"  warning: {node.payment_init.detail}")
    for agent_status in status.agents:
        agent = agent_status.agent
        health = "running" if agent_status.running else "NOT RUNNING"
        print(f"agent {agent.name:<11} for {agent.node}  pid {agent.pid}  [{health}]  "
              f"{' '.join(agent.argv)}")
    return 0 if status.healthy else 1


def _down(args: argparse.Namespace) -> int:
    devnet = Devnet(args.dir)
    try:
        stopped = devnet.down()
    except DevnetError as exc:
        return _fail(exc, 1)
    for entry in stopped:
        print(f"{entry.what}: pid {entry.pid} {entry.outcome}")
    print(f"devnet in {devnet.directory} is down; its data is removed")
    return 0


def _node_line(node: NodeState) -> str:
    role = "requestor (hub)" if node.role == "requestor" else "provider"
    return (f"{node.name:<11} {role:<15} {node.node_id}  pid {node.pid}  api {node.api_url}  "
            f"gsb {node.gsb_url}  log {node.log_path}")


def _fail(exc: Exception, code: int) -> int:
    print(f"workgen devnet: {exc}", file=sys.stderr)
    return code
