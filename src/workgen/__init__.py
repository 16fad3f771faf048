"""workgen: the Golem work generator pattern for Python.

A requestor writes a *worker*, an async generator that builds scripts from a
:class:`WorkContext` and ``yield``s them; :class:`Golem` finds providers, runs the scripts in
their execution units, pays for the work and reports what happened::

    async def worker(context: WorkContext, tasks: AsyncIterable[Task]):
        async for task in tasks:
            script = context.new_script()
            future_result = script.run("/bin/sh", "-c", "date")
            yield script
            task.accept_result(result=await future_result)

By default it runs on an embedded local network of sandboxed providers (:class:`LocalNetwork`).
"""

from .backends.local import LocalNetwork, ProviderConfig
from .errors import (
    ActivityClosed, ActivityError, ActivityLost, AgreementRejected, BackendError,
    BackendUnavailable, BatchError, BatchTimeoutError, BudgetExhausted, CommandExecutionError,
    CommandSkipped, DownloadLimitExceeded, ImageNotFound, JobTimeoutError, MarketError,
    NoProvidersError, PaymentError, WorkgenError,
)
from .protocol.exescript import AtEnd, Stream
from .requestor import events, vm
from .requestor.context import WorkContext
from .requestor.display import ProgressDisplay
from .requestor.cluster import Cluster
from .requestor.golem import Golem
from .requestor.script import Result, Script
from .requestor.service import Service, ServiceSignal, ServiceState
from .requestor.strategy import (
    DecreaseScoreForUnconfirmedAgreement, LeastExpensiveLinearPayuMS, MarketStrategy,
    ProviderFilter,
)
from .requestor.task import Task, TaskStatus

__all__ = [
    "ActivityClosed",
    "ActivityError",
    "ActivityLost",
    "AgreementRejected",
    "AtEnd",
    "BackendError",
    "BackendUnavailable",
    "BatchError",
    "BatchTimeoutError",
    "BudgetExhausted",
    "Cluster",
    "CommandExecutionError",
    "CommandSkipped",
    "DecreaseScoreForUnconfirmedAgreement",
    "DownloadLimitExceeded",
    "Golem",
    "ImageNotFound",
    "JobTimeoutError",
    "LeastExpensiveLinearPayuMS",
    "LocalNetwork",
    "MarketError",
    "MarketStrategy",
    "NoProvidersError",
    "PaymentError",
    "ProgressDisplay",
    "ProviderConfig",
    "ProviderFilter",
    "Result",
    "Script",
    "Service",
    "ServiceSignal",
    "ServiceState",
    "Stream",
    "Task",
    "TaskStatus",
    "WorkContext",
    "WorkgenError",
    "events",
    "vm",
]
