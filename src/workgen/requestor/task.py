"""``Task``: one unit of work of a job, handed to workers and judged by them."""

from __future__ import annotations

import enum
import time
from typing import Generic, TypeVar

D = TypeVar("D")
R = TypeVar("R")


class TaskStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"


class Task(Generic[D, R]):
    """A piece of work: ``data`` in, ``result`` out once a worker accepts it.

    A worker calls :meth:`accept_result` or :meth:`reject_result` for each task it takes. A task
    whose worker fails is retried elsewhere until the job's ``max_retries`` is spent; a task that
    fails for good, or is rejected without retry, is reported (``Golem.failed_tasks``, events and
    the summary), never dropped.
    """

    def __init__(self, data: D):
        self.data = data
        self.id = ""
        self.result: R | None = None
        self.status = TaskStatus.WAITING
        self.attempts = 0
        self.reason: str | None = None
        """Why the task was rejected or failed."""
        self.provider_name: str | None = None
        self._started: float | None = None
        self._running_time = 0.0
        self._retry = False

    def __repr__(self) -> str:
        return f"Task(id={self.id!r}, data={self.data!r}, status={self.status.value})"

    @property
    def running_time(self) -> float:
        """Seconds spent running, over all attempts so far."""
        if self._started is not None:
            return self._running_time + time.monotonic() - self._started
        return self._running_time

    def accept_result(self, result: R | None = None) -> None:
        self._need_running("accept_result")
        self.result = result
        self._stop(TaskStatus.ACCEPTED)

    def reject_result(self, reason: str | None = None, retry: bool = False) -> None:
        """Reject the result; with ``retry`` the task goes back to the queue for another try."""
        self._need_running("reject_result")
        self.reason = reason
        self._retry = retry
        self._stop(TaskStatus.REJECTED)

    def _need_running(self, what: str) -> None:
        if self.status is not TaskStatus.RUNNING:
            raise RuntimeError(f"{what}() on task {self.id} which is {self.status.value}, "
                               "not running")

    def _start(self, provider_name: str) -> None:
        self.status = TaskStatus.RUNNING
        self.attempts += 1
        self.provider_name = provider_name
        self._retry = False
        self._started = time.monotonic()

    def _stop(self, status: TaskStatus) -> None:
        if self._started is not None:
            self._running_time += time.monotonic() - self._started
            self._started = None
        self.status = status

    def _requeue(self) -> None:
        self._stop(TaskStatus.WAITING)

