"""The execution unit as a GSB service: ``/public/exeunit/<activityId>`` on the provider's node.

The requestor's daemon turns the activity REST API into calls to this service (through the
network: ``/net/<provider>/exeunit/<activityId>/<Message>``). Message names and payloads are
yagna's (ya-core-model's activity messages); errors answer ``{"Err": {<kind>: detail}}`` with
its ``RpcMessageError`` kinds, spelled as the daemon reads them (``badRequest``, ``notFound``,
``activity``, and the bare ``"timeout"``), so it maps them to the right HTTP status.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ...gsb import GsbHandlerError
from ...protocol.exescript import BatchFormatError, parse_batch
from ..exeunit.unit import ExeUnit, ExeUnitError, UnknownBatch

PREFIX = "/public/exeunit"


def service_address(activity_id: str) -> str:
    return f"{PREFIX}/{activity_id}"


def _error(kind: str, detail: object) -> GsbHandlerError:
    return GsbHandlerError({kind: detail})


MAX_WAIT = 24 * 3600.0


def _index(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _error("badRequest", f"commandIndex must be a non-negative integer, not {value!r}")
    return value


def _seconds(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value <= MAX_WAIT:  # NaN fails both comparisons
        raise _error("badRequest", f"timeout must be between 0 and {MAX_WAIT:g} seconds, "
                                   f"not {value!r}")
    return float(value)


class ExeUnitService:
    """Answers the exe unit's GSB messages for one activity."""

    def __init__(self, unit: ExeUnit, usage_vector: tuple[str, ...],
                 settled: Callable[[], Awaitable[None]] | None = None):
        self.unit = unit
        self.usage_vector = usage_vector
        # Awaited before results go out: a requestor that sees a command's result and asks
        # the daemon for the activity's state must find the state that command left.
        self._settled = settled

    def handle(self, address: str, caller: str, payload: Any) -> Any:
        """The GSB handler (see :data:`workgen.gsb.client.Handler`)."""
        method = address.rsplit("/", 1)[-1]
        if method == "StreamExecBatchResults":
            return self._stream(payload)
        handler = {
            "Exec": self._exec,
            "GetExecBatchResults": self._results,
            "GetRunningCommand": self._running,
            "GetActivityState": self._state,
            "GetActivityUsage": self._usage,
        }.get(method)
        if handler is None:
            return _unsupported(method)
        return handler(payload)

    def _check_activity(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise _error("badRequest", f"expected a message object, got {payload!r}")
        activity_id = payload.get("activityId", payload.get("activity_id"))
        if activity_id not in (None, self.unit.activity_id):
            raise _error("notFound", f"activity {activity_id} is not served here")
        return payload

    async def _exec(self, payload: Any) -> str:
        msg = self._check_activity(payload)
        try:
            commands = parse_batch(msg.get("exeScript") or [])
            # The message's own "timeout" bounds the call (the daemon's wait for our answer),
            # not the batch: the batch runs until done, cancelled or its activity ends.
            return self.unit.exec(commands, batch_id=msg.get("batchId") or None)
        except BatchFormatError as exc:
            raise _error("badRequest", str(exc)) from exc
        except ExeUnitError as exc:
            raise _error("activity", str(exc)) from exc

    async def _results(self, payload: Any) -> list[dict[str, Any]]:
        """yagna's semantics: wait up to ``timeout`` seconds (none: do not wait) for command
        ``commandIndex`` (none: the batch's last) to finish. On timeout a given index is an
        error, while without one the results so far are the answer; with an index, only the
        results up to it."""
        msg = self._check_activity(payload)
        index, wait = _index(msg.get("commandIndex")), _seconds(msg.get("timeout"))
        try:
            batch = self.unit.batch(str(msg.get("batchId")))
        except UnknownBatch as exc:
            raise _error("notFound", str(exc)) from exc
        if index is not None and index >= len(batch.commands):
            raise _error("badRequest", f"commandIndex {index} is past the batch's last command "
                                       f"({len(batch.commands) - 1})")
        wanted = index if index is not None else len(batch.commands) - 1
        try:
            results = await batch.wait_results(wanted, wait)
        except TimeoutError:
            if index is not None:
                # A variant without data: the bare name, which the daemon turns into a 408.
                raise GsbHandlerError("timeout") from None
            results = list(batch.results)
        if index is not None:
            results = [r for r in results if r.index <= index]
        if self._settled is not None and results:
            await self._settled()
        return [r.to_json() for r in results]

    async def _stream(self, payload: Any) -> AsyncIterator[dict[str, Any]]:
        msg = self._check_activity(payload)
        # Unlike the other messages, this one is serialised with snake_case names.
        try:
            subscription = self.unit.stream(msg.get("batch_id") or msg.get("batchId") or "")
        except UnknownBatch as exc:
            raise _error("notFound", str(exc)) from exc
        async with subscription as events:
            async for event in events:
                yield event.to_json()
        if self._settled is not None:
            await self._settled()

    async def _running(self, payload: Any) -> list[dict[str, Any]]:
        self._check_activity(payload)
        return self.unit.running_commands()

    async def _state(self, payload: Any) -> dict[str, Any]:
        self._check_activity(payload)
        return activity_state(self.unit)

    async def _usage(self, payload: Any) -> dict[str, Any]:
        self._check_activity(payload)
        return await usage_report(self.unit, self.usage_vector)


async def _unsupported(method: str) -> Any:
    raise _error("badRequest", f"the execution unit does not support {method!r}")


def activity_state(unit: ExeUnit) -> dict[str, Any]:
    """``ActivityState`` as yagna serialises it: a (current, pending) pair plus a reason."""
    return {"state": [unit.state.value, None], "reason": unit.state_reason, "errorMessage": None}


async def usage_report(unit: ExeUnit, usage_vector: tuple[str, ...]) -> dict[str, Any]:
    """``ActivityUsage``: the counters in the agreement's usage-vector order."""
    usage = await unit.usage()
    return {"currentUsage": [float(usage.get(name, 0.0)) for name in usage_vector],
            "timestamp": int(time.time())}
