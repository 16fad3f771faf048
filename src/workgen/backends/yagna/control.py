"""A batch's exec and results over the daemon's GSB, straight to the provider's exe unit.

For ``POST /activity/{id}/exec`` and ``GET /activity/{id}/exec/{batch}``, the requestor's
daemon checks the app key, reads the activity's agreement from its database and the market
(twice per request), then sends the exe unit one message, ``Exec`` or ``GetExecBatchResults``,
and relays its answer; it records nothing. Sending those messages from the backend's own GSB
connection skips that work, which is most of a short script's round trip on the devnet
(``bench/scripts.py``). They go where the daemon sends them and as whom: from the app key's
identity (``/from/<requestor>/to/<provider>/exeunit/<activity>/<Message>``, the results over
the ``/transfer`` transport), so the provider sees the same call either way.

A failure is given the HTTP status the daemon's handler would have answered, so that the
backend's one error map tells them apart as it does for REST.
"""

from __future__ import annotations

import uuid
from typing import Any

from ...errors import BackendUnavailable
from ...gsb import GsbClient, GsbConnectionError, GsbError, GsbRemoteError

EXEC_TIMEOUT = 6.0
ANSWER_MARGIN = 1.0
"""The daemon's own deadlines: 5 s for an exec (its default ``timeout``), and a results call's
wait, each plus a second for the network. Every call needs one: the router never answers a call
to a node that went away."""

# The daemon's answer to each of the exe unit's error kinds (RpcMessageError).
_STATUS = {"badRequest": 400, "forbidden": 403, "notFound": 404, "timeout": 408}


class ControlError(Exception):
    """The exe unit (or the way to it) failed a call; ``status`` is what the daemon's REST
    handler would have answered, ``detail`` says what happened."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ExeUnitRoute:
    """The way to one activity's exe unit over ``bus``, the requestor node's GSB."""

    def __init__(self, bus: GsbClient, requestor_id: str, provider_id: str, activity_id: str):
        self._bus = bus
        self.activity_id = activity_id
        self._exec = f"/from/{requestor_id}/to/{provider_id}/exeunit/{activity_id}/Exec"
        self._results = (f"/transfer/from/{requestor_id}/to/{provider_id}/exeunit/"
                         f"{activity_id}/GetExecBatchResults")

    async def exec(self, script: list[dict[str, Any]]) -> str:
        """Starts ``script`` (the batch as yagna's JSON has it); its batch id."""
        batch_id = uuid.uuid4().hex  # as the daemon makes them
        await self._call(self._exec, {"activityId": self.activity_id, "batchId": batch_id,
                                      "exeScript": script, "timeout": None}, EXEC_TIMEOUT)
        return batch_id

    async def results(self, batch_id: str, command_index: int,
                      wait: float) -> list[dict[str, Any]] | None:
        """The batch's results once command ``command_index`` has finished (or the batch
        failed before it), waiting up to ``wait`` seconds; ``None`` if it is still running."""
        try:
            answer = await self._call(
                self._results, {"activityId": self.activity_id, "batchId": batch_id,
                                "timeout": wait, "commandIndex": command_index},
                wait + ANSWER_MARGIN)
        except ControlError as exc:
            if exc.status == 408:
                return None
            raise
        if not isinstance(answer, list) or not all(isinstance(r, dict) for r in answer):
            raise ControlError(500, f"its provider's exe unit answered results that are not "
                                    f"a list of results: {answer!r:.200}")
        return answer

    async def _call(self, address: str, message: dict[str, Any], timeout: float) -> Any:
        try:
            return await self._bus.call(address, message, timeout=timeout)
        except GsbRemoteError as exc:
            raise ControlError(_status(exc.error),
                               f"its provider's exe unit answered {exc.error!r:.300}") from exc
        except TimeoutError:
            raise ControlError(408, f"its provider did not answer within {timeout:g}s"
                               ) from None
        except GsbConnectionError as exc:
            raise BackendUnavailable(f"the daemon's GSB at {exc.url} went away: {exc}") from exc
        except GsbError as exc:
            # The call did not reach an exe unit: none is there any more (the provider's
            # daemon then answers with an empty reply), or the network failed. The daemon's
            # handler answers 500 for both.
            raise ControlError(500, f"the call did not reach its provider's exe unit: {exc}"
                               ) from exc


def _status(error: object) -> int:
    """The daemon's HTTP status for an exe unit's ``Err`` value: ``"timeout"`` or
    ``{kind: detail}``."""
    kind = next(iter(error), None) if isinstance(error, dict) and len(error) == 1 else error
    return _STATUS.get(kind, 500) if isinstance(kind, str) else 500
