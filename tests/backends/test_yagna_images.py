"""The yagna backend resolves a payload's image through an image registry's HTTP API.

A small HTTP server on loopback plays the registry (``GET /v1/image/info?tag=|hash=``, answering
``{"sha3", "http"}`` as Golem's registry does); the resolution code is the backend's own.
"""

from __future__ import annotations

import http.server
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from support.http import serve

from workgen.backends.base import Demand
from workgen.backends.yagna import Yagna
from workgen.errors import ImageNotFound
from workgen.protocol.properties import SRV_COMP_TASK_PACKAGE, SRV_COMP_VM_IMAGE_TAG
from workgen.requestor import vm

HASH = "ab" * 28
IMAGES = {"golem/alpine:latest": HASH}


class Registry(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        found = IMAGES.get(query.get("tag", "")) or (
            query.get("hash") if query.get("hash") in IMAGES.values() else None)
        if url.path != "/v1/image/info" or found is None:
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"sha3": found, "http": f"http://images.example/{found}.gvmi"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def registry() -> Iterator[str]:
    with serve(Registry) as url:
        yield url


def demand_for(payload: vm.VmPayload) -> Demand:
    return Demand(properties=payload.properties(), constraints="(&)")


async def test_a_tag_becomes_the_registry_s_hash_and_link(registry: str) -> None:
    backend = Yagna(appkey="k", registry_url=registry)
    resolved = await backend._resolve_image(demand_for(vm.repo(image_tag="golem/alpine:latest")))
    assert resolved.properties[SRV_COMP_TASK_PACKAGE] == \
        f"hash:sha3:{HASH}:http://images.example/{HASH}.gvmi"
    assert SRV_COMP_VM_IMAGE_TAG not in resolved.properties


async def test_a_hash_gets_its_download_link(registry: str) -> None:
    backend = Yagna(appkey="k", registry_url=registry)
    resolved = await backend._resolve_image(demand_for(vm.repo(image_hash=HASH)))
    assert resolved.properties[SRV_COMP_TASK_PACKAGE].endswith(f"/{HASH}.gvmi")  # type: ignore[union-attr]


async def test_an_unknown_tag_is_a_clear_error(registry: str) -> None:
    backend = Yagna(appkey="k", registry_url=registry)
    with pytest.raises(ImageNotFound, match="has no image tag nobody/nothing:1"):
        await backend._resolve_image(demand_for(vm.repo(image_tag="nobody/nothing:1")))


async def test_an_unreachable_registry_is_a_clear_error_for_a_tag() -> None:
    backend = Yagna(appkey="k", registry_url="http://127.0.0.1:9")
    with pytest.raises(ImageNotFound, match="unreachable"):
        await backend._resolve_image(demand_for(vm.repo(image_tag="golem/alpine:latest")))


async def test_a_hash_passes_through_when_the_registry_is_unreachable() -> None:
    backend = Yagna(appkey="k", registry_url="http://127.0.0.1:9")
    resolved = await backend._resolve_image(demand_for(vm.repo(image_hash=HASH)))
    assert resolved.properties[SRV_COMP_TASK_PACKAGE] == f"hash:sha3:{HASH}:"


async def test_no_image_needs_no_registry() -> None:
    backend = Yagna(appkey="k", registry_url="http://127.0.0.1:9")
    demand = demand_for(vm.repo())
    assert await backend._resolve_image(demand) is demand
