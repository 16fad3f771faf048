"""``Service``: a long-running instance on one provider, driven by the same ``WorkContext`` and
work generator pattern as a task worker.

A subclass says what to run (``get_payload``) and how: ``start`` (by default deploy and
start), ``run`` (by default wait until stopped), ``shutdown`` (by default terminate) are
handlers, each a work generator that yields scripts and awaits their results. ``reset`` is
called before an instance that failed to start is tried again on another provider. The
requestor and a running instance talk through two queues: the requestor's
``send_message``/``receive_message``, and the handlers' ``_listen``/``_respond``.

An instance goes through :class:`ServiceState`: ``pending`` (no provider yet), ``starting``
(``start`` runs), ``running`` (``run`` runs), ``stopping`` (``shutdown`` runs), and ends
``terminated`` (or ``unresponsive`` when its provider stopped answering).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .context import WorkContext
from .payload import VmPayload
from .script import Script

if TYPE_CHECKING:
    from .cluster import Cluster

_ids = itertools.count(1)


class ServiceState(enum.Enum):
    pending = "pending"
    """Not yet on a provider (or waiting for another one after a failed start)."""
    starting = "starting"
    """Its activity exists and its ``start`` handler runs."""
    running = "running"
    """``start`` finished; its ``run`` handler runs."""
    stopping = "stopping"
    """``run`` ended (or the instance was stopped); its ``shutdown`` handler runs."""
    terminated = "terminated"
    """No longer on an activity: stopped, finished, or failed (see ``exc_info``)."""
    unresponsive = "unresponsive"
    """Its provider stopped answering for its activity; it has ended."""

    AVAILABLE: tuple[ServiceState, ...]


ServiceState.AVAILABLE = (ServiceState.starting, ServiceState.running, ServiceState.stopping)


@dataclass(frozen=True)
class ServiceSignal:
    """A message between the requestor and an instance; ``response_to`` is the signal it
    answers, if any."""

    message: Any = None
    response_to: ServiceSignal | None = None


Handler = AsyncGenerator[Script | None, Any]


class Service:
    """Subclass it, give it a payload and handlers; run it with ``Golem.run_service``.

    Subclasses may take keyword arguments in ``__init__`` (``instance_params`` gives them per
    instance); they must call ``super().__init__()``.
    """

    def __init__(self) -> None:
        self._ctx: WorkContext | None = None
        """The instance's context while it is on an activity (``None`` otherwise)."""
        self._state = ServiceState.pending
        self._id = f"{next(_ids)}"
        self._cluster: Cluster[Any] | None = None
        self._inbox: asyncio.Queue[ServiceSignal] = asyncio.Queue()
        self._outbox: asyncio.Queue[ServiceSignal] = asyncio.Queue()
        self._watchers: list[tuple[frozenset[ServiceState], asyncio.Future[ServiceState]]] = []
        self.exc_info: BaseException | None = None
        """What ended the instance (or its last failed start), if something failed."""
        self.started_successfully = False

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.id}: {self._state.value}"
                f"{f' on {self.provider_name}' if self.provider_name else ''}>")

    # -- what the instance is ----------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def ctx(self) -> WorkContext | None:
        """The instance's :class:`WorkContext` while it has an activity (also ``_ctx``)."""
        return self._ctx

    @property
    def cluster(self) -> Cluster[Any] | None:
        return self._cluster

    @property
    def provider_name(self) -> str | None:
        return self._ctx.provider_name if self._ctx is not None else None

    @property
    def provider_id(self) -> str | None:
        return self._ctx.provider_id if self._ctx is not None else None

    @property
    def state(self) -> ServiceState:
        return self._state

    async def wait_for(self, *states: ServiceState) -> ServiceState:
        """Wait until the instance is in one of ``states``; returns that state."""
        if self._state in states:
            return self._state
        future: asyncio.Future[ServiceState] = asyncio.get_running_loop().create_future()
        watcher = (frozenset(states), future)
        self._watchers.append(watcher)
        try:
            return await future
        finally:
            self._watchers.remove(watcher)

    def _set_state(self, state: ServiceState) -> None:
        self._state = state
        for states, future in self._watchers:
            if state in states and not future.done():
                future.set_result(state)

    @property
    def is_available(self) -> bool:
        """Whether it is on an activity (starting, running or stopping)."""
        return self._state in ServiceState.AVAILABLE

    # -- messages ----------------------------------------------------------------------------

    async def send_message(self, message: Any = None) -> None:
        """From the requestor to the instance (its handlers read it with ``_listen``)."""
        await self._inbox.put(ServiceSignal(message))

    def send_message_nowait(self, message: Any = None) -> None:
        self._inbox.put_nowait(ServiceSignal(message))

    async def receive_message(self) -> ServiceSignal:
        """The next message the instance sent (with ``_respond``), waiting for one."""
        return await self._outbox.get()

    def receive_message_nowait(self) -> ServiceSignal | None:
        try:
            return self._outbox.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def _listen(self) -> ServiceSignal:
        """In a handler: the next message from the requestor, waiting for one."""
        return await self._inbox.get()

    def _listen_nowait(self) -> ServiceSignal | None:
        try:
            return self._inbox.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def _respond(self, message: Any, response_to: ServiceSignal | None = None) -> None:
        """In a handler: send ``message`` to the requestor."""
        await self._outbox.put(ServiceSignal(message, response_to))

    def _respond_nowait(self, message: Any, response_to: ServiceSignal | None = None) -> None:
        self._outbox.put_nowait(ServiceSignal(message, response_to))

    # -- what subclasses give ----------------------------------------------------------------

    @staticmethod
    async def get_payload() -> VmPayload | None:
        """What the instances run on (``vm.repo(...)``); ``None``: it is given to
        ``run_service`` instead."""
        return None

    def get_deploy_args(self) -> dict[str, Any]:
        """Arguments of the default ``start``'s ``deploy`` command."""
        return {}

    async def start(self) -> Handler:
        """Deploy and start the activity. Override it to do more, e.g. yielding from
        ``super().start()`` first, then starting one's own processes."""
        script = self._context().new_script()
        script.deploy(**self.get_deploy_args())
        script.start()
        yield script

    async def run(self) -> Handler:
        """What the instance does while it runs; by default, nothing until it is stopped."""
        await asyncio.Event().wait()
        yield None  # never reached: makes this an async generator

    async def shutdown(self) -> Handler:
        """Ending it well on its provider; by default, the activity is sent ``terminate``.
        It runs only while the activity is still there."""
        script = self._context().new_script()
        script.terminate()
        yield script

    async def reset(self) -> None:
        """Called before an instance that failed to start is tried on another provider:
        clear what its handlers set up."""

    def _context(self) -> WorkContext:
        if self._ctx is None:
            raise RuntimeError(f"{self!r} is not on an activity: its handlers run only from "
                               "Golem.run_service")
        return self._ctx
