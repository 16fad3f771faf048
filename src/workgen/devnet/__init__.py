"""workgen.devnet: a local Golem network of real yagna daemons, offline, in one call.

::

    from workgen.devnet import Devnet

    devnet = Devnet("/tmp/devnet")          # default: $WORKGEN_DEVNET_DIR or
                                            # ~/.local/state/workgen/devnet
    state = devnet.up(providers=2)          # requestor (the hub) + 2 provider daemons
    state.requestor.api_url, state.requestor.appkey   # also in /tmp/devnet/devnet.env
    devnet.status().healthy
    devnet.down()                           # stops everything by PID, removes the data

The daemons (``yagna`` from the ``golem-node`` package) run in central-net mode on loopback:
the requestor's daemon embeds the network's router and every provider daemon connects to it.
They outlive the process that started them; ``workgen devnet up|status|down`` is the CLI.
Provider agents (:class:`AgentState`) are recorded in the same state so that ``down`` stops
them first.
"""

from ._proc import ProcessRef, Stopped
from .daemon import DaemonConfig, PaymentInit, YagnaDaemon, find_yagna, get_me
from .errors import (
    DaemonStartError, DevnetError, DevnetRunning, NoDevnet, PortInUse, YagnaNotFound,
)
from .network import (
    PAYMENT_DRIVER, PAYMENT_NETWORK, SUBNET, AgentStatus, Devnet, DevnetStatus, NodeStatus,
    default_directory, env_text, node_env,
)
from .state import AgentState, DevnetState, NodeState

__all__ = [
    "AgentState",
    "AgentStatus",
    "DaemonConfig",
    "DaemonStartError",
    "Devnet",
    "DevnetError",
    "DevnetRunning",
    "DevnetState",
    "DevnetStatus",
    "NoDevnet",
    "NodeState",
    "NodeStatus",
    "PAYMENT_DRIVER",
    "PAYMENT_NETWORK",
    "PaymentInit",
    "PortInUse",
    "ProcessRef",
    "SUBNET",
    "Stopped",
    "YagnaDaemon",
    "YagnaNotFound",
    "default_directory",
    "env_text",
    "find_yagna",
    "get_me",
    "node_env",
]
