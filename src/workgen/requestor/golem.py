"""``Golem``: the requestor's entry point. Owns the backend, the budget and the payments.

``async with Golem(budget=1.0) as golem`` brings up the backend (the embedded local network
unless another is given), makes an allocation for the budget and starts paying debit notes and
invoices as they come; ``execute_tasks`` runs jobs on it. Leaving the block closes running jobs,
waits (boundedly) for the last invoices, releases the allocation and closes the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import logging
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sized
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any, TypeVar

from ..backends.base import Allocation, Backend, Demand
from ..protocol.money import currency
from ..protocol.properties import NODE_DEBUG_SUBNET, NODE_ID_NAME, SRV_COMP_EXPIRATION
from ..protocol.results import utc_now
from . import events
from .budget import Budget
from .cluster import Cluster
from .display import RunSummary
from .job import Job, Worker
from .payments import Payments
from .payload import VmPayload
from .service import Service
from .strategy import MarketStrategy, default_strategy
from .task import Task

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Service)

DEFAULT_MAX_WORKERS = 10
DEFAULT_MAX_RETRIES = 3
DEMAND_VALIDITY = timedelta(minutes=30)
SERVICE_EXPIRATION = timedelta(hours=3)
"""How long a service's agreements may last unless ``run_service(expiration=...)`` says."""


def _backend_from_env() -> Backend:
    name = os.environ.get("WORKGEN_BACKEND", "local").strip().lower()
    if name == "local":
        from ..backends.local import LocalNetwork

        return LocalNetwork()
    if name == "yagna":
        from ..backends.yagna import Yagna

        return Yagna()
    raise ValueError(f"WORKGEN_BACKEND={name!r} is not a known backend (known: local, yagna)")


class Golem:
    def __init__(
        self,
        *,
        budget: float | Decimal | str,
        backend: Backend | None = None,
        strategy: MarketStrategy | None = None,
        subnet_tag: str | None = None,
        event_consumer: events.EventConsumer | None = None,
        stream_output: bool = False,
        invoice_timeout: float = 30.0,
    ):
        try:
            amount = Decimal(str(budget))
        except InvalidOperation:
            raise ValueError(f"budget must be a number, got {budget!r}") from None
        if not amount.is_finite() or amount < 0:
            raise ValueError(f"budget must be a non-negative number, got {budget!r}")
        self.budget = Budget(amount)
        self._backend = backend
        if strategy is not None and not isinstance(strategy, MarketStrategy):
            raise TypeError(f"strategy must be a MarketStrategy (for example "
                            f"LeastExpensiveLinearPayuMS()), got {strategy!r}")
        if (isinstance(invoice_timeout, bool) or not isinstance(invoice_timeout, (int, float))
                or not math.isfinite(invoice_timeout) or invoice_timeout <= 0):
            raise ValueError(f"invoice_timeout must be a positive number of seconds, "
                             f"got {invoice_timeout!r}")
        self.strategy = strategy or default_strategy()
        self._subnet_tag = subnet_tag
        if event_consumer is None:
            from .display import ProgressDisplay

            event_consumer = ProgressDisplay()
        self._consumer = event_consumer
        # The default display aggregates the run already: its summary is shared, not doubled.
        shown = getattr(event_consumer, "summary", None)
        self._summary = shown if isinstance(shown, RunSummary) else RunSummary()
        self._feed_summary = self._summary is not shown
        self.stream_output = stream_output
        self.invoice_timeout = invoice_timeout
        self._stack = contextlib.AsyncExitStack()
        self.payments: Payments | None = None
        """The agreement book and its payments, once started."""
        self._jobs: set[Job] = set()
        self._clusters: list[Cluster[Any]] = []
        self.failed_tasks: list[Task[Any, Any]] = []
        """Tasks that failed for good or were rejected without retry, over all jobs."""
        self._state = "new"

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = _backend_from_env()
        return self._backend

    @property
    def subnet_tag(self) -> str:
        """The subnet demands are published on: the one given, else the backend's (a yagna
        backend's comes from ``YAGNA_SUBNET``), else ``YAGNA_SUBNET``, else ``public``."""
        backend_subnet = getattr(self.backend, "subnet", None)
        return (self._subnet_tag or (backend_subnet if isinstance(backend_subnet, str) else None)
                or os.environ.get("YAGNA_SUBNET") or "public")

    @subnet_tag.setter
    def subnet_tag(self, value: str | None) -> None:
        self._subnet_tag = value

    def summary(self) -> RunSummary:
        """What the run did so far, as values: tasks, providers, failures, money (the same
        aggregate the end-of-run report is rendered from)."""
        return self._summary

    def _emit(self, event: events.Event) -> None:
        if self._feed_summary:
            self._summary(event)
        try:
            self._consumer(event)
        except Exception:  # a consumer's bug must not break the run
            log.exception("event consumer failed on %r", event)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Golem:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"this Golem is {self._state}; make a new one")
        self._state = "starting"
        try:
            backend = self.backend
            await backend.start()
            self._stack.push_async_callback(backend.aclose)
            self.payments = Payments(backend, self.budget, self.strategy, self._emit,
                                     self.invoice_timeout)
            await self.payments.open()
            self._stack.push_async_callback(self.payments.close)
        except BaseException:
            await self._stack.aclose()
            self._state = "stopped"
            raise
        self._state = "running"
        assert self.payments.allocation is not None
        self._emit(events.GolemStarted(
            backend=backend.name, budget=self.budget.total,
            currency=currency(self.payments.allocation.payment_platform)))

    async def stop(self) -> None:
        """Close jobs, settle payments (boundedly), release the allocation, close the backend.

        The Golem's own tasks are plain tasks of the event loop, not of a scope entered by
        ``start``: ``start`` and ``stop`` may be awaited from different tasks.
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        self._state = "stopping"
        try:
            for cluster in self._clusters:
                # Every instance's shutdown runs (bounded), all clusters at once.
                cluster.stop()
            for cluster in self._clusters:
                await cluster.stop()
            for job in list(self._jobs):
                await job.cancel()
        finally:
            await self._stack.aclose()
            self._state = "stopped"
            self._emit(events.GolemStopped())

    # -- jobs --------------------------------------------------------------------------------

    async def execute_tasks(
        self,
        worker: Worker,
        data: Iterable[Any] | AsyncIterable[Any],
        payload: VmPayload,
        max_workers: int | None = None,
        timeout: float | None = None,
        job_id: str | None = None,
        implicit_init: bool = True,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> AsyncIterator[Task[Any, Any]]:
        """Run ``worker`` over ``data``; yields each task as a worker accepts it.

        ``data`` (items, or :class:`Task` objects) is read lazily. Up to ``max_workers``
        activities work at once. A failed task is retried on another activity up to
        ``max_retries`` times; tasks that fail for good are in :attr:`failed_tasks`. The job
        ends with an error (``NoProvidersError``, ``BudgetExhausted``, ``JobTimeoutError``...)
        raised here after the accepted tasks were yielded.
        """
        if self._state != "running" or self.payments is None:
            raise RuntimeError("start the Golem first: 'async with Golem(...) as golem:'")
        _check_worker(worker)
        if max_workers is not None and not _whole(max_workers, 1):
            raise ValueError(f"max_workers must be a whole number, at least 1, got {max_workers!r}")
        if not _whole(max_retries, 0):
            raise ValueError(f"max_retries must be a whole number, at least 0, got {max_retries!r}")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        demand = await self._demand_for(payload)
        total = len(data) if isinstance(data, Sized) else None
        job = Job(backend=self.backend, payments=self.payments, strategy=self.strategy,
                  emit=self._emit, stream_output=self.stream_output,
                  worker=worker, data=data, demand=demand,
                  max_workers=max_workers or DEFAULT_MAX_WORKERS, timeout=timeout,
                  job_id=job_id or uuid.uuid4().hex[:8], implicit_init=implicit_init,
                  max_retries=max_retries, tasks_total=total)
        self._jobs.add(job)
        job.runner = asyncio.get_running_loop().create_task(job.run(), name=f"job {job.id}")
        try:
            while True:
                task = await job.accepted.get()
                if task is None:
                    break
                yield task
            await job.done.wait()
            if job.error is not None and not isinstance(job.error, asyncio.CancelledError):
                raise job.error
        finally:
            await job.cancel()
            self.failed_tasks.extend(job.failed)
            self._jobs.discard(job)

    # -- services ----------------------------------------------------------------------------

    async def run_service(
        self,
        service_class: type[S],
        num_instances: int | None = None,
        instance_params: Iterable[Mapping[str, Any]] | None = None,
        payload: VmPayload | None = None,
        expiration: datetime | None = None,
        respawn_unstarted_instances: bool = True,
    ) -> Cluster[S]:
        """Start instances of ``service_class`` (a :class:`Service` subclass) and return their
        :class:`Cluster` at once; instances go on in the background until stopped.

        ``num_instances`` (default one, or one per ``instance_params`` element), each made with
        its element of ``instance_params`` as keyword arguments. ``payload`` overrides the
        class's ``get_payload()``. Agreements last until ``expiration`` (default three hours
        from now). An instance whose start fails is tried on another provider unless
        ``respawn_unstarted_instances`` is false.
        """
        if self._state != "running" or self.payments is None:
            raise RuntimeError("start the Golem first: 'async with Golem(...) as golem:'")
        if not (isinstance(service_class, type) and issubclass(service_class, Service)):
            raise TypeError(f"run_service needs a Service subclass, got {service_class!r}")
        payload = payload or await service_class.get_payload()
        if payload is None:
            raise ValueError(f"{service_class.__name__} has no payload: define its "
                             "get_payload() or pass payload=vm.repo(...)")
        now = utc_now()
        if expiration is None:
            expiration = now + SERVICE_EXPIRATION
        elif not isinstance(expiration, datetime) or expiration.tzinfo is None \
                or expiration <= now:
            raise ValueError(f"expiration must be a timezone-aware datetime in the future, "
                             f"got {expiration!r}")
        assert self.payments.allocation is not None
        demand = await compose_demand(self.backend, self.payments.allocation, payload,
                                      subnet=self.subnet_tag, strategy=self.strategy,
                                      expiration=expiration)
        cluster = Cluster(service_class=service_class, payload=payload, demand=demand,
                          expiration=expiration, backend=self.backend, payments=self.payments,
                          strategy=self.strategy, emit=self._emit,
                          stream_output=self.stream_output,
                          respawn_unstarted_instances=respawn_unstarted_instances)
        await cluster._open()
        self._clusters.append(cluster)
        cluster.spawn_instances(num_instances, instance_params)
        return cluster

    async def _demand_for(self, payload: VmPayload) -> Demand:
        assert self.payments is not None and self.payments.allocation is not None
        return await compose_demand(self.backend, self.payments.allocation, payload,
                                    subnet=self.subnet_tag, strategy=self.strategy)


async def compose_demand(backend: Backend, allocation: Allocation, payload: VmPayload, *,
                         subnet: str, strategy: MarketStrategy,
                         expiration: datetime | None = None) -> Demand:
    """The demand a requestor publishes for ``payload``: the payload's properties and
    constraints, an expiration (by default :data:`DEMAND_VALIDITY` from now), the subnet, the
    backend's payment decoration for ``allocation`` and what the strategy adds."""
    if not hasattr(payload, "properties") or not hasattr(payload, "constraints"):
        raise TypeError(f"payload must come from vm.repo(...), got {payload!r}")
    properties: dict[str, object] = dict(payload.properties())
    expiration = expiration or utc_now() + DEMAND_VALIDITY
    properties[SRV_COMP_EXPIRATION] = int(expiration.timestamp() * 1000)
    properties[NODE_DEBUG_SUBNET] = subnet
    properties.setdefault(NODE_ID_NAME, "workgen-requestor")
    clauses = list(payload.constraints())
    clauses.append(f"({NODE_DEBUG_SUBNET}={subnet})")
    decoration = await backend.demand_decoration(allocation)
    properties.update(decoration.properties)
    if decoration.constraints:
        clauses.append(decoration.constraints)
    strategy.decorate_demand(properties, clauses)
    return Demand(properties=properties, constraints="(&" + "".join(clauses) + ")")


def _whole(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_worker(worker: object) -> None:
    """A worker is an async generator function (or a callable returning an async generator,
    checked when it is called): anything else would leave the job waiting on it."""
    if inspect.isasyncgenfunction(worker):
        return
    if inspect.iscoroutinefunction(worker) or inspect.iscoroutinefunction(
            type(worker).__call__):
        raise TypeError(f"worker {worker!r} is an 'async def' without 'yield': a worker is an "
                        "async generator that yields scripts (async def worker(context, tasks): "
                        "... yield script ...)")
    if not callable(worker):
        raise TypeError(f"worker must be an async generator function, got {worker!r}")
