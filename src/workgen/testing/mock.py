"""``MockBackend``: an in-memory backend for fast tests of requestor logic.

It keeps the seam's contract (:func:`workgen.testing.check_backend` passes on it) with no
process, sandbox or daemon: providers are records that offer, negotiate and sign as workgen's
provider agent does (one agreement at a time, a non-final "busy" refusal while taken); a batch
runs its commands one after the other in a task, with ``run`` commands answered by *programs*,
Python functions keyed by the command's basename. The default programs are a small,
documented vocabulary (:data:`DEFAULT_PROGRAMS`); pass your own to model anything else.
Faults are properties of a :class:`MockProvider` (refusing, losing its activity after some
batches, overcharging), or of the whole backend (:meth:`MockBackend.go_away`: the daemon dies).

It is a test double and says so: its proposals, activities and payments are not a network's.
Use it to test how a requestor reacts, never as evidence that work ran anywhere.
"""

from __future__ import annotations

import asyncio
import itertools
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

from ..backends.base import (
    Activity, Agreement, Allocation, Capabilities, DebitNote, Demand, Destination,
    Invoice, MarketEvent, PaymentEvent, Proposal, ProposalRejectedEvent, Source,
)
from ..errors import (
    ActivityClosed, ActivityLost, AgreementRejected, BackendUnavailable, BudgetExhausted,
    DownloadLimitExceeded, PaymentError,
)
from ..protocol.constraints import match, parse_constraints
from ..protocol.exescript import Command, Run, Transfer
from ..protocol.pricing import LinearPricing
from ..protocol.properties import (
    COM_PAYMENT_CHOSEN_PLATFORM, NODE_DEBUG_SUBNET, USAGE_CPU_SEC, USAGE_DURATION_SEC,
    flatten_properties, payment_platform_address,
)
from ..protocol.results import (
    CommandOutcome, CommandResult, FailureKind, Finished, RuntimeEvent, Started, utc_now,
)
from ..provider.offer import ProviderConfig, offer_properties
from ..provider.terms import TermsRefused, negotiate

PLATFORM = "mock"

# -- programs --------------------------------------------------------------------------------


@dataclass
class Exit:
    """What a program did: its exit code and output."""

    code: int = 0
    stdout: str = ""
    stderr: str = ""


@dataclass
class Machine:
    """A mock activity's world, as programs see it: a file system of bytes by absolute path."""

    files: dict[str, bytes] = field(default_factory=dict)
    cpu_sec: float = 0.0
    """CPU time the programs used (they add to it); billed as ``golem.usage.cpu_sec``."""


Program = Callable[[list[str], Machine], Awaitable[Exit] | Exit]


def _echo(args: list[str], m: Machine) -> Exit:
    return Exit(stdout=" ".join(args) + "\n")


def _cat(args: list[str], m: Machine) -> Exit:
    out: list[str] = []
    for name in args:
        if name not in m.files:
            return Exit(1, "".join(out), f"cat: {name}: No such file or directory\n")
        out.append(m.files[name].decode(errors="replace"))
    return Exit(stdout="".join(out))


async def _sleep(args: list[str], m: Machine) -> Exit:
    await asyncio.sleep(float(args[0]) if args else 0.0)
    return Exit()


def _sh(args: list[str], m: Machine) -> Exit:
    """``sh -c SCRIPT`` for scripts of ``;``-separated ``echo WORDS [>&2]``, ``exit N`` and
    ``kill -9 $$`` (exit 137, as a shell reports a SIGKILL); anything else exits 127."""
    if len(args) != 2 or args[0] != "-c":
        return Exit(2, stderr="sh: the mock shell takes only -c SCRIPT\n")
    out = Exit()
    for part in filter(None, (p.strip() for p in args[1].split(";"))):
        words = shlex.split(part)
        if words[0] == "exit":
            out.code = int(words[1]) if len(words) > 1 else 0
            return out
        if words[:3] == ["kill", "-9", "$$"]:
            out.code = 137
            return out
        if words[0] == "echo":
            if words[-1] == ">&2":
                out.stderr += " ".join(words[1:-1]) + "\n"
            else:
                out.stdout += " ".join(words[1:]) + "\n"
            continue
        out.code = 127
        out.stderr += f"sh: {words[0]}: not found in the mock shell\n"
        return out
    return out


DEFAULT_PROGRAMS: Mapping[str, Program] = {
    "echo": _echo, "cat": _cat, "sleep": _sleep, "sh": _sh,
    "true": lambda args, m: Exit(0), "false": lambda args, m: Exit(1),
}
"""``echo``, ``cat PATH...``, ``sleep S``, ``true``, ``false`` and a tiny ``sh -c`` (see
:func:`_sh`), whatever directory they are called from (``/bin/echo`` is ``echo``)."""


# -- providers -------------------------------------------------------------------------------


@dataclass
class MockProvider:
    """A provider of a :class:`MockBackend`, and the faults it has."""

    name: str
    pricing: LinearPricing = field(default_factory=lambda: LinearPricing.from_prices(
        {USAGE_DURATION_SEC: 0.0001, USAGE_CPU_SEC: 0.0002}))
    cpu_threads: int = 1
    mem_gib: float = 4.0
    storage_gib: float = 16.0
    refuses: str | None = None
    """Rejects every counter-proposal, for good, with this reason."""
    approves: bool = True
    """Whether it approves an agreement (else ``AgreementRejected``)."""
    activity_fails: bool = False
    """Its activities cannot be created (``ActivityLost``)."""
    lose_activity_after: int | None = None
    """Its activity breaks (``ActivityLost``) when asked to run batch number N+1."""
    overcharge: Decimal = Decimal(0)
    """Added to each invoice it sends."""
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or f"0x{abs(hash(self.name)) % (1 << 160):040x}"


@dataclass
class _ProviderState:
    spec: MockProvider
    properties: dict[str, object]
    agreement: str | None = None


@dataclass
class _ActivityState:
    activity: Activity
    provider: _ProviderState
    machine: Machine = field(default_factory=Machine)
    created: float = field(default_factory=time.monotonic)
    ended: float | None = None
    batches: int = 0
    lost: bool = False
    destroyed: bool = False

    def usage(self) -> dict[str, float]:
        end = self.ended if self.ended is not None else time.monotonic()
        return {USAGE_DURATION_SEC: end - self.created, USAGE_CPU_SEC: self.machine.cpu_sec}


# -- market ----------------------------------------------------------------------------------


class _Subscription:
    def __init__(self, backend: MockBackend, sub_id: str, demand: Demand):
        self.id = sub_id
        self.demand = demand
        self._backend = backend
        self.properties = flatten_properties(dict(demand.properties))
        self.constraint = parse_constraints(demand.constraints)
        self.queue: asyncio.Queue[MarketEvent | None] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[MarketEvent]:
        while True:
            event = await self.queue.get()
            self._backend._check_gone()  # a daemon that died ends the stream with an error
            if event is None:
                return
            yield event

    async def aclose(self) -> None:
        if self._backend._subs.pop(self.id, None) is not None:
            self.queue.put_nowait(None)


# -- batches ---------------------------------------------------------------------------------


class _Batch:
    def __init__(self, backend: MockBackend, state: _ActivityState, batch_id: str,
                 commands: Sequence[Command], timeout: float | None):
        self.id = batch_id
        self._backend = backend
        self._state = state
        self._commands = list(commands)
        self._events: list[RuntimeEvent] = []
        self._outcomes: list[CommandOutcome] = []
        self._changed = asyncio.Event()
        self._cancelled = False
        self._task = asyncio.get_running_loop().create_task(self._run(timeout))

    def _event(self, index: int, kind: Any) -> None:
        self._events.append(RuntimeEvent(self.id, index, utc_now(), kind))
        self._changed.set()

    def _done(self, index: int, code: int, out: Exit | None = None,
              failure: FailureKind | None = None, message: str | None = None) -> None:
        last = failure is not None or index == len(self._commands) - 1
        self._event(index, Finished(code, message))
        result = CommandResult(index=index, result="Ok" if failure is None else "Error",
                               event_date=utc_now(), stdout=out.stdout if out else None,
                               stderr=out.stderr if out else None, message=message,
                               is_batch_finished=last)
        self._outcomes.append(CommandOutcome.of(result, code, failure))
        self._changed.set()

    async def _run(self, timeout: float | None) -> None:
        index = 0
        try:
            async with asyncio.timeout(timeout):
                for index, command in enumerate(self._commands):
                    self._event(index, Started(command.to_json()))
                    code, out, failure, message = await self._command(command)
                    self._done(index, code, out, failure, message)
                    if failure is not None:
                        return
        except TimeoutError:
            self._done(index, -1, None, FailureKind.TIMED_OUT,
                       f"the batch ran past its {timeout}s timeout")
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
            self._done(index, -1, None, FailureKind.CANCELLED, "the batch was cancelled")

    async def _command(self, command: Command
                       ) -> tuple[int, Exit | None, FailureKind | None, str | None]:
        machine = self._state.machine
        if isinstance(command, Run):
            name = PurePosixPath(command.entry_point).name
            program = self._backend.programs.get(name)
            if program is None:
                return 127, None, FailureKind.COMMAND_FAILED, f"{name}: no such mock program"
            started = time.monotonic()
            outcome = program(list(command.args), machine)
            out = await outcome if isinstance(outcome, Awaitable) else outcome
            if name != "sleep":
                machine.cpu_sec += time.monotonic() - started
            if out.code != 0:
                return out.code, out, FailureKind.COMMAND_FAILED, f"exited with {out.code}"
            return 0, out, None, None
        if isinstance(command, Transfer):
            try:
                self._backend._transfer(command.from_, command.to, machine)
            except (KeyError, ValueError) as exc:
                return 1, None, FailureKind.TRANSFER_FAILED, f"transfer failed: {exc}"
            return 0, None, None, None
        return 0, None, None, None  # deploy, start, terminate: nothing to do in memory

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        seen = 0
        while True:
            while seen < len(self._events):
                seen += 1
                yield self._events[seen - 1]
            if self._task.done():
                return
            self._changed.clear()
            await self._changed.wait()

    async def results(self) -> list[CommandOutcome]:
        await asyncio.wait([self._task])
        self._backend._check_up()
        if self._state.destroyed:
            raise ActivityClosed(f"activity {self._state.activity.id} was destroyed",
                                 activity_id=self._state.activity.id)
        return list(self._outcomes)

    async def cancel(self) -> bool:
        if not self._task.done():
            self._cancelled = True
            self._task.cancel()
            await asyncio.wait([self._task])
        return True


# -- storage ---------------------------------------------------------------------------------


@dataclass
class _Source:
    url: str
    store: _MockStorage

    async def aclose(self) -> None:
        self.store.sources.pop(self.url, None)


@dataclass
class _Destination:
    url: str
    store: _MockStorage

    async def read_bytes(self, limit: int | None = None) -> bytes:
        data = self.store.received.get(self.url, b"")
        if limit is not None and len(data) > limit:
            raise DownloadLimitExceeded(
                f"the upload to {self.url} is {len(data)} bytes, more than the limit of {limit}",
                limit=limit, size=len(data))
        return data

    async def save_to(self, path: Path) -> None:
        path.write_bytes(await self.read_bytes())

    async def aclose(self) -> None:
        self.store.received.pop(self.url, None)


class _MockStorage:
    def __init__(self) -> None:
        self.sources: dict[str, bytes] = {}
        self.received: dict[str, bytes] = {}
        self._ids = itertools.count()

    async def publish_file(self, path: Path) -> Source:
        return await self.publish_bytes(path.read_bytes())

    async def publish_bytes(self, data: bytes) -> Source:
        url = f"mock://source/{next(self._ids)}"
        self.sources[url] = bytes(data)
        return _Source(url, self)

    async def new_destination(self, name: str) -> Destination:
        url = f"mock://destination/{next(self._ids)}/{name}"
        self.received[url] = b""
        return _Destination(url, self)


# -- the backend -----------------------------------------------------------------------------


class MockBackend:
    """An in-memory :class:`~workgen.backends.base.Backend` with ``providers`` (a count, or
    :class:`MockProvider` records) and the ``programs`` their ``run`` commands call.

    ``debit_note_interval`` (seconds), when given, makes every agreement send a debit note that
    often. Everything done is on record for assertions: :attr:`invoices_paid`,
    :attr:`debit_notes_accepted`, :attr:`terminated` (agreement id: reason).
    """

    name = "mock"
    capabilities = Capabilities(cheap_events=True, batch_cancel=True)
    startup_timeout = 0.5
    """Offers are there at once: a short wait decides 'no provider'."""

    def __init__(self, providers: int | Sequence[MockProvider] = 2, *,
                 programs: Mapping[str, Program] | None = None, subnet: str = "public",
                 debit_note_interval: float | None = None):
        specs = ([MockProvider(f"mock-provider-{i}") for i in range(providers)]
                 if isinstance(providers, int) else list(providers))
        if len({p.name for p in specs}) != len(specs):
            raise ValueError(f"provider names must be unique: {[p.name for p in specs]}")
        if debit_note_interval is not None and not debit_note_interval > 0:
            raise ValueError(f"debit_note_interval must be positive, got {debit_note_interval}")
        self.programs = dict(DEFAULT_PROGRAMS if programs is None else programs)
        self.subnet = subnet
        self._interval = debit_note_interval
        self._providers = {p.id: _ProviderState(p, self._offer(p)) for p in specs}
        self._ids = itertools.count(1)
        self._subs: dict[str, _Subscription] = {}
        self._agreements: dict[str, tuple[Agreement, _ProviderState]] = {}
        self._activities: dict[str, _ActivityState] = {}
        self._allocations: dict[str, Decimal] = {}
        self._payments: asyncio.Queue[PaymentEvent | BackendUnavailable] = asyncio.Queue()
        self._clocks: dict[str, asyncio.Task[None]] = {}
        self._storage = _MockStorage()
        self._up = False
        self._gone = False
        self.invoices_paid: dict[str, Decimal] = {}
        self.debit_notes_accepted: dict[str, Decimal] = {}
        self.terminated: dict[str, str] = {}

    def _offer(self, spec: MockProvider) -> dict[str, object]:
        config = ProviderConfig(name=spec.name, cpu_threads=spec.cpu_threads,
                                mem_gib=spec.mem_gib, storage_gib=spec.storage_gib,
                                pricing=spec.pricing)
        return offer_properties(config, node_id=spec.id, subnet=self.subnet,
                                platform_name=PLATFORM,
                                debit_note_interval=self._interval or 3600.0)

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def _check_up(self) -> None:
        if self._gone:
            raise BackendUnavailable("the mock backend went away (go_away() was called)")
        if not self._up:
            raise RuntimeError("the mock backend is not started")

    def go_away(self) -> None:
        """From now on every call fails with ``BackendUnavailable``, as when a daemon dies;
        streams in progress end with it."""
        self._gone = True
        self._payments.put_nowait(BackendUnavailable("the mock backend went away"))
        for sub in self._subs.values():
            sub.queue.put_nowait(None)

    @property
    def storage(self) -> _MockStorage:
        return self._storage

    async def start(self) -> None:
        self._check_gone()
        self._up = True

    def _check_gone(self) -> None:
        if self._gone:
            raise BackendUnavailable("the mock backend went away (go_away() was called)")

    async def aclose(self) -> None:
        for clock in self._clocks.values():
            clock.cancel()
        for sub in list(self._subs.values()):
            await sub.aclose()
        self._up = False

    # -- payment -----------------------------------------------------------------------------

    async def create_allocation(self, amount: Decimal) -> Allocation:
        self._check_up()
        allocation = Allocation(self._new_id("allocation"), amount, PLATFORM, "0xrequestor")
        self._allocations[allocation.id] = amount
        return allocation

    async def release_allocation(self, allocation: Allocation) -> None:
        self._check_up()
        self._allocations.pop(allocation.id, None)

    async def demand_decoration(self, allocation: Allocation) -> Demand:
        self._check_up()
        address = payment_platform_address(PLATFORM)
        return Demand({address: allocation.address, COM_PAYMENT_CHOSEN_PLATFORM: PLATFORM},
                      f"({address}=*)")

    async def payment_events(self) -> AsyncIterator[PaymentEvent]:
        self._check_up()
        while True:
            event = await self._payments.get()
            if isinstance(event, BackendUnavailable):
                raise event
            yield event

    async def accept_debit_note(self, note: DebitNote, allocation: Allocation) -> None:
        self._check_up()
        self.debit_notes_accepted[note.agreement_id] = note.total_amount_due

    async def reject_debit_note(self, note: DebitNote, reason: str) -> None:
        self._check_up()

    async def accept_invoice(self, invoice: Invoice, allocation: Allocation) -> None:
        self._check_up()
        if allocation.id not in self._allocations:
            raise PaymentError(f"allocation {allocation.id} was released")
        if invoice.amount > self._allocations[allocation.id]:
            raise BudgetExhausted(f"invoice {invoice.id} for {invoice.amount} is over what "
                                  f"allocation {allocation.id} has left")
        self._allocations[allocation.id] -= invoice.amount
        self.invoices_paid[invoice.agreement_id] = invoice.amount

    async def reject_invoice(self, invoice: Invoice, reason: str) -> None:
        self._check_up()

    # -- market ------------------------------------------------------------------------------

    async def subscribe_demand(self, demand: Demand) -> _Subscription:
        self._check_up()
        sub = _Subscription(self, self._new_id("subscription"), demand)
        self._subs[sub.id] = sub
        for provider in self._providers.values():
            if provider.agreement is None:
                self._offer_to(sub, provider)
        return sub

    def _offer_to(self, sub: _Subscription, provider: _ProviderState) -> None:
        constraints = f"({NODE_DEBUG_SUBNET}={self.subnet})"
        if match(sub.properties, sub.constraint, provider.properties, constraints):
            sub.queue.put_nowait(Proposal(self._new_id("offer"), provider.spec.id,
                                          provider.properties, constraints, "Initial"))

    async def counter_proposal(self, subscription: Any, proposal: Proposal,
                               demand: Demand) -> None:
        self._check_up()
        sub = self._subs.get(subscription.id)
        provider = self._providers.get(proposal.issuer_id)
        if sub is None or provider is None:
            raise ValueError(f"no such subscription or provider for proposal {proposal.id}")
        reason, final = provider.spec.refuses, True
        terms: dict[str, object] = {}
        if reason is None and provider.agreement is not None:
            reason, final = "busy with another agreement", False
        if reason is None:
            try:
                terms = negotiate(flatten_properties(dict(demand.properties)),
                                  interval=self._interval or 3600.0).properties()
            except TermsRefused as exc:
                reason = str(exc)
        if reason is not None:
            sub.queue.put_nowait(ProposalRejectedEvent(proposal.id, provider.spec.id, reason,
                                                       final=final))
            return
        sub.queue.put_nowait(Proposal(self._new_id("draft"), provider.spec.id,
                                      {**provider.properties, **terms}, proposal.constraints,
                                      "Draft", prev_proposal_id=proposal.id))

    async def reject_proposal(self, subscription: Any, proposal: Proposal, reason: str) -> None:
        self._check_up()

    async def make_agreement(self, proposal: Proposal, valid_to: datetime) -> Agreement:
        self._check_up()
        provider = self._providers[proposal.issuer_id]
        if not provider.spec.approves:
            raise AgreementRejected(f"{provider.spec.name} did not approve the agreement")
        if provider.agreement is not None:
            raise AgreementRejected(f"{provider.spec.name} is busy with another agreement")
        agreement = Agreement(self._new_id("agreement"), proposal,
                              Demand({}, ""), valid_to)
        provider.agreement = agreement.id
        self._agreements[agreement.id] = (agreement, provider)
        if self._interval is not None:
            self._clocks[agreement.id] = asyncio.get_running_loop().create_task(
                self._bill(agreement, self._interval))
        return agreement

    def _cost(self, agreement_id: str) -> tuple[Decimal, tuple[float, ...]]:
        agreement, _ = self._agreements[agreement_id]
        usage = {USAGE_DURATION_SEC: 0.0, USAGE_CPU_SEC: 0.0}
        for state in self._activities.values():
            if state.activity.agreement_id == agreement_id:
                for key, value in state.usage().items():
                    usage[key] += value
        pricing = agreement.pricing
        usage = {counter: usage.get(counter, 0.0) for counter in pricing.usage_vector}
        return (pricing.price_for(usage),
                tuple(usage.get(counter, 0.0) for counter in pricing.usage_vector))

    async def _bill(self, agreement: Agreement, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            amount, vector = self._cost(agreement.id)
            self._payments.put_nowait(DebitNote(self._new_id("debit-note"), agreement.id, None,
                                                amount, vector, agreement.provider_id))

    async def terminate_agreement(self, agreement: Agreement, reason: str) -> None:
        self._check_up()
        _, provider = self._agreements[agreement.id]
        if agreement.id in self.terminated:
            return
        self.terminated[agreement.id] = reason
        if (clock := self._clocks.pop(agreement.id, None)) is not None:
            clock.cancel()
        for state in self._activities.values():
            if state.activity.agreement_id == agreement.id and state.ended is None:
                state.ended = time.monotonic()
        amount, _ = self._cost(agreement.id)
        activities = tuple(s.activity.id for s in self._activities.values()
                           if s.activity.agreement_id == agreement.id)
        self._payments.put_nowait(Invoice(self._new_id("invoice"), agreement.id, activities,
                                          amount + provider.spec.overcharge, provider.spec.id))
        provider.agreement = None
        for sub in self._subs.values():  # free again: it offers anew
            self._offer_to(sub, provider)

    # -- activity ----------------------------------------------------------------------------

    async def create_activity(self, agreement: Agreement) -> Activity:
        self._check_up()
        _, provider = self._agreements[agreement.id]
        if agreement.id in self.terminated:
            raise ActivityLost(f"agreement {agreement.id} has ended", activity_id=None)
        if provider.spec.activity_fails:
            raise ActivityLost(f"{provider.spec.name} could not create an activity",
                               activity_id=None)
        activity = Activity(self._new_id("activity"), agreement.id)
        self._activities[activity.id] = _ActivityState(activity, provider)
        return activity

    def _activity(self, activity: Activity) -> _ActivityState:
        self._check_up()
        state = self._activities[activity.id]
        if state.destroyed:
            raise ActivityClosed(f"activity {activity.id} was destroyed",
                                 activity_id=activity.id)
        if state.lost:
            raise ActivityLost(f"activity {activity.id} broke on {state.provider.spec.name}",
                               activity_id=activity.id)
        return state

    async def exec(self, activity: Activity, commands: Sequence[Command],
                   timeout: float | None) -> _Batch:
        state = self._activity(activity)
        state.batches += 1
        limit = state.provider.spec.lose_activity_after
        if limit is not None and state.batches > limit:
            state.lost = True
            state.ended = time.monotonic()
            self._activity(activity)  # raises ActivityLost
        return _Batch(self, state, self._new_id("batch"), commands, timeout)

    async def activity_state(self, activity: Activity) -> str:
        self._activity(activity)
        return "Ready"

    async def activity_usage(self, activity: Activity) -> dict[str, float]:
        return self._activity(activity).usage()

    async def destroy_activity(self, activity: Activity) -> None:
        self._check_up()
        state = self._activities[activity.id]
        state.destroyed = True
        if state.ended is None:
            state.ended = time.monotonic()

    # -- transfers (used by batches) ---------------------------------------------------------

    def _transfer(self, src: str, dst: str, machine: Machine) -> None:
        if src.startswith("container:"):
            data = machine.files[_container_path(src)]
        else:
            data = self._storage.sources[src]
        if dst.startswith("container:"):
            machine.files[_container_path(dst)] = data
        elif dst in self._storage.received:
            self._storage.received[dst] = data
        else:
            raise ValueError(f"no destination {dst}")


def _container_path(url: str) -> str:
    path = url.removeprefix("container:")
    if not path.startswith("/"):
        raise ValueError(f"container paths are absolute, got {path!r}")
    return path

