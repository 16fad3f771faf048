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


def _reply(handler: http.server.BaseHTTPRequestHandler, status: int, doc: Any) -> None:
    body = b"" if doc is None else json.dumps(doc).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


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
        _reply(self, 200, {"path": self.path, "tries": count + 1})

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


class Answers(http.server.BaseHTTPRequestHandler):
    """Answers ``/<status>/...`` with that status, always."""

    seen: dict[str, int] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        path = self.path.split("?")[0]
        self.seen[path] = self.seen.get(path, 0) + 1
        status = int(path.split("/")[1])
        _reply(self, status, None if status == 204 else {"status": status})

    do_GET = _answer
    do_POST = _answer


@pytest.mark.parametrize("method, status, options, expected, tries", [
    ("GET", 200, {}, {"status": 200}, 1),
    ("POST", 204, {}, None, 1),
    ("GET", 408, {"poll": 5.0}, None, 1),                     # a long poll found nothing
    ("GET", 408, {}, (ApiError, "timed out waiting for the other side"), 1),
    ("POST", 400, {}, (ApiError, "HTTP 400"), 1),
    ("GET", 401, {}, (BackendUnavailable, "app key"), 1),
    ("GET", 404, {}, (ApiError, "HTTP 404"), 1),
    ("GET", 404, {"ok": (404,)}, None, 1),                     # the caller takes it
    ("GET", 500, {}, (ApiError, "HTTP 500"), 3),               # retried, then reported
    ("POST", 500, {}, (ApiError, "HTTP 500"), 1),              # never repeated
    ("GET", 503, {}, (ApiError, "HTTP 503"), 3),
])
async def test_every_answer_maps_to_one_outcome(method: str, status: int, options: Any,
                                                expected: Any, tries: int) -> None:
    Answers.seen = {}
    with serve(Answers) as url:
        api = YagnaApi(url, "key")
        try:
            path = f"/{status}/x"
            if isinstance(expected, tuple):
                kind, text = expected
                with pytest.raises(kind, match=text) as info:
                    await api.request(method, path, **options)
                if kind is ApiError:
                    assert info.value.status == status
            else:
                assert await api.request(method, path, **options) == expected
            assert Answers.seen[path] == tries
        finally:
            await api.aclose()
