"""``LocalNetwork``: a whole Golem network in this process, behind the backend seam.

N providers (:class:`~workgen.provider.agent.ProviderAgent`, linked in by :mod:`.provider`)
publish offers on an in-process market (:mod:`.market`); demands
are matched with Golem's constraint language, providers negotiate, approve agreements, run
activities in real sandboxed execution units (:mod:`.activity`), send debit notes from measured
usage and one invoice per agreement, and the requestor pays them from a ledger that enforces
the budget (:mod:`.ledger`). Files move by the storage's own handles (:mod:`.storage`); images come from
an image store (:mod:`workgen.provider.images`).

Concurrency: the network owns one :class:`asyncio.TaskGroup`, entered by :meth:`start` and
left by :meth:`aclose`; every background task (each activity's execution unit, each
agreement's debit-note loop, a provider's own termination) runs in it, so nothing outlives the
network. Two networks share nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Coroutine, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from ..base import (
    Capabilities,
    Activity, Agreement, Allocation, BatchHandle, DebitNote, Demand, DemandSubscription,
    Invoice, PaymentEvent, Proposal, ProposalRejectedEvent,
)
from ..._aio import logging_failures
from ..._bounded import RecentIds
from ...errors import (
    ActivityClosed, AgreementRejected, BackendError, BackendUnavailable, ImageNotFound,
)
from ...protocol.exescript import Command
from ...protocol.properties import COM_PAYMENT_CHOSEN_PLATFORM, payment_platform_address
from ...protocol.results import utc_now
from ...provider.agent import AgentAgreement, NegotiationRejected, ProviderAgent
from ...provider.exeunit.unit import ExeUnit
from ...images.store import ImageFiles
from ...provider.images import DEV_IMAGES_ENV, FetchPolicy, ImageCache, ImageResolver, ImageStore
from ...provider.offer import ProviderConfig, default_provider_configs
from ...provider.terms import DEFAULT_IDLE_TIMEOUT
from .activity import ActivityRecord
from .ledger import Ledger, new_address
from .market import Market, ParsedDemand, new_id
from .payments import PaymentChannel
from .provider import LocalLink
from .storage import SCHEME, LocalStorage

log = logging.getLogger(__name__)

KEEP_DESTROYED = 256
"""Destroyed activities whose records are kept; older ones are remembered by id only, so that a
network serving activity after activity (a service's restarts, a job's days) stays small."""
KEEP_GONE_IDS = 4096
CLOSE_TIMEOUT = 15.0
"""How long :meth:`LocalNetwork.aclose` lets agreements end gracefully before cancelling."""


class LocalNetwork:
    """An in-process Golem network of ``providers`` (default: one per CPU core).

    ``debit_note_interval`` is what providers offer (a demand may ask for another, see
    :mod:`workgen.provider.terms`). A demand's image is found among the root directories
    registered in ``images``, then in ``image_files`` (the image store ``workgen image``
    manages, by default), then at the demand's URL (the network's providers are the user's own
    machine, so loopback addresses are allowed); images are unpacked into ``image_cache`` (by
    default the user's cache). ``dev_images=True`` or ``WORKGEN_DEV_IMAGES=1`` runs images found
    nowhere on the host image, with a warning. ``work_root`` is where the
    network's temporary directory goes (the system's temporary directory by default). A
    provider breaks an agreement that has had no live activity for
    ``idle_agreement_timeout`` seconds, as on yagna.
    """

    name = "local"
    startup_timeout = 2.0
    """Offers on the local network are there at once: a short wait decides 'no provider'."""
    # Following every batch's events measured an eighth of the calls of a trivial task; the
    # results say all the requestor needs unless output streams, which still follows them.
    capabilities = Capabilities(cheap_events=False, batch_cancel=True)

    def __init__(
        self,
        providers: int | Sequence[ProviderConfig] | None = None,
        *,
        subnet: str = "public",
        debit_note_interval: float = 60.0,
        images: ImageStore | None = None,
        dev_images: bool = False,
        work_root: Path | None = None,
        idle_agreement_timeout: float = DEFAULT_IDLE_TIMEOUT,
        image_files: ImageFiles | None = None,
        image_cache: ImageCache | None = None,
    ):
        if providers is None:
            configs = default_provider_configs(os.cpu_count() or 1)
        elif isinstance(providers, int):
            configs = default_provider_configs(providers)
        else:
            configs = list(providers)
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique: {names}")
        if not math.isfinite(debit_note_interval) or debit_note_interval <= 0:
            raise ValueError(f"debit_note_interval must be positive, got {debit_note_interval}")
        self.subnet = subnet
        self.debit_note_interval = float(debit_note_interval)
        if not math.isfinite(idle_agreement_timeout) or idle_agreement_timeout <= 0:
            raise ValueError("idle_agreement_timeout must be positive, got "
                             f"{idle_agreement_timeout}")
        self._idle_timeout = float(idle_agreement_timeout)
        self.images = images if images is not None else ImageStore()
        self.dev_images = dev_images or os.environ.get(DEV_IMAGES_ENV) == "1"
        self.ledger = Ledger()
        """The requestor's allocations and payments (for inspection)."""
        self.storage = LocalStorage(work_root)
        self._configs = configs
        self._work_root = work_root
        self._resolver = ImageResolver(
            self.images, dev_images=self.dev_images, owner="the local network",
            remedy="build or add it with 'workgen image build|add' (or register a root "
                   "directory with ImageStore.register(rootfs, hash=..., tags=[...])), or run "
                   "in development mode (LocalNetwork(dev_images=True) or "
                   f"{DEV_IMAGES_ENV}=1) to use the host system image instead",
            files=image_files if image_files is not None else ImageFiles(),
            cache=image_cache, fetch=FetchPolicy(allow_private=True))
        self._market = Market()
        self._providers: dict[str, ProviderAgent] = {}
        self._agreements: dict[str, ProviderAgent] = {}
        self._activities: dict[str, ActivityRecord] = {}
        self._destroyed: dict[str, None] = {}  # the kept records of destroyed activities, oldest first
        self._gone = RecentIds(KEEP_GONE_IDS)
        self._payments = PaymentChannel(self.ledger)
        self._state: Literal["new", "running", "closing", "closed"] = "new"
        self._stack = contextlib.AsyncExitStack()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dir: Path | None = None
        self._closed = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> LocalNetwork:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Create the providers and publish their offers. Idempotent."""
        if self._state == "running":
            return
        if self._state != "new":
            raise RuntimeError("this local network is closed: make a new one")
        if self._work_root is not None:
            _check_reachable(self._work_root)
        self._dir = Path(tempfile.mkdtemp(prefix="workgen-local-", dir=self._work_root))
        # Searchable by others: sandboxes run as users of their own and must reach their
        # volumes under activities/; nothing here can be listed by them.
        os.chmod(self._dir, 0o711)
        activities = self._dir / "activities"
        activities.mkdir()
        os.chmod(activities, 0o711)
        self._tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._state = "running"
        for config in self._configs:
            node_id = new_address()
            link = LocalLink(node_id, self._market, self._payments, self._spawn,
                             lambda: self._state == "running", self._activities)
            provider = ProviderAgent(
                config, node_id, link, subnet=self.subnet, platform=self.ledger.platform,
                debit_note_interval=self.debit_note_interval, images=self._resolver,
                work_root=activities, remote_schemes={SCHEME: self.storage.scheme},
                idle_timeout=self._idle_timeout)
            self._providers[node_id] = provider
            await provider.publish()
        log.info("local network started with %d providers", len(self._providers))

    async def aclose(self) -> None:
        """End every agreement (closing its activities), every subscription, every task, and
        remove the network's files. Idempotent; bounded by about :data:`CLOSE_TIMEOUT`."""
        if self._state in ("closing", "closed"):
            await self._closed.wait()
            return
        was_running = self._state == "running"
        self._state = "closing"
        try:
            if was_running:
                await self._shut_down()
        finally:
            self._payments.close()
            if self._dir is not None:
                await asyncio.to_thread(shutil.rmtree, self._dir, True)
            await self.storage.aclose()
            self._state = "closed"
            self._closed.set()

    async def _shut_down(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                async with asyncio.TaskGroup() as tg:
                    for provider in self._providers.values():
                        tg.create_task(provider.shutdown("the local network is closing",
                                                         "requestor"))
        except TimeoutError:
            log.warning("agreements did not end within %gs; cancelling what is left",
                        CLOSE_TIMEOUT)
        await self._market.aclose()
        # Whatever is left (a debit-note loop between two notes, a stuck activity) is
        # cancelled; an execution unit still closes its sandbox on the way out.
        for task in list(self._tasks):
            task.cancel()
        await self._stack.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._tg is None or self._state == "closed":
            coro.close()
            raise RuntimeError("the local network is not running")
        # A failing task would cancel the task that called start() (the group's parent).
        task = self._tg.create_task(
            logging_failures(coro, f"local network task {name!r}", log), name=name)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            # Cancelled before it ever ran: close the wrapped coroutine, which never will.
            if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                coro.close()

        task.add_done_callback(done)

    def _require_running(self) -> None:
        if self._state != "running":
            raise RuntimeError(f"the local network is {self._state}: use it between start() "
                               "and aclose()")

    # -- inspection (for tests and tools; read-only) ----------------------------------------

    @property
    def providers(self) -> list[ProviderAgent]:
        """The providers (``name``, ``node_id``, ``config``, ``agreements``), once started."""
        return list(self._providers.values())

    def exe_unit(self, activity_id: str) -> ExeUnit:
        """The execution unit of an activity (to inspect it, or to break it in a test)."""
        return self._record(activity_id).unit

    @property
    def directory(self) -> Path | None:
        """The network's temporary directory while it runs."""
        return self._dir

    # -- payment ----------------------------------------------------------------------------

    async def create_allocation(self, amount: Decimal) -> Allocation:
        return self.ledger.create_allocation(amount)

    async def release_allocation(self, allocation: Allocation) -> None:
        self.ledger.release_allocation(allocation)

    async def demand_decoration(self, allocation: Allocation) -> Demand:
        self.ledger.check_usable(allocation)
        platform = allocation.payment_platform
        address = payment_platform_address(platform)
        return Demand(
            properties={address: allocation.address, COM_PAYMENT_CHOSEN_PLATFORM: platform},
            constraints=f"({address}=*)",
        )

    def payment_events(self) -> AsyncIterator[PaymentEvent]:
        """Debit notes and invoices, in the order providers sent them, until :meth:`aclose`.

        One stream, buffered from the start: each event is delivered once, to whichever
        iterator takes it, so a requestor should have a single consumer.
        """
        return self._payments.events()

    async def accept_debit_note(self, note: DebitNote, allocation: Allocation) -> None:
        self._payments.accept_debit_note(note, allocation)

    async def reject_debit_note(self, note: DebitNote, reason: str) -> None:
        """Record the rejection; the provider then ends the agreement and invoices the work."""
        known = self._payments.reject_debit_note(note, reason)
        if self._state == "running":
            self._providers[known.issuer_id].debit_note_rejected(known.agreement_id, known.id,
                                                                 reason)

    async def accept_invoice(self, invoice: Invoice, allocation: Allocation) -> None:
        """Pay the invoice (its issued amount) from ``allocation``, all or nothing.

        Raises :class:`~workgen.errors.BudgetExhausted` if it does not fit in what remains.
        """
        self._payments.accept_invoice(invoice, allocation)

    async def reject_invoice(self, invoice: Invoice, reason: str) -> None:
        self._payments.reject_invoice(invoice, reason)

    # -- market -----------------------------------------------------------------------------

    async def subscribe_demand(self, demand: Demand) -> DemandSubscription:
        """Publish ``demand``; its subscription yields an ``Initial`` proposal per match.

        Raises ``ConstraintSyntaxError`` (a ``ValueError``) for malformed constraints and
        :class:`~workgen.errors.ImageNotFound` if the demand's image cannot be resolved.
        """
        self._require_running()
        parsed = ParsedDemand.parse(demand)
        self._resolver.resolve(parsed.properties)
        return self._market.subscribe(parsed)

    async def counter_proposal(
        self, subscription: DemandSubscription, proposal: Proposal, demand: Demand
    ) -> None:
        """The provider answers on the subscription: a ``Draft`` whose ``prev_proposal_id`` is
        our counter's id, or a :class:`ProposalRejectedEvent` with its reason."""
        self._require_running()
        sub = self._market.subscription(subscription)
        record = self._market.lookup(proposal)
        if record.subscription_id != sub.id:
            raise ValueError(f"proposal {proposal.id} was not made to subscription {sub.id}")
        parsed = ParsedDemand.parse(demand)
        provider = self._providers[record.offer.provider_id]
        counter_id = new_id()
        try:
            current = self._market.current_offer(provider.node_id)
            if current is None or current.id != record.offer.id:
                raise NegotiationRejected(f"the offer {record.offer.id} was withdrawn",
                                          final=False)
            properties = provider.negotiate(parsed.properties, parsed.constraint)
        except (NegotiationRejected, ImageNotFound) as exc:
            sub.push(ProposalRejectedEvent(counter_id, provider.node_id, str(exc),
                                           final=getattr(exc, "final", True)))
            return
        draft = Proposal(
            id=new_id(), issuer_id=provider.node_id, properties=properties,
            constraints=record.offer.constraints, state="Draft", prev_proposal_id=counter_id,
        )
        self._market.record(draft, sub, record.offer, counter_demand=parsed)
        sub.push(draft)

    async def reject_proposal(
        self, subscription: DemandSubscription, proposal: Proposal, reason: str
    ) -> None:
        self._market.lookup(proposal)
        log.debug("proposal %s rejected: %s", proposal.id, reason)

    async def make_agreement(self, proposal: Proposal, valid_to: datetime) -> Agreement:
        """An agreement on a provider's ``Draft``; :class:`~workgen.errors.AgreementRejected`
        if the provider is busy with another agreement or has withdrawn that offer."""
        self._require_running()
        record = self._market.lookup(proposal)
        if record.proposal.state != "Draft" or record.counter_demand is None:
            raise ValueError(f"an agreement is made on a provider's Draft proposal, "
                             f"not on a {record.proposal.state} one")
        if valid_to.tzinfo is None:
            raise ValueError("valid_to must be an aware datetime (with a time zone)")
        if valid_to <= utc_now():
            raise ValueError(f"valid_to {valid_to.isoformat()} is in the past")
        provider = self._providers[record.offer.provider_id]
        agreement = Agreement(id=new_id() + new_id(), proposal=record.proposal,
                              demand=record.counter_demand.demand, valid_to=valid_to)
        if not provider.busy:
            current = self._market.current_offer(provider.node_id)
            if current is None or current.id != record.offer.id:
                raise AgreementRejected(
                    f"{provider.name} rejected the agreement: its offer {record.offer.id} was "
                    "withdrawn", provider_id=provider.node_id)
        demand = record.counter_demand
        await provider.approve(agreement.id, offer=agreement.proposal.properties,
                               demand=demand.properties, constraint=demand.constraint,
                               expires_at=valid_to.timestamp())
        self._agreements[agreement.id] = provider
        return agreement

    def _provider_agreement(self, agreement: Agreement) -> tuple[ProviderAgent, AgentAgreement]:
        provider = self._agreements.get(agreement.id)
        if provider is None:
            raise ValueError(f"agreement {agreement.id} was not made on this local network")
        return provider, provider.agreement(agreement.id)

    async def terminate_agreement(self, agreement: Agreement, reason: str) -> None:
        """End the agreement: its activities are destroyed, its debit notes stop, and its
        provider sends one invoice (on :meth:`payment_events`) before this returns."""
        provider, held = self._provider_agreement(agreement)
        await provider.terminate(held, reason, "requestor")

    # -- activity ---------------------------------------------------------------------------

    async def create_activity(self, agreement: Agreement) -> Activity:
        self._require_running()
        provider, held = self._provider_agreement(agreement)
        activity = provider.create_activity(held, new_id())
        record = ActivityRecord(activity)
        self._activities[record.id] = record
        try:
            await activity.wait_ready()
        except asyncio.CancelledError:
            activity.request_close("requestor", "abandoned while being created")
            raise
        except Exception as exc:
            raise BackendError(f"{provider.name} could not create an activity: {exc}") from exc
        if held.state != "Approved":
            # The agreement ended while the unit started; the unit went down with it.
            raise AgreementRejected(f"agreement {held.id} with {provider.name} is terminated "
                                    f"({held.reason})", provider_id=provider.node_id)
        return record.activity

    def _record(self, activity: Activity | str) -> ActivityRecord:
        activity_id = activity if isinstance(activity, str) else activity.id
        record = self._activities.get(activity_id)
        if record is None and activity_id in self._gone:
            raise ActivityClosed(f"activity {activity_id} was destroyed", activity_id=activity_id)
        if record is None:
            raise ValueError(f"activity {activity_id} was not created on this local network")
        return record

    async def exec(
        self, activity: Activity, commands: Sequence[Command], timeout: float | None
    ) -> BatchHandle:
        """Start a batch; :class:`~workgen.errors.ActivityClosed` if we destroyed the activity,
        :class:`~workgen.errors.ActivityLost` if it broke. See :class:`.activity.LocalBatch`
        for how its events and results are consumed."""
        return self._record(activity).exec(commands, timeout)

    async def activity_state(self, activity: Activity) -> str:
        if activity.id in self._gone:
            return "Terminated"  # as yagna answers for an activity destroyed long ago
        return self._record(activity).unit.state.value

    async def activity_usage(self, activity: Activity) -> dict[str, float]:
        return dict(await self._record(activity).unit.usage())

    async def destroy_activity(self, activity: Activity) -> None:
        """Close the execution unit: its processes are killed and its files removed."""
        if activity.id in self._gone:
            return
        record = self._record(activity)
        await record.close("requestor", "destroyed by the requestor")
        self._destroyed[record.id] = None
        while len(self._destroyed) > KEEP_DESTROYED:
            oldest = next(iter(self._destroyed))
            del self._destroyed[oldest]
            self._activities.pop(oldest, None)
            self._gone.add(oldest)


def _check_reachable(root: Path) -> None:
    """Fail at start, not at the first deploy, if sandboxes could not reach their volumes."""
    if os.geteuid() != 0:
        return  # sandboxes run as ourselves then
    for directory in [root.resolve(), *root.resolve().parents]:
        if directory.exists() and not os.stat(directory).st_mode & 0o001:
            raise BackendUnavailable(
                f"work_root {root} is not reachable by sandbox users: {directory} lacks "
                "search permission for others (chmod o+x), which the sandboxes, running as "
                "users of their own, need to reach their volumes"
            )
