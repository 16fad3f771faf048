"""The task queue of one job: data consumed lazily, retried tasks first, nothing lost.

Workers take tasks with :meth:`TaskQueue.get`. It returns ``None`` only when the job is over:
the data is exhausted and no task is still out with a worker (a task out may fail and come back,
so an idle worker waits rather than leaving it stranded).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

from .task import Task, TaskStatus


class TaskQueue:
    def __init__(self, data: Iterable[Any] | AsyncIterable[Any]):
        self._sync: Iterator[Any] | None = None
        self._async: AsyncIterator[Any] | None = None
        if isinstance(data, AsyncIterable):
            self._async = aiter(data)
        elif isinstance(data, Iterable):
            self._sync = iter(data)
        else:
            raise TypeError(f"data must be an iterable or async iterable, got {type(data)!r}")
        self._retry: collections.deque[Task[Any, Any]] = collections.deque()
        self._out = 0
        self._held_by_waiters = 0
        self._claims = 0
        self._exhausted = False
        self._closed = False
        self._changed = asyncio.Condition()
        self._pull = asyncio.Lock()
        self._next_id = 1
        self.created = 0
        self.all_done = asyncio.Event()
        """Set once the job has no more work (see :attr:`finished`)."""

    @property
    def out(self) -> int:
        """Tasks handed out and not yet settled."""
        return self._out

    @property
    def finished(self) -> bool:
        return (self._exhausted or self._closed) and not self._retry and self._out == 0

    async def get(self, holding: int = 0) -> Task[Any, Any] | None:
        """The next task for a worker that has an activity; waits while others hold tasks.

        ``holding``: tasks the caller holds unsettled. They cannot come back while it waits,
        so when every task out is held by waiting callers there is nothing to wait for: the
        answer is ``None`` (a worker that takes tasks without settling them ends, and its
        tasks are then retried or failed, instead of waiting forever).
        """
        while True:
            task = self.take_nowait()
            if task is not None or self._closed:
                return task
            if not self._exhausted:
                task = await self._pull_one()
                if task is not None:
                    self._out += 1
                    return task
                continue
            if self._out - self._held_by_waiters - holding <= 0:
                return None
            self._held_by_waiters += holding
            try:
                if holding:
                    await self._notify()  # other waiters may now have nothing to wait for
                async with self._changed:
                    await self._changed.wait_for(
                        lambda: bool(self._retry) or self._closed
                        or self._out - self._held_by_waiters <= 0)
            finally:
                self._held_by_waiters -= holding

    async def wait_for_work(self) -> bool:
        """Wait until a task is ready that no other slot has claimed, and claim it (True);
        False when the job has no more work.

        For slots without an activity: a slot signs an agreement only for a claimed task, so
        no more agreements are made than there is work for, and it holds no task while it
        negotiates. It then calls :meth:`take_claimed` or :meth:`release_claim`.
        """
        while True:
            if self._closed:
                return False
            if len(self._retry) > self._claims:
                self._claims += 1
                return True
            if not self._exhausted:
                task = await self._pull_one()
                if task is not None:
                    self._retry.append(task)
                continue
            if self._out == 0 and not self._retry:
                return False
            async with self._changed:
                await self._changed.wait_for(
                    lambda: len(self._retry) > self._claims or self.finished or self._closed)

    def take_claimed(self) -> Task[Any, Any] | None:
        """The claimed task (``None`` if a worker with an activity took it meanwhile)."""
        self._claims -= 1
        return self.take_nowait()

    async def release_claim(self) -> None:
        self._claims -= 1
        await self._notify()

    def take_nowait(self) -> Task[Any, Any] | None:
        if self._closed or not self._retry:
            return None
        self._out += 1
        return self._retry.popleft()

    async def _pull_one(self) -> Task[Any, Any] | None:
        async with self._pull:
            if self._exhausted or self._closed:
                return None  # changed while we waited for the lock
            try:
                if self._async is not None:
                    item = await anext(self._async)
                else:
                    assert self._sync is not None
                    item = next(self._sync)
            except (StopIteration, StopAsyncIteration):
                self._exhausted = True
                await self._notify()
                return None
        task: Task[Any, Any] = item if isinstance(item, Task) else Task(item)
        if task.status is not TaskStatus.WAITING:
            raise ValueError(f"{task!r} was already used in a job; make a new Task")
        task.id = str(self._next_id)
        self._next_id += 1
        self.created += 1
        return task

    async def settle(self, task: Task[Any, Any]) -> None:
        """A task handed out is finished for good (accepted, rejected or failed)."""
        self._out -= 1
        await self._notify()

    async def put_back(self, task: Task[Any, Any]) -> None:
        """A task handed out goes back, to be taken before any new one."""
        self._out -= 1
        self._retry.append(task)
        await self._notify()

    def drain(self) -> list[Task[Any, Any]]:
        """Stop the queue; return the tasks that waited for a retry (the data is not read on)."""
        self._closed = True
        left = list(self._retry)
        self._retry.clear()
        return left

    async def close(self) -> None:
        self._closed = True
        await self._notify()
        if self._async is not None and inspect.isasyncgen(self._async):
            await self._async.aclose()

    async def _notify(self) -> None:
        if self.finished:
            self.all_done.set()
        async with self._changed:
            self._changed.notify_all()
