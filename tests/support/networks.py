"""The two networks the requestor's end-to-end tests run on, behind one small interface.

``LocalNet`` is the embedded local network; ``DevnetNet`` is a devnet of real yagna daemons with
one Python provider agent per provider node. Both offer the same providers (the local network's
default configurations: the devnet's ``provider-N`` runs configuration N-1), so a test asks for
``providers=2`` and gets the same two on either network.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from support.yagna import pid_alive
from workgen import Golem, LocalNetwork, ProviderFilter, events
from workgen.backends.yagna import Yagna
from workgen.devnet import Devnet
from workgen.devnet.network import registry_url
from workgen.images import ImageFiles
from workgen.requestor.strategy import MarketStrategy, default_strategy

HONEST = 3
"""Provider nodes running honest agents (``provider-1`` … ``provider-3``)."""

OVERCHARGER = "devnet-overcharger"
"""The agent on the last node: it bills ten times the agreed price, on a subnet of its own."""

# Nothing listens here: the image registry is unreachable at once, as on an offline machine.
OFFLINE_REGISTRY = "http://127.0.0.1:9"


_IMAGE_CACHES: dict[Path, Path] = {}
_IMAGE_STORES: dict[Path, Path] = {}


def devnet_image_store(net: Devnet) -> ImageFiles:
    """The image store the test devnet's registry serves (tests add images to it)."""
    return ImageFiles(_IMAGE_STORES[net.directory])


def start_test_devnet(directory: Path, images: Path | None = None) -> Devnet:
    """A devnet of ``HONEST`` honest providers plus the overcharging one, and an image registry
    serving the store ``images`` (default: beside ``directory``)."""
    net = Devnet(directory)
    _IMAGE_STORES[net.directory] = images or directory.parent / "images"
    net.up(HONEST + 1)
    # Sandbox users must pass through to the unpacked images: not under pytest's private
    # temporary directory.
    cache = Path(tempfile.mkdtemp(prefix="workgen-test-image-cache-"))
    os.chmod(cache, 0o755)
    _IMAGE_CACHES[net.directory] = cache
    try:
        net.serve_images(devnet_image_store(net).root)
        # Debit notes every second: long jobs see many, and the allocation renewal is exercised.
        # Strict images: a demand for an image the providers can't get is refused, as on the
        # local network.
        net.start_providers(debit_note_interval=1.0, dev_images=False, image_cache=cache,
                            nodes=[f"provider-{i + 1}" for i in range(HONEST)])
        net.start_agent(f"agent-{OVERCHARGER}", f"provider-{HONEST + 1}", [
            # -P: not this folder first on the path (its http.py would shadow the stdlib's).
            sys.executable, "-P", str(Path(__file__).with_name("overcharger.py")), "10",
            "provider", "run", "--name", OVERCHARGER, "--subnet", overcharger_subnet(net),
            "--debit-note-interval", "1", "--no-dev-images"])
    except BaseException:
        net.down()
        raise
    return net


def overcharger_subnet(net: Devnet) -> str:
    return f"{net.state().subnet}-overcharge"


def stop_test_devnet(net: Devnet) -> None:
    """Brings the devnet down and checks that every process it started is gone."""
    state = net.state()
    recorded = [n.pid for n in state.nodes] + [a.pid for a in state.agents]
    net.down()
    cache = _IMAGE_CACHES.pop(net.directory, None)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
    left = [pid for pid in recorded if pid_alive(pid)]
    assert not left, f"devnet processes left running: {left}"


class LocalNet:
    """The embedded local network; each Golem gets a network of its own."""

    kind = "local"

    def __init__(self) -> None:
        self.network: LocalNetwork | None = None

    def golem(self, consumer: events.EventConsumer, *, providers: int = 2,
              budget: float | str = 1, strategy: MarketStrategy | None = None,
              **kw: Any) -> Golem:
        self.network = LocalNetwork(providers=providers)
        return Golem(budget=budget, backend=self.network, event_consumer=consumer,
                     strategy=strategy, **kw)

    def kill_sandbox(self, activity_id: str, provider_name: str) -> None:
        assert self.network is not None
        pid = self.network.exe_unit(activity_id).sandbox_pid
        assert pid is not None, f"activity {activity_id} has no sandbox"
        os.kill(pid, signal.SIGKILL)

    def paid(self, agreement_ids: Iterable[str]) -> Decimal:
        """What the network's own books say was paid for these agreements."""
        assert self.network is not None
        ids = set(agreement_ids)
        assert ids, "no agreements to look up"
        return sum((p.amount for p in self.network.ledger.payments if p.agreement_id in ids),
                   Decimal(0))


class DevnetNet:
    """The devnet: each Golem gets a yagna backend on its requestor node, limited (by a
    provider filter) to the first ``providers`` honest providers."""

    kind = "yagna"

    def __init__(self, devnet: Devnet) -> None:
        self.devnet = devnet

    def backend(self, *, subnet: str | None = None, registry: bool = False) -> Yagna:
        """A yagna backend on the requestor node; its image registry is the devnet's if
        ``registry``, else an unreachable one."""
        state = self.devnet.state()
        node = state.requestor
        yagna = Yagna(api_url=node.api_url, appkey=node.appkey, gsb_url=node.gsb_url,
                      subnet=subnet or state.subnet,
                      registry_url=(registry_url(state) if registry else None)
                      or OFFLINE_REGISTRY)
        # Offers reach a new demand within seconds on the devnet; a missing one is not coming.
        yagna.startup_timeout = 15.0
        return yagna

    def provider_names(self, providers: int) -> list[str]:
        if not 1 <= providers <= HONEST:
            raise ValueError(f"the test devnet has {HONEST} honest providers, not {providers}")
        return [f"devnet-provider-{i + 1}" for i in range(providers)]

    def golem(self, consumer: events.EventConsumer, *, providers: int = 2,
              budget: float | str = 1, strategy: MarketStrategy | None = None,
              **kw: Any) -> Golem:
        chosen = ProviderFilter(strategy or default_strategy(),
                                allow=self.provider_names(providers))
        return Golem(budget=budget, backend=self.backend(), event_consumer=consumer,
                     strategy=chosen, **kw)

    def kill_sandbox(self, activity_id: str, provider_name: str) -> None:
        """Kills the sandbox in which the provider's agent runs the activity.

        An agent serves one agreement at a time, so its only bubblewrap child is the one.
        """
        agent = self.agent(provider_name)
        children = [pid for pid in _children(agent.pid) if b"bwrap" in _cmdline(pid)]
        assert len(children) == 1, f"{provider_name} has sandboxes {children}"
        os.kill(children[0], signal.SIGKILL)

    def agent(self, provider_name: str) -> Any:
        node = provider_name.removeprefix("devnet-")
        live = [a for a in self.devnet.state().agents if a.node == node and pid_alive(a.pid)]
        assert len(live) == 1, f"agents of {node}: {live}"
        return live[0]

    def paid(self, agreement_ids: Iterable[str]) -> Decimal:
        """What the providers' daemons record as accepted on their invoices for these
        agreements (offline, yagna settles nothing on chain: acceptance is the payment)."""
        ids = set(agreement_ids)
        assert ids, "no agreements to look up"
        total = Decimal(0)
        for node in self.devnet.state().providers:
            request = urllib.request.Request(f"{node.api_url}/payment-api/v1/invoices",
                                             headers={"Authorization": f"Bearer {node.appkey}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                invoices = json.load(response)
            total += sum((Decimal(i["amount"]) for i in invoices
                          if i["agreementId"] in ids and i["status"] == "ACCEPTED"), Decimal(0))
        return total


Network = LocalNet | DevnetNet


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


class Recorder:
    """An event consumer that keeps what the tests look at, and knows each activity's
    provider."""

    def __init__(self) -> None:
        self.events: list[events.Event] = []
        self.on_event: list[Callable[[events.Event], None]] = []
        self.providers: dict[str, str] = {}

    def __call__(self, event: events.Event) -> None:
        self.events.append(event)
        if isinstance(event, events.ActivityCreated):
            self.providers[event.activity_id] = event.provider_name
        if os.environ.get("DEBUG_EVENTS"):
            print(event, flush=True)
        for hook in self.on_event:
            hook(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]
