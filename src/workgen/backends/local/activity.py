"""Activities of the local network: a provider agent's activity, and the batches run on it.

Each activity owns one :class:`~workgen.provider.exeunit.unit.ExeUnit`, held open by its
provider agent in a task of the network's task group, so the unit's own tasks (its batches, its
sandbox) have a parent that the network's shutdown reaches.

A batch's outcome is told apart by who ended it: a batch that failed because the sandbox died
or the provider ended the activity raises :class:`~workgen.errors.ActivityLost` (broken); one
cut short because we destroyed the activity raises :class:`~workgen.errors.ActivityClosed`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from ..base import Activity
from ...errors import ActivityClosed, ActivityLost
from ...protocol.exescript import Command
from ...protocol.results import CommandOutcome, RuntimeEvent
from ...provider.agent import AgentActivity, ClosedBy
from ...provider.exeunit.batch import EventSubscription
from ...provider.exeunit.unit import ActivityState, ExeUnit, ExeUnitError

log = logging.getLogger(__name__)

LOST_PREFIX = "sandbox lost"
"""How the execution unit's ``state_reason`` starts when its sandbox died under it."""

class ActivityRecord:
    """One activity as the local network serves it: the provider agent's activity (its unit,
    who closed it and why, its final usage) and the batches started on it."""

    def __init__(self, held: AgentActivity):
        self.held = held
        self.activity = Activity(id=held.id, agreement_id=held.agreement.id)
        self._batches: list[LocalBatch] = []

    @property
    def id(self) -> str:
        return self.held.id

    @property
    def unit(self) -> ExeUnit:
        return self.held.unit

    @property
    def closed_by(self) -> ClosedBy | None:
        return self.held.closed_by

    @property
    def close_reason(self) -> str | None:
        return self.held.close_reason

    @property
    def closed(self) -> bool:
        return self.held.closed

    def lost_reason(self) -> str | None:
        """Why the unit broke (its sandbox died), or ``None``."""
        reason = self.unit.state_reason or ""
        if self.unit.state is ActivityState.TERMINATED and reason.startswith(LOST_PREFIX):
            return reason
        return None

    async def detach_batches(self) -> None:
        for batch in self._batches:
            await batch.detach()

    async def close(self, by: ClosedBy, reason: str) -> dict[str, float]:
        """Close the unit (kill its sandbox, remove its files); returns the final usage."""
        return await self.held.close(by, reason)

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
        self._ending = self._ending or self._ending_now()

    def _ending_now(self) -> _Ending:
        record = self._record
        return _Ending(record.lost_reason(), record.closed_by, record.close_reason)

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

    async def results(self) -> list[CommandOutcome]:
        if self._claimed is None:
            self._claimed = "results"
            await self._sub.aclose()
        # A future of our own: cancelling us does not cancel the batch.
        await self._batch.ended()
        # The execution unit records each result with its code and failure kind.
        results = [r if isinstance(r, CommandOutcome) else CommandOutcome.of(r, None, None)
                   for r in self._batch.results]
        if results and results[-1].ok and results[-1].is_batch_finished:
            return results
        # The batch has just ended: its task's done callback may not have run yet.
        ending = self._ending or self._ending_now()
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
