"""The errors workgen raises, as one hierarchy.

Backends translate their native failures (HTTP, GSB, sandbox) into these at their edge, so the
requestor and its users only ever catch what is listed here. Misuse of the API (a wrong argument,
a call in the wrong order) raises plain ``ValueError``/``TypeError``/``RuntimeError`` instead.

::

    WorkgenError
    ├── BackendError                  a backend failed to do what was asked
    │   └── BackendUnavailable        ... because it cannot be reached or started
    ├── MarketError
    │   ├── NoProvidersError          no offer matched the demand in time
    │   └── AgreementRejected         a provider refused (or could not keep) an agreement
    ├── ImageNotFound                 the payload's image cannot be resolved
    ├── ActivityError
    │   ├── ActivityLost              the provider's side broke (killed, unreachable): broken
    │   └── ActivityClosed            we destroyed the activity ourselves: closed
    ├── BatchError                    thrown into a worker at its ``yield``
    │   ├── CommandExecutionError     a command of the script failed
    │   ├── BatchTimeoutError         the script ran out of time
    │   └── CommandSkipped            (set on futures of commands after a failed one)
    ├── DownloadLimitExceeded         a download is bigger than the limit asked for
    ├── PaymentError
    │   └── BudgetExhausted           the budget cannot pay for more work
    └── JobTimeoutError               a job ran out of time (also a ``TimeoutError``)
"""

from __future__ import annotations

from typing import Any


class WorkgenError(Exception):
    """Base of every error workgen raises on purpose."""


class BackendError(WorkgenError):
    pass


class BackendUnavailable(BackendError):
    pass


class MarketError(WorkgenError):
    pass


class NoProvidersError(MarketError):
    pass


class AgreementRejected(MarketError):
    def __init__(self, message: str, *, provider_id: str | None = None):
        super().__init__(message)
        self.provider_id = provider_id


class ImageNotFound(WorkgenError):
    pass


class ActivityError(WorkgenError):
    def __init__(self, message: str, *, activity_id: str | None = None):
        super().__init__(message)
        self.activity_id = activity_id


class ActivityLost(ActivityError):
    """The activity broke on the provider's side: its processes or its provider are gone."""


class ActivityClosed(ActivityError):
    """The activity was destroyed by this requestor; it cannot be used any more."""


class BatchError(WorkgenError):
    """A script failed remotely; raised into the worker at the ``yield`` of that script."""


class CommandExecutionError(BatchError):
    """A command of a script failed: ``.result`` holds its :class:`~workgen.Result`."""

    def __init__(self, message: str, *, result: Any = None):
        super().__init__(message)
        self.result = result

    @property
    def index(self) -> int | None:
        return getattr(self.result, "index", None)

    @property
    def stderr(self) -> Any:
        return getattr(self.result, "stderr", None)


class BatchTimeoutError(BatchError, TimeoutError):
    pass


class CommandSkipped(BatchError):
    """The command did not run because an earlier command of its script failed."""


class DownloadLimitExceeded(WorkgenError):
    def __init__(self, message: str, *, limit: int, size: int):
        super().__init__(message)
        self.limit = limit
        self.size = size


class PaymentError(WorkgenError):
    pass


class BudgetExhausted(PaymentError):
    pass


class JobTimeoutError(WorkgenError, TimeoutError):
    pass
