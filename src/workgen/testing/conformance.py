"""The backend conformance suite: what every backend must do at the seam, checked in one run.

``await check_backend(make_backend)`` brings a backend up, rents one provider through it and
checks, in order, each item of :data:`CHECKS` (the name says what is checked; the reason of a
failure says what was seen instead). A check whose prerequisite failed is reported as not run.
The suite uses only the seam (:mod:`workgen.backends.base`) and the demand a requestor would
publish, so it runs unchanged on the local network, on a yagna daemon and on
:class:`~workgen.testing.MockBackend`. It raises :class:`ConformanceError` listing every
failure, or returns the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from ..backends.base import (
    Activity, Agreement, Backend, BatchHandle, Capabilities, Demand, DemandSubscription,
    Invoice, Proposal, ProposalRejectedEvent,
)
from ..errors import ActivityClosed, DownloadLimitExceeded
from ..protocol.exescript import Deploy, Run, Start, Transfer
from ..protocol.results import CommandOutcome, FailureKind, Finished, Started, utc_now
from ..requestor.golem import compose_demand
from ..requestor import vm
from ..requestor.payload import VmPayload
from ..requestor.strategy import default_strategy

CHECKS: dict[str, str] = {
    "backend": "it is a Backend, with Capabilities, and start() is idempotent",
    "market": "a demand gets offers; a counter-proposal gets the provider's draft (or a "
              "rejection) on the subscription",
    "agreement": "a draft becomes an agreement with the provider who drafted it",
    "activity": "an agreement gets an activity",
    "batch": "deploy, start and run in one batch: every command's outcome in order, the run's "
             "output and return code 0, Started and Finished events for each",
    "failed-command": "a failing command ends its batch: its return code and stderr, "
                      "failure 'command-failed', no outcome for what followed",
    "output-is-not-meaning": "a command whose stderr says 'batch timed out' is still just a "
                             "failed command with its code",
    "signal": "a command killed by SIGKILL has return code 137",
    "transfers": "bytes published reach the activity, a file of the activity reaches a "
                 "destination, and a read over its limit is DownloadLimitExceeded",
    "transfer-failure": "a transfer of a missing file fails with 'transfer-failed'",
    "state-and-usage": "the activity's state is named and its usage has the duration counter",
    "cancel": "cancel() stops a running batch (failure 'cancelled') if the backend can, and "
              "says False if it cannot",
    "timeout": "a batch past its timeout ends with failure 'timed-out', promptly",
    "closed-by-us": "after destroy_activity, using the activity is ActivityClosed",
    "invoice": "terminating the agreement brings its invoice, which can be accepted",
    "aclose": "aclose() releases everything within 30 s and may be repeated",
}
"""Every check, in the order it runs, with what it checks."""

DATA = b"conformance check\n"


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool | None
    """``None``: not run, because a check it needs failed."""
    seconds: float
    reason: str | None = None


class ConformanceError(AssertionError):
    """A backend failed some checks; ``results`` has every check's outcome."""

    def __init__(self, backend: str, results: list[CheckResult]):
        self.results = results
        failed = [r for r in results if r.passed is False]
        skipped = [r.name for r in results if r.passed is None]
        lines = [f"{r.name}: {CHECKS[r.name]}\n    {r.reason}" for r in failed]
        if skipped:
            lines.append(f"not run: {', '.join(skipped)}")
        super().__init__(f"backend {backend!r} failed {len(failed)} of {len(CHECKS)} "
                         "conformance checks:\n" + "\n".join(lines))


class _Failed(Exception):
    pass


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise _Failed(what)


class _Suite:
    def __init__(self, backend: Backend, timeout: float):
        self.backend = backend
        self.timeout = timeout
        self.results: list[CheckResult] = []
        self.blocked: str | None = None

    @contextlib.asynccontextmanager
    async def check(self, name: str, *, needed: bool = False, always: bool = False
                    ) -> AsyncIterator[None]:
        """Runs the block as check ``name``; a failure of a ``needed`` one stops the rest
        (except those that run ``always``)."""
        assert name in CHECKS, name
        if self.blocked is not None and not always:
            self.results.append(CheckResult(name, None, 0.0, f"needs {self.blocked}"))
            raise _Skip
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except _Skip:
            raise
        except (_Failed, Exception) as exc:
            reason = str(exc) if isinstance(exc, _Failed) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {self.timeout:g}s"
            self.results.append(CheckResult(name, False, time.monotonic() - started, reason))
            if needed:
                self.blocked = name
            raise _Skip from None
        self.results.append(CheckResult(name, True, time.monotonic() - started))

    def run_through(self, names: list[str]) -> None:
        for name in names:
            if not any(r.name == name for r in self.results):
                self.results.append(CheckResult(name, None, 0.0, f"needs {self.blocked}"))


class _Skip(Exception):
    pass


async def check_backend(
    make_backend: Callable[[], Backend], *, payload: VmPayload | None = None,
    subnet: str | None = None, accept: Callable[[Proposal], bool] | None = None,
    timeout: float = 60.0, raise_on_failure: bool = True,
) -> list[CheckResult]:
    """Run every check of :data:`CHECKS` on a backend from ``make_backend()``.

    ``payload`` is what the demand asks for (``vm.repo()`` by default), ``subnet`` its subnet
    (the backend's ``subnet`` by default), ``accept`` picks which providers' offers to answer
    (all by default); ``timeout`` bounds each check. Raises :class:`ConformanceError` if any
    check failed, unless ``raise_on_failure`` is false.
    """
    backend = make_backend()
    suite = _Suite(backend, timeout)
    try:
        await _run(suite, backend, payload, subnet, accept or (lambda p: True))
    except _Skip:
        pass
    finally:
        with contextlib.suppress(_Skip):
            async with suite.check("aclose", always=True):
                async with asyncio.timeout(30):
                    await backend.aclose()
                    await backend.aclose()
    suite.run_through(list(CHECKS))
    order = list(CHECKS)
    suite.results.sort(key=lambda r: order.index(r.name))
    if raise_on_failure and any(r.passed is False for r in suite.results):
        raise ConformanceError(getattr(backend, "name", type(backend).__name__), suite.results)
    return suite.results


async def _run(suite: _Suite, backend: Backend, payload: VmPayload | None, subnet: str | None,
               accept: Callable[[Proposal], bool]) -> None:
    async with suite.check("backend", needed=True):
        await backend.start()
        await backend.start()
        _expect(isinstance(backend, Backend), f"{backend!r} lacks some of the Backend protocol")
        _expect(isinstance(backend.capabilities, Capabilities),
                f"capabilities is {backend.capabilities!r}, not a Capabilities")
    allocation = await backend.create_allocation(Decimal("1"))
    invoices: asyncio.Queue[Invoice] = asyncio.Queue()
    payments = asyncio.get_running_loop().create_task(_collect_invoices(backend, invoices))
    try:
        demand = await compose_demand(
            backend, allocation, payload or await vm.repo(),
            subnet=subnet or str(getattr(backend, "subnet", None) or "public"),
            strategy=default_strategy())
        subscription = await backend.subscribe_demand(demand)
        try:
            async with suite.check("market", needed=True):
                draft = await _negotiate(backend, subscription, demand, accept)
            async with suite.check("agreement", needed=True):
                agreement = await backend.make_agreement(draft, utc_now() + timedelta(hours=1))
                _expect(agreement.provider_id == draft.issuer_id,
                        f"agreement with {agreement.provider_id}, draft by {draft.issuer_id}")
        finally:
            await subscription.aclose()
        try:
            async with suite.check("activity", needed=True):
                activity = await backend.create_activity(agreement)
                _expect(activity.agreement_id == agreement.id,
                        f"activity of agreement {activity.agreement_id}, not {agreement.id}")
            await _activity_checks(suite, backend, activity)
        finally:
            await backend.terminate_agreement(agreement, "conformance checks done")
        async with suite.check("invoice"):
            invoice = await _invoice_for(invoices, agreement)
            _expect(invoice.amount >= 0, f"invoice for {invoice.amount}")
            await backend.accept_invoice(invoice, allocation)
        await backend.release_allocation(allocation)
    finally:
        payments.cancel()
        await asyncio.wait([payments])


async def _negotiate(backend: Backend, subscription: DemandSubscription, demand: Demand,
                     accept: Callable[[Proposal], bool]) -> Proposal:
    countered: set[str] = set()  # the providers whose offers we answered
    async for event in subscription:
        if isinstance(event, ProposalRejectedEvent):
            _expect(event.issuer_id in countered,
                    f"a rejection from {event.issuer_id}, whose offer we did not answer")
            continue  # busy, or refusing: another offer may come
        if event.state == "Draft":
            _expect(event.issuer_id in countered,
                    f"a draft from {event.issuer_id}, whose offer we did not answer")
            return event
        _expect(event.state == "Initial", f"offer {event.id} in state {event.state}")
        if accept(event):
            countered.add(event.issuer_id)
            await backend.counter_proposal(subscription, event, demand)
    raise _Failed("the subscription ended before any draft came")


async def _collect_invoices(backend: Backend, into: asyncio.Queue[Invoice]) -> None:
    async for event in backend.payment_events():
        if isinstance(event, Invoice):
            into.put_nowait(event)


async def _invoice_for(invoices: asyncio.Queue[Invoice], agreement: Agreement) -> Invoice:
    while True:
        invoice = await invoices.get()
        if invoice.agreement_id == agreement.id:
            return invoice


async def _run_batch(backend: Backend, activity: Activity, commands: list[Any],
                     timeout: float | None = None, follow: bool = False
                     ) -> tuple[list[CommandOutcome], list[Any], BatchHandle]:
    batch = await backend.exec(activity, commands, timeout)
    seen = [event async for event in batch.events()] if follow else []
    return await batch.results(), seen, batch


def _sh(script: str) -> Run:
    return Run("/bin/sh", ("-c", script))


async def _activity_checks(suite: _Suite, backend: Backend, activity: Activity) -> None:
    with contextlib.suppress(_Skip):
        async with suite.check("batch", needed=True):
            outcomes, seen, _ = await _run_batch(
                backend, activity, [Deploy(), Start(), Run("/bin/echo", ("hello",))],
                follow=True)
            _expect([o.index for o in outcomes] == [0, 1, 2],
                    f"outcomes for commands {[o.index for o in outcomes]}")
            _expect(all(o.ok and o.failure is None for o in outcomes),
                    f"failures: {[(o.index, o.message) for o in outcomes if not o.ok]}")
            _expect(outcomes[2].return_code == 0, f"return code {outcomes[2].return_code}")
            _expect(outcomes[2].stdout == "hello\n", f"stdout {outcomes[2].stdout!r}")
            for kind in (Started, Finished):
                indices = sorted({e.index for e in seen if isinstance(e.kind, kind)})
                _expect(indices == [0, 1, 2], f"{kind.__name__} events for {indices}")
    for name, check in _AFTER_BATCH:
        with contextlib.suppress(_Skip):
            async with suite.check(name):
                await check(backend, activity)
    with contextlib.suppress(_Skip):
        async with suite.check("closed-by-us"):
            await backend.destroy_activity(activity)
            try:
                await _run_batch(backend, activity, [Run("/bin/echo", ("late",))])
            except ActivityClosed:
                pass
            else:
                raise _Failed("a batch ran on a destroyed activity")


async def _failed_command(backend: Backend, activity: Activity) -> None:
    outcomes, _, _ = await _run_batch(
        backend, activity, [_sh("echo oops >&2; exit 3"), Run("/bin/echo", ("never",))])
    _expect(len(outcomes) == 1, f"{len(outcomes)} outcomes; the batch should stop at the failure")
    (failed,) = outcomes
    _expect(not failed.ok and failed.failure is FailureKind.COMMAND_FAILED,
            f"failure {failed.failure} ({failed.message})")
    _expect(failed.return_code == 3, f"return code {failed.return_code}")
    _expect("oops" in str(failed.stderr), f"stderr {failed.stderr!r}")


async def _output_is_not_meaning(backend: Backend, activity: Activity) -> None:
    outcomes, _, _ = await _run_batch(
        backend, activity, [_sh("echo batch timed out >&2; exit 4")], timeout=30)
    _expect(outcomes[-1].failure is FailureKind.COMMAND_FAILED,
            f"failure {outcomes[-1].failure}: read from the command's output?")
    _expect(outcomes[-1].return_code == 4, f"return code {outcomes[-1].return_code}")


async def _signal(backend: Backend, activity: Activity) -> None:
    outcomes, _, _ = await _run_batch(backend, activity, [_sh("kill -9 $$")])
    _expect(outcomes[-1].failure is FailureKind.COMMAND_FAILED,
            f"failure {outcomes[-1].failure}")
    _expect(outcomes[-1].return_code == 137, f"return code {outcomes[-1].return_code}")


async def _transfers(backend: Backend, activity: Activity) -> None:
    source = await backend.storage.publish_bytes(DATA)
    destination = await backend.storage.new_destination("conformance.txt")
    try:
        outcomes, _, _ = await _run_batch(backend, activity, [
            Transfer(source.url, "container:/golem/input/conformance.txt"),
            Run("/bin/cat", ("/golem/input/conformance.txt",)),
            Transfer("container:/golem/input/conformance.txt", destination.url),
        ])
        _expect(len(outcomes) == 3 and all(o.ok for o in outcomes),
                f"outcomes {[(o.index, o.message) for o in outcomes]}")
        _expect(outcomes[1].stdout == DATA.decode(), f"the file read {outcomes[1].stdout!r}")
        received = await destination.read_bytes()
        _expect(received == DATA, f"the destination got {received!r}")
        try:
            await destination.read_bytes(limit=3)
        except DownloadLimitExceeded:
            pass
        else:
            raise _Failed("a read over its limit succeeded")
    finally:
        await source.aclose()
        await destination.aclose()


async def _transfer_failure(backend: Backend, activity: Activity) -> None:
    destination = await backend.storage.new_destination("missing.txt")
    try:
        outcomes, _, _ = await _run_batch(backend, activity, [
            Transfer("container:/golem/input/no-such-file", destination.url)])
        _expect(outcomes[-1].failure is FailureKind.TRANSFER_FAILED,
                f"failure {outcomes[-1].failure} ({outcomes[-1].message})")
    finally:
        await destination.aclose()


async def _state_and_usage(backend: Backend, activity: Activity) -> None:
    state = await backend.activity_state(activity)
    _expect(isinstance(state, str) and bool(state), f"state {state!r}")
    usage = await backend.activity_usage(activity)
    duration = usage.get("golem.usage.duration_sec")
    _expect(isinstance(duration, float) and duration >= 0, f"usage {usage}")


async def _cancel(backend: Backend, activity: Activity) -> None:
    if not backend.capabilities.batch_cancel:
        batch = await backend.exec(activity, [Run("/bin/sleep", ("1",))], None)
        _expect(await batch.cancel() is False,
                "cancel() said True though the backend's capabilities say it cannot cancel")
        outcomes = await batch.results()  # it ran on
        _expect(outcomes[-1].ok, f"the batch failed: {outcomes[-1].message}")
        return
    batch = await backend.exec(activity, [Run("/bin/sleep", ("30",))], None)
    async for event in batch.events():
        if isinstance(event.kind, Started):
            break
    _expect(await batch.cancel() is True, "cancel() said False though the backend can cancel")
    async with asyncio.timeout(10):
        outcomes = await batch.results()
    _expect(outcomes[-1].failure is FailureKind.CANCELLED,
            f"failure {outcomes[-1].failure} ({outcomes[-1].message})")


async def _timeout(backend: Backend, activity: Activity) -> None:
    started = time.monotonic()
    outcomes, _, _ = await _run_batch(backend, activity, [Run("/bin/sleep", ("30",))],
                                      timeout=1)
    _expect(outcomes[-1].failure is FailureKind.TIMED_OUT,
            f"failure {outcomes[-1].failure} ({outcomes[-1].message})")
    _expect(time.monotonic() - started < 20, f"took {time.monotonic() - started:.1f}s")


_AFTER_BATCH = [
    ("failed-command", _failed_command), ("output-is-not-meaning", _output_is_not_meaning),
    ("signal", _signal), ("transfers", _transfers), ("transfer-failure", _transfer_failure),
    ("state-and-usage", _state_and_usage), ("cancel", _cancel), ("timeout", _timeout),
]
