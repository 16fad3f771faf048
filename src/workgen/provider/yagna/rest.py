"""A small async client for a yagna daemon's REST API, as the provider agent uses it.

Long polls (``…/events?timeout=``) are the daemon's own way to wait: the HTTP timeout is set a
little above the poll's, and an empty answer or a ``408`` simply means "nothing yet".
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from ..._rest import RestBase, decode, poll_query

log = logging.getLogger(__name__)


class YagnaApiError(Exception):
    """The daemon answered with an error status (or could not be reached: ``status`` 0)."""

    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"{method} {path}: HTTP {status} {body[:300]}".strip())
        self.status = status
        self.body = body


class RestClient(RestBase):
    def __init__(self, api_url: str, appkey: str, *, timeout: float = 30.0):
        super().__init__(api_url, appkey, timeout=timeout)

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: dict[str, Any] | None = None, poll: float | None = None) -> Any:
        """Send a request; returns the decoded JSON body (``None`` for an empty one).

        ``poll`` is the server-side wait of a long poll, in seconds: it goes in the query as
        ``timeout`` and stretches the HTTP timeout to match.
        """
        query, timeout = poll_query(params, poll)
        try:
            response = await self.http.request(method, path, json=json, params=query or None,
                                               timeout=timeout)
        except httpx.HTTPError as exc:
            raise YagnaApiError(method, path, 0, f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 408:
            return None  # a long poll that found nothing
        if response.status_code >= 400:
            raise YagnaApiError(method, path, response.status_code, response.text)
        return decode(response)
