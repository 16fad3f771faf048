"""``Cluster``: the instances of one service class, each on an agreement of its own, and the
engine that takes an instance through its states.

``Golem.run_service`` publishes one demand for the cluster; each instance signs an agreement
from it (with a reservation from the budget, as a task job's slot does), creates an activity
and runs its handlers there: ``start``, then ``run``, then ``shutdown`` (bounded). An instance
whose start fails is reset and tried on another provider (``respawn_unstarted_instances``); a
running instance that fails is reported and ends; its provider vanishing makes it
``unresponsive``. Every agreement ends with a reason, and its invoice is paid by the Golem's
payments as for any job. An instance whose agreement has used what the budget can give it is
stopped with that reason.

The cluster owns its instances' tasks, so what an instance is attached to (its activity, and
later a network node) lives in one place: :class:`_Instance`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from ..backends.base import Activity, Agreement, Backend, Demand, Proposal
from ..errors import ActivityLost, BudgetExhausted, WorkgenError
from . import events
from .budget import AgreementBudget, extend_while_affordable, loop_time
from .market import Market, open_market
from .payload import VmPayload
from .payments import Payments
from .runner import ScriptRunner, drive, end_activity, start_activity
from .service import Handler, Service, ServiceState
from .strategy import MarketStrategy

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Service)

SHUTDOWN_TIMEOUT = 30.0
"""How long a stopping instance's ``shutdown`` handler may run."""
MAX_START_ATTEMPTS = 5
"""Providers an instance is tried on before its failure to start is final."""


class _Stop(Exception):
    """The instance was asked to stop."""


class _Instance:
    """One service instance's life in the cluster."""

    def __init__(self, cluster: Cluster[Any], service: Service):
        self.cluster = cluster
        self.service = service
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def set_state(self, state: ServiceState, reason: str | None = None) -> None:
        service = self.service
        if service._state is state:
            return
        service._set_state(state)
        self.cluster._emit(events.ServiceStateChanged(
            cluster_id=self.cluster.id, instance_id=service.id,
            service=type(service).__name__, state=state.value,
            provider_name=service.provider_name, reason=reason))

    async def live(self) -> None:
        attempts = 0
        try:
            while not self.stop.is_set():
                attempts += 1
                started = await self._on_a_provider()
                if started or not self._respawn(attempts):
                    return
                await self.service.reset()
                self.set_state(ServiceState.pending, "trying another provider after a failed "
                               f"start: {_short(self.service.exc_info)}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not the handlers' (those are caught below): the engine's
            self.service.exc_info = exc
            log.warning("service instance %s failed: %s", self.service.id, exc)
        finally:
            if self.service._state is not ServiceState.unresponsive:
                self.set_state(ServiceState.terminated,
                               _short(self.service.exc_info) if self.service.exc_info else None)

    def _respawn(self, attempts: int) -> bool:
        return (self.cluster.respawn_unstarted_instances and attempts < MAX_START_ATTEMPTS
                and not self.stop.is_set())

    async def _on_a_provider(self) -> bool:
        """One try on one provider; True if the instance got past its start (it has ended
        for good then), False if it failed to start."""
        signed = await self._sign()
        if signed is None:
            return True  # stopped while waiting for a provider
        agreement, reservation = signed
        cluster = self.cluster
        payments = cluster._payments
        payments.agreement_started(agreement, reservation)
        activity: Activity | None = None
        reason = "the service instance ended"
        try:
            activity, ctx, runner = await start_activity(
                cluster._backend, agreement, job_id=cluster.id, emit=cluster._emit,
                stream_output=cluster._stream_output)
            self.service._ctx = ctx
            reason = await self._handlers(runner, reservation)
            return True
        except _StartFailed as failed:
            reason = f"failed to start: {_short(failed.error)}"
            # Ranked lower from now on: the next try prefers another provider.
            cluster._strategy.report_failure(agreement.provider_id, reason)
            return False
        finally:
            if activity is not None:
                await end_activity(cluster._backend, activity, agreement.provider_name,
                                   cluster._emit)
            await payments.end_agreement(agreement, reservation, reason)

    async def _sign(self) -> tuple[Agreement, AgreementBudget] | None:
        """An agreement for this instance, or ``None`` if it was stopped meanwhile."""
        cluster = self.cluster
        while True:
            sign = asyncio.ensure_future(cluster._market.sign(self._reserve, _release))
            stop = asyncio.ensure_future(self.stop.wait())
            try:
                await asyncio.wait({sign, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not sign.done():
                    sign.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sign
            if sign.cancelled():
                return None
            signed = sign.result()
            if signed is None:
                # The budget cannot cover the best offer: wait for money to come back.
                if not await cluster._wait_for_money():
                    raise BudgetExhausted(f"the budget of {cluster._payments.budget.total} "
                                          "cannot pay for this service instance")
                continue
            if self.stop.is_set():
                _release(signed[1])
                await cluster._payments.end_agreement(signed[0], None, "stopped")
                return None
            return signed

    def _reserve(self, proposal: Proposal) -> AgreementBudget | None:
        return self.cluster._payments.budget.reserve_for(proposal.properties)

    async def _handlers(self, runner: ScriptRunner, reservation: AgreementBudget) -> str:
        """start, run, shutdown; the reason the agreement ends with."""
        service = self.service
        self.set_state(ServiceState.starting)
        start = self._call(service.start)  # a handler that is no generator is not retried
        try:
            async with _budget_deadline(reservation):
                await self._until_stopped(start, runner)
        except (_Stop, _OutOfBudget) as why:
            service.started_successfully = False
            self.set_state(ServiceState.terminated, str(why))
            return str(why)
        except Exception as exc:
            service.exc_info = exc
            raise _StartFailed(exc) from exc
        service.started_successfully = True
        self.set_state(ServiceState.running)
        reason = "the service's run handler finished"
        try:
            async with _budget_deadline(reservation):
                await self._until_stopped(self._call(service.run), runner)
        except _Stop as why:
            reason = str(why)
        except _OutOfBudget as why:
            reason = str(why)
        except ActivityLost as exc:
            service.exc_info = exc
            self.set_state(ServiceState.unresponsive, _short(exc))
            return f"failed: {_short(exc)}"
        except Exception as exc:
            service.exc_info = exc
            reason = f"failed: {_short(exc)}"
            log.warning("service instance %s failed while running: %s", service.id, exc)
        self.set_state(ServiceState.stopping, reason)
        bound = self.cluster.shutdown_timeout
        try:
            async with asyncio.timeout(bound):
                await drive(self._call(service.shutdown), runner, "the shutdown handler",
                            allow_empty=True)
        except TimeoutError:
            reason += f"; its shutdown handler ran past {bound:g}s"
        except Exception as exc:
            log.warning("shutdown of service instance %s failed: %s", service.id, exc)
        self.set_state(ServiceState.terminated, reason)
        return reason

    def _call(self, handler: Callable[[], Handler]) -> Handler:
        gen = handler()
        if not hasattr(gen, "asend"):
            if asyncio.iscoroutine(gen):
                gen.close()  # never to be awaited
            raise TypeError(f"{type(self.service).__name__}.{handler.__name__} must be an "
                            "async generator (an 'async def' that yields scripts)")
        return gen

    async def _until_stopped(self, gen: Handler, runner: ScriptRunner) -> None:
        """Drive the handler; a stop request cancels it with :class:`_Stop`."""
        work = asyncio.ensure_future(drive(gen, runner, f"the {self.service._state.value} "
                                            "handler", allow_empty=True))
        stop = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                # Stopped, or cancelled from outside (the budget's deadline): end the handler.
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                with contextlib.suppress(Exception):
                    await gen.aclose()
        if not work.done() or work.cancelled():
            raise _Stop("stopped by the requestor")
        work.result()


class _StartFailed(Exception):
    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _OutOfBudget(Exception):
    pass


@contextlib.asynccontextmanager
async def _budget_deadline(reservation: AgreementBudget) -> Any:
    """The block runs while the budget can pay for the agreement (the reservation grows as
    time goes); when it cannot, the block is cut off with :class:`_OutOfBudget`."""
    try:
        async with asyncio.timeout_at(loop_time(reservation.deadline())) as deadline:
            extender = asyncio.ensure_future(extend_while_affordable(reservation, deadline))
            try:
                yield
            finally:
                extender.cancel()
    except TimeoutError:
        raise _OutOfBudget("the agreement used what the budget could give it") from None


def _release(reservation: AgreementBudget) -> None:
    reservation.close(Decimal(0))


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, WorkgenError) else f"{type(exc).__name__}: {text}"


class Cluster(Generic[S]):
    """The instances of ``service_class`` that one ``run_service`` call started."""

    def __init__(self, *, service_class: type[S], payload: VmPayload, demand: Demand,
                 expiration: datetime, backend: Backend, payments: Payments,
                 strategy: MarketStrategy, emit: Callable[[events.Event], None],
                 stream_output: bool, respawn_unstarted_instances: bool):
        self.id = uuid.uuid4().hex[:8]
        self._service_class = service_class
        self.payload = payload
        self.expiration = expiration
        self._demand = demand
        self._backend = backend
        self._payments = payments
        self._strategy = strategy
        self._emit = emit
        self._stream_output = stream_output
        self.respawn_unstarted_instances = respawn_unstarted_instances
        self._instances: list[_Instance] = []
        self._market: Market
        self._market_task: asyncio.Task[None]
        self._release_market = asyncio.Event()
        self._money = asyncio.Condition()
        self._closed = False
        self._closing: asyncio.Task[None] | None = None
        self.shutdown_timeout = SHUTDOWN_TIMEOUT
        """How long an instance's ``shutdown`` handler may run (seconds)."""

    def __repr__(self) -> str:
        return (f"<Cluster {self.id}: {len(self._instances)} x "
                f"{self._service_class.__name__}>")

    @property
    def service_class(self) -> type[S]:
        return self._service_class

    @property
    def instances(self) -> list[S]:
        """The instances, in the order they were spawned (a copy)."""
        return [i.service for i in self._instances]  # type: ignore[misc]

    def __iter__(self) -> Iterator[S]:
        return iter(self.instances)

    def __len__(self) -> int:
        return len(self._instances)

    async def _open(self) -> None:
        """Publish the demand. The market is held open by a task of its own until the cluster
        closes, so whichever task stops the cluster, the market's scope is left by the task
        that entered it."""
        opened: asyncio.Future[Market] = asyncio.get_running_loop().create_future()
        self._market_task = asyncio.get_running_loop().create_task(
            self._hold_market(opened), name=f"cluster {self.id} market")
        self._market = await opened

    async def _hold_market(self, opened: asyncio.Future[Market]) -> None:
        try:
            async with open_market(self._backend, self._demand, self._strategy, self.id,
                                   self._emit) as market:
                opened.set_result(market)
                await self._release_market.wait()
        except BaseException as exc:
            if not opened.done():
                opened.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def spawn_instances(self, num_instances: int | None = None,
                        instance_params: Iterable[Mapping[str, Any]] | None = None) -> None:
        """Start more instances: ``num_instances`` (default: one, or one per element of
        ``instance_params``), each made with its element of ``instance_params`` as keyword
        arguments."""
        if self._closed:
            raise RuntimeError(f"{self!r} was stopped; run the service again")
        for params in _instance_params(num_instances, instance_params):
            service = self._service_class(**params)
            if not hasattr(service, "_inbox"):
                raise TypeError(f"{self._service_class.__name__}.__init__ must call "
                                "super().__init__()")
            service._cluster = self
            instance = _Instance(self, service)
            self._instances.append(instance)
            self._emit(events.ServiceStateChanged(
                cluster_id=self.id, instance_id=service.id,
                service=self._service_class.__name__, state=ServiceState.pending.value))
            instance.task = asyncio.get_running_loop().create_task(
                self._live(instance), name=f"service {service.id}")

    async def _live(self, instance: _Instance) -> None:
        try:
            await instance.live()
        finally:
            async with self._money:
                self._money.notify_all()

    async def _wait_for_money(self) -> bool:
        """Wait for another instance's agreement to end (and its invoice to give back what it
        did not cost); False if none runs, so no money will come back."""
        others = [i for i in self._instances if i.service.is_available]
        if not others:
            await self._payments.invoices_settled()
            return False
        async with self._money:
            await self._money.wait()
        await self._payments.invoices_settled()
        return True

    def stop_instance(self, service: S) -> None:
        """Ask one instance to stop: its ``run`` is cancelled and ``shutdown`` runs."""
        for instance in self._instances:
            if instance.service is service:
                instance.stop.set()
                return
        raise ValueError(f"{service!r} is not an instance of {self!r}")

    def stop(self) -> asyncio.Task[None]:
        """Ask every instance to stop. Returns a task that ends once all have ended and the
        cluster's demand is withdrawn: ``await cluster.stop()`` waits, ``cluster.stop()``
        only asks."""
        for instance in self._instances:
            instance.stop.set()
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._wait_closed())
        return self._closing

    async def terminate(self) -> None:
        """Stop every instance and wait until they have ended."""
        await self.stop()

    async def _wait_closed(self) -> None:
        tasks = [i.task for i in self._instances if i.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        if not self._closed:
            self._closed = True
            self._release_market.set()
            await asyncio.wait([self._market_task])

    async def __aenter__(self) -> Cluster[S]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _instance_params(num: int | None, params: Iterable[Mapping[str, Any]] | None
                     ) -> list[dict[str, Any]]:
    if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 0):
        raise ValueError(f"num_instances must be a whole number, at least 0, got {num!r}")
    if params is None:
        return [{} for _ in range(1 if num is None else num)]
    given = [dict(p) for p in params]
    if num is None:
        return given
    if len(given) < num:
        raise ValueError(f"instance_params has {len(given)} entries for {num} instances")
    return given[:num]

