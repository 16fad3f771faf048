"""Activities of the local network: an execution unit held open by a task, and its batches.

Each activity owns one :class:`~workgen.provider.exeunit.unit.ExeUnit`. The unit is entered
and left by :meth:`ActivityRecord.hold`, a task in the network's task group, so the unit's own
tasks (its batches, its sandbox) have a parent that the network's shutdown reaches.

A batch's outcome is told apart by who ended it: a batch that failed because the sandbox died
or the provider ended the activity raises :class:`~workgen.errors.ActivityLost` (broken); one
cut short because we destroyed the activity raises :class:`~workgen.errors.ActivityClosed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from ..base import Activity
from ...errors import ActivityClosed, ActivityLost
from ...protocol.exescript import Command
from ...protocol.results import CommandResult, RuntimeEvent
from ...provider.exeunit.batch import EventSubscription
from ...provider.exeunit.unit import ActivityState, ExeUnit, ExeUnitError

log = logging.getLogger(__name__)

LOST_PREFIX = "sandbox lost"
"""How the execution unit's ``state_reason`` starts when its sandbox died under it."""

ClosedBy = Literal["requestor", "provider"]


class ActivityRecord:
    """One activity: its execution unit, who closed it and why, and its final usage."""

    def __init__(self, activity: Activity, unit: ExeUnit):
        self.activity = activity
        self.unit = unit
        self.closed_by: ClosedBy | None = None
        self.close_reason: str | None = None
        self.final_usage: dict[str, float] | None = None
        self._batches: list[LocalBatch] = []
        self._close = asyncio.Event()
        self._done = asyncio.Event()

    @property
    def id(self) -> str:
        return self.activity.id

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    def lost_reason(self) -> str | None:
        """Why the unit broke (its sandbox died), or ``None``."""
        reason = self.unit.state_reason or ""
        if self.unit.state is ActivityState.TERMINATED and reason.startswith(LOST_PREFIX):
            return reason
        return None

    async def hold(self, ready: asyncio.Future[None]) -> None:
        """Keep the unit open until :meth:`close`; the body of the activity's task."""
        try:
            async with self.unit:
                if not ready.done():  # else whoever asked for the activity gave up on it
                    ready.set_result(None)
                await self._close.wait()
        except Exception as exc:
            # One activity failing must not tear down the network's task group.
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.error("activity %s: execution unit failed: %r", self.id, exc)
        finally:
            # The unit is closed here, so this reads the final counters without suspending.
            self.final_usage = await self.unit.usage()
            self._done.set()

    def abandon(self) -> None:
        """Let the unit close without waiting (its creator was cancelled before it was ready)."""
        self.closed_by, self.close_reason = "requestor", "abandoned while being created"
        self._close.set()

    async def close(self, by: ClosedBy, reason: str) -> dict[str, float]:
        """Close the unit (kill its sandbox, remove its files); returns the final usage."""
        if self.closed_by is None:
            self.closed_by, self.close_reason = by, reason
        # A consumer that stopped reading a batch's events would hold its batch (and so the
        # unit's shutdown) back; the activity is going, so its event streams end here.
        for batch in self._batches:
            await batch.detach()
        self._close.set()
        await self._done.wait()
        assert self.final_usage is not None
        return self.final_usage

    def check_usable(self) -> None:
        """Raise the error that says why this activity cannot take a batch, if it cannot."""
        if self.closed_by == "requestor":
            raise ActivityClosed(f"activity {self.id} was destroyed", activity_id=self.id)
        if self.closed_by == "provider":
            raise ActivityLost(f"activity {self.id} was ended by its provider: "
                               f"{self.close_reason}", activity_id=self.id)
        lost = self.lost_reason()
        if lost is not None:
            raise ActivityLost(f"activity {self.id}: {lost}", activity_id=self.id)
        if self.unit.state is ActivityState.TERMINATED or self.closed:
            raise ActivityClosed(f"activity {self.id} is terminated ({self.unit.state_reason})",
                                 activity_id=self.id)

    def exec(self, commands: Sequence[Command], timeout: float | None) -> LocalBatch:
        self.check_usable()
        try:
            batch_id = self.unit.exec(commands, timeout=timeout)
        except ExeUnitError:
            self.check_usable()
            raise
        # Subscribed at once, before anything can yield to the batch's task: no event is missed.
        batch = LocalBatch(self, batch_id, self.unit.stream(batch_id))
        self._batches = [b for b in self._batches if not b.done] + [batch]
        return batch


@dataclass(frozen=True)
class _Ending:
    """The activity's condition at the moment a batch ended."""

    lost: str | None
    closed_by: ClosedBy | None
    close_reason: str | None


class LocalBatch:
    """A batch running in a local activity (a :class:`~workgen.backends.base.BatchHandle`).

    Its events go to one consumer: call :meth:`events` before :meth:`results` to get them.
    ``results()`` without a prior ``events()`` drops the live stream (so an unread stream cannot
    hold the batch back) and a later ``events()`` is a ``RuntimeError``. Iterate ``events()`` to
    its end or ``aclose()`` it: an abandoned, unread stream slows the batch down to a halt.
    """

    def __init__(self, record: ActivityRecord, batch_id: str, subscription: EventSubscription):
        self.id = batch_id
        self._record = record
        self._sub = subscription
        self._claimed: Literal["events", "results"] | None = None
        self._batch = record.unit.batch(batch_id)
        self._task = self._batch.task
        assert self._task is not None
        self._ending: _Ending | None = None
        self._task.add_done_callback(self._on_done)

    @property
    def done(self) -> bool:
        return self._task is None or self._task.done()

    def _on_done(self, _: object) -> None:
        record = self._record
        self._ending = _Ending(record.lost_reason(), record.closed_by, record.close_reason)

    async def detach(self) -> None:
        await self._sub.aclose()

    def events(self) -> AsyncIterator[RuntimeEvent]:
        if self._claimed is not None:
            raise RuntimeError(
                f"the events of batch {self.id} are already taken by a call to {self._claimed}()"
                ": call events() once, before results()"
            )
        self._claimed = "events"
        return _Events(self._sub)

    async def results(self) -> list[CommandResult]:
        if self._claimed is None:
            self._claimed = "results"
            await self._sub.aclose()
        assert self._task is not None
        # asyncio.wait, unlike awaiting the task, does not cancel the batch if we are cancelled.
        await asyncio.wait([self._task])
        results = list(self._batch.results)
        if results and results[-1].ok and results[-1].is_batch_finished:
            return results
        ending = self._ending or _Ending(None, None, None)
        activity_id = self._record.id
        if ending.lost is not None:
            raise ActivityLost(f"activity {activity_id}: {ending.lost}", activity_id=activity_id)
        if ending.closed_by == "provider":
            raise ActivityLost(f"activity {activity_id} was ended by its provider while batch "
                               f"{self.id} ran: {ending.close_reason}", activity_id=activity_id)
        if ending.closed_by == "requestor":
            raise ActivityClosed(f"activity {activity_id} was destroyed while batch {self.id} ran",
                                 activity_id=activity_id)
        if not self._batch.finished.is_set():
            raise ActivityLost(f"activity {activity_id}: the execution unit stopped batch "
                               f"{self.id} without a result", activity_id=activity_id)
        return results

    async def cancel(self) -> bool:
        if not self._record.closed:
            await self._record.unit.cancel(self.id)
        return True


class _Events:
    """The batch's runtime events; ends when the batch has finished."""

    def __init__(self, sub: EventSubscription):
        self._sub = sub

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> RuntimeEvent:
        return await self._sub.__anext__()

    async def aclose(self) -> None:
        await self._sub.aclose()
