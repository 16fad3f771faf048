"""A small async client for a yagna daemon's REST API, as the provider agent uses it.

Long polls (``…/events?timeout=``) are the daemon's own way to wait: the HTTP timeout is set a
little above the poll's, and an empty answer or a ``408`` simply means "nothing yet".
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

log = logging.getLogger(__name__)

# Margin between a long poll's server-side timeout and our HTTP timeout.
_POLL_MARGIN = 10.0


class YagnaApiError(Exception):
    """The daemon answered with an error status (or could not be reached: ``status`` 0)."""

    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"{method} {path}: HTTP {status} {body[:300]}".strip())
        self.status = status
        self.body = body


class RestClient:
    def __init__(self, api_url: str, appkey: str, *, timeout: float = 30.0):
        self.api_url = api_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {appkey}"},
            timeout=timeout,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: dict[str, Any] | None = None, poll: float | None = None) -> Any:
        """Send a request; returns the decoded JSON body (``None`` for an empty one).

        ``poll`` is the server-side wait of a long poll, in seconds: it goes in the query as
        ``timeout`` and stretches the HTTP timeout to match.
        """
        query = dict(params or {})
        timeout: float | httpx.Timeout | None = None
        if poll is not None:
            query["timeout"] = poll
            timeout = poll + _POLL_MARGIN
        try:
            response = await self._client.request(
                method, path, json=json, params=query or None,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            raise YagnaApiError(method, path, 0, f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 408:
            return None  # a long poll that found nothing
        if response.status_code >= 400:
            raise YagnaApiError(method, path, response.status_code, response.text)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Any:
        return await self.request("POST", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Any:
        return await self.request("DELETE", path, **kw)
