"""The yagna backend's HTTP edge: retries where safe, clear errors otherwise (real HTTP server)."""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator
from typing import Any

import pytest

from support.http import serve

from workgen.backends.yagna.api import ApiError, YagnaApi
from workgen.errors import BackendUnavailable


class Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` requests of each path, then 200."""

    failures = 2
    seen: dict[str, int] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        count = self.seen.get(self.path, 0)
        self.seen[self.path] = count + 1
        if self.path.startswith("/drop"):
            if count < self.failures:
                self.connection.close()  # the connection just goes away
                return
        elif count < self.failures:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"busy")
            return
        body = json.dumps({"path": self.path, "tries": count + 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer


@pytest.fixture
def server() -> Iterator[str]:
    Flaky.seen = {}
    with serve(Flaky) as url:
        yield url


async def test_gets_are_retried_on_5xx(server: str) -> None:
    api = YagnaApi(server, "key")
    try:
        assert (await api.get("/state"))["tries"] == 3
    finally:
        await api.aclose()


async def test_gets_are_retried_on_a_dropped_connection(server: str) -> None:
    api = YagnaApi(server, "key")
    try:
        assert (await api.get("/drop/x"))["tries"] == 3
    finally:
        await api.aclose()


async def test_posts_are_not_repeated_and_the_error_is_reported(server: str) -> None:
    api = YagnaApi(server, "key")
    try:
        with pytest.raises(ApiError, match="HTTP 503") as info:
            await api.post("/exec", json={})
        assert info.value.status == 503 and Flaky.seen["/exec"] == 1
    finally:
        await api.aclose()


async def test_an_unreachable_daemon_is_backend_unavailable() -> None:
    api = YagnaApi("http://127.0.0.1:9", "key")
    try:
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await api.get("/me")
    finally:
        await api.aclose()
