"""One ExeScript batch as the execution unit tracks it: its results so far and its live events.

Results are kept whole (they are small: a captured output is bounded by its capture mode), so
``GetExecBatchResults`` can be answered at any time, waiting for a given command index. Runtime
events go to every open subscription, each a bounded queue: a slow subscriber slows the
command's output down (back-pressure) rather than growing memory. A subscription opened late
first replays the batch's events so far (output up to :data:`HISTORY_BYTES`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from types import TracebackType

from ...protocol.exescript import Command
from ...protocol.results import CommandResult, RuntimeEvent, StdErr, StdOut

SUBSCRIPTION_QUEUE = 256
HISTORY_BYTES = 1 << 20
"""Output kept for subscribers that come late; beyond it they get the live part only."""


class EventSubscription:
    """Live runtime events of one batch; iterate it, and close it when done (``async with``)."""

    _END = object()

    def __init__(self, batch: Batch):
        self._batch = batch
        self._queue: asyncio.Queue[object] = asyncio.Queue(SUBSCRIPTION_QUEUE)
        self._ended = False
        # A subscriber that comes late (the daemon opens the SSE stream after Exec returned, and
        # a quick command may be over by then) first gets what it missed.
        self._backlog: collections.deque[object] = collections.deque(batch._history)
        if batch.finished.is_set():
            self._backlog.append(self._END)
        else:
            batch._subscriptions.add(self)

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> RuntimeEvent:
        if self._ended:
            raise StopAsyncIteration
        item = self._backlog.popleft() if self._backlog else await self._queue.get()
        if item is self._END:
            self._ended = True
            raise StopAsyncIteration
        assert isinstance(item, RuntimeEvent)
        return item

    async def aclose(self) -> None:
        self._ended = True
        self._batch._subscriptions.discard(self)
        # Unblock a publisher waiting on our full queue.
        while not self._queue.empty():
            self._queue.get_nowait()

    async def __aenter__(self) -> EventSubscription:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class Batch:
    def __init__(self, batch_id: str, commands: Sequence[Command]):
        self.id = batch_id
        self.commands = list(commands)
        self.results: list[CommandResult] = []
        self.current: int | None = None
        self.finished = asyncio.Event()
        self.cancel_requested = False
        self.task: asyncio.Task[None] | None = None
        self.finished_at: float | None = None
        """``time.monotonic()`` when its last result came."""
        self._changed = asyncio.Condition()
        self._subscriptions: set[EventSubscription] = set()
        self._history: list[RuntimeEvent] = []
        self._history_bytes = 0
        self._ended = False
        self._end_waiters: list[asyncio.Future[None]] = []

    def ended(self) -> asyncio.Future[None]:
        """Done once the batch's task has run to its end (whatever the results say), as a
        future of the caller's own: cancelling it leaves the batch running. Told from inside
        the task as it ends, one turn of the event loop sooner than its done callbacks."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._ended:
            waiter.set_result(None)
        else:
            self._end_waiters.append(waiter)
        return waiter

    def mark_ended(self) -> None:
        """Called by the execution unit as the batch's task ends (and again once it is done,
        for a task cancelled before it ran); idempotent."""
        self._ended = True
        for waiter in self._end_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._end_waiters.clear()

    async def publish(self, event: RuntimeEvent) -> None:
        if isinstance(event.kind, (StdOut, StdErr)):
            size = len(event.kind.output)
            if self._history_bytes + size <= HISTORY_BYTES:
                self._history_bytes += size
                self._history.append(event)
        else:
            self._history.append(event)
        for sub in list(self._subscriptions):
            if not sub._ended:
                await sub._queue.put(event)

    async def add_result(self, result: CommandResult) -> None:
        self.results.append(result)
        if result.is_batch_finished:
            self.current = None
            self.finished_at = time.monotonic()
            self.finished.set()
            for sub in list(self._subscriptions):
                if not sub._ended:
                    await sub._queue.put(EventSubscription._END)
            self._subscriptions.clear()
        async with self._changed:
            self._changed.notify_all()

    async def wait_results(
        self, command_index: int | None = None, timeout: float | None = None
    ) -> list[CommandResult]:
        """Results so far; with ``command_index``, first wait until that command has finished.

        Raises :class:`TimeoutError` if ``timeout`` passes first.
        """

        def ready() -> bool:
            if command_index is None or self.finished.is_set():
                return True
            return any(r.index >= command_index for r in self.results)

        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(ready)
        return list(self.results)
