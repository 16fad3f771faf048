"""HTTP access to a yagna daemon for the yagna backend, with errors mapped to workgen's.

Every failure of the daemon's REST API becomes a :mod:`workgen.errors` error here, at the edge:
a daemon that cannot be reached is :class:`~workgen.errors.BackendUnavailable`, an error answer
:class:`~workgen.errors.BackendError` (with the status). Requests that are safe to repeat (GETs,
and long polls) are retried a few times on 5xx answers and dropped connections.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from ..._rest import RestBase, decode, poll_query
from ...errors import BackendError, BackendUnavailable

log = logging.getLogger(__name__)

_RETRIES = 3
_RETRY_DELAY = 0.5


class ApiError(BackendError):
    def __init__(self, message: str, *, status: int, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


class YagnaApi(RestBase):
    def __init__(self, api_url: str, appkey: str, *, timeout: float = 60.0):
        super().__init__(api_url, appkey, timeout=timeout)

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: dict[str, Any] | None = None, poll: float | None = None,
                      ok: tuple[int, ...] = ()) -> Any:
        """The decoded JSON answer (``None`` when empty or a long poll's 408).

        ``poll`` is a long poll's server-side wait (sent as ``timeout``): its 408 means "nothing
        yet"; any other request's 408 is an error. ``ok`` lists error statuses the caller
        handles itself (returned as ``None``).
        """
        query, timeout = poll_query(params, poll)
        safe = method == "GET"
        for attempt in range(_RETRIES if safe else 1):
            try:
                response = await self.http.request(method, path, json=json,
                                                   params=query or None, timeout=timeout)
            except httpx.TransportError as exc:
                if safe and attempt + 1 < _RETRIES:
                    await asyncio.sleep(_RETRY_DELAY)  # a dropped connection: try again
                    continue
                raise BackendUnavailable(
                    f"yagna at {self.api_url} is unreachable ({method} {path}: {exc!r}); "
                    "is the daemon running? (workgen devnet up starts one)") from exc
            status = response.status_code
            if status >= 500 and safe and attempt + 1 < _RETRIES:
                await asyncio.sleep(_RETRY_DELAY)
                continue
            if (status == 408 and poll is not None) or status in ok:
                return None  # a long poll that found nothing, or a status the caller takes
            if status == 408:
                # Not a long poll: the daemon gave up waiting for the other side (a provider
                # that no longer answers), which is an error like any other.
                raise ApiError(f"yagna: {method} {path} timed out waiting for the other side "
                               "(HTTP 408)", status=status, body=response.text)
            if status == 401:
                raise BackendUnavailable(f"yagna at {self.api_url} refused the app key "
                                         "(check YAGNA_APPKEY)")
            if status >= 400:
                raise ApiError(f"yagna: {method} {path} failed with HTTP {status}: "
                               f"{response.text[:300]}", status=status, body=response.text)
            return decode(response)
        raise AssertionError("unreachable")
