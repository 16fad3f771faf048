"""``WorkContext``: a worker's handle on its activity; it builds the scripts the worker yields
(the job runs them, with :mod:`workgen.requestor.runner`)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from ..backends.base import Activity, Agreement, Backend
from ..protocol.results import utc_now
from . import events
from .script import Script


class WorkContext:
    """Given to a worker for one activity on one provider; builds scripts for it."""

    def __init__(
        self,
        *,
        backend: Backend,
        agreement: Agreement,
        activity: Activity,
        job_id: str,
        emit: Callable[[events.Event], None],
        stream_output: bool = False,
    ):
        self._backend = backend
        self._agreement = agreement
        self._activity = activity
        self._job_id = job_id
        self._emit = emit
        self._stream_output = stream_output
        self._created = utc_now()

    def __repr__(self) -> str:
        return f"WorkContext(activity={self.id}, provider={self.provider_name})"

    @property
    def id(self) -> str:
        """The activity's id."""
        return self._activity.id

    @property
    def provider_name(self) -> str:
        return self._agreement.provider_name

    @property
    def provider_id(self) -> str:
        return self._agreement.provider_id

    @property
    def agreement_id(self) -> str:
        return self._agreement.id

    def new_script(self, timeout: float | None = None, wait_for_results: bool = True) -> Script:
        """A new script for this activity.

        ``timeout`` (seconds) bounds the whole script; ``wait_for_results=False`` resumes the
        worker as soon as the script is sent (errors then surface when awaiting its results).
        """
        return Script(self, timeout=timeout, wait_for_results=wait_for_results,
                      stream_output=self._stream_output)

    async def get_usage(self) -> dict[str, float]:
        """The activity's usage counters, as its provider measures them."""
        return await self._backend.activity_usage(self._activity)

    async def get_cost(self) -> Decimal:
        """What the activity has cost so far, by the agreement's pricing and its usage."""
        return self._agreement.pricing.price_for(await self.get_usage())

    async def get_raw_state(self) -> str:
        return await self._backend.activity_state(self._activity)
