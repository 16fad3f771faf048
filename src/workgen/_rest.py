"""What every client of a yagna daemon's REST API shares: app-key auth, long polls, JSON bodies.

The requestor's backend and the provider agent each subclass :class:`RestBase` with their own
``request`` (their own retry rules and errors); the rest is here once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

POLL_MARGIN = 10.0
"""Seconds between a long poll's server-side wait and our HTTP timeout."""


class RestBase:
    def __init__(self, api_url: str, appkey: str, *, timeout: float):
        self.api_url = api_url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.api_url, timeout=timeout,
                                      headers={"Authorization": f"Bearer {appkey}"})

    async def aclose(self) -> None:
        await self.http.aclose()

    # Each subclass's own: its retry rules and its errors.
    request: Callable[..., Awaitable[Any]]

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Any:
        return await self.request("POST", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Any:
        return await self.request("DELETE", path, **kw)


def poll_query(params: dict[str, Any] | None, poll: float | None) -> tuple[dict[str, Any], Any]:
    """The query and HTTP timeout of a request; ``poll`` is a long poll's server-side wait
    (sent as ``timeout``), which stretches the HTTP timeout to match."""
    query = dict(params or {})
    if poll is None:
        return query, httpx.USE_CLIENT_DEFAULT
    query.setdefault("timeout", poll)
    return query, poll + POLL_MARGIN


def decode(response: httpx.Response) -> Any:
    """The answer's JSON (text if it is not JSON; ``None`` if empty)."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text
