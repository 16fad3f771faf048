"""The GSB client against a real yagna daemon (its embedded GSB router), started per test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.yagna import YagnaNode, pid_alive, start_yagna

from workgen.gsb import (
    GsbCallError, GsbClosed, GsbConnectionError, GsbConnectionLost, GsbHandlerError,
    GsbProtocolError, GsbRegistrationError, GsbRemoteError, open_gsb,
)
from workgen.gsb.codec import (
    CallReply, CallRequest, FrameDecoder, GsbMessage, Hello, Ping, ReplyType, encode_frame,
    encode_payload,
)


@contextlib.asynccontextmanager
async def daemon(tmp_path: Path, **kwargs: Any) -> AsyncIterator[YagnaNode]:
    """A yagna daemon for the test, and proof that it is gone afterwards."""
    async with start_yagna(tmp_path, **kwargs) as node:
        yield node
    assert not pid_alive(node.pid), f"yagna {node.pid} still running"


def service_prefix() -> str:
    return f"/public/workgen-test/{secrets.token_hex(4)}"


async def echo(address: str, caller: str, payload: Any) -> Any:
    return {"address": address, "caller": caller, "payload": payload}


async def test_connecting_exchanges_hellos_with_the_router(tmp_path: Path) -> None:
    async with daemon(tmp_path) as node, open_gsb(node.gsb_url) as bus:
        assert bus.router_hello is not None
        assert bus.router_hello.name == "ya-sb-router"
        assert not bus.closed.is_set()


async def test_a_registered_service_answers_calls_from_another_connection(tmp_path: Path) -> None:
    prefix = service_prefix()
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as server, open_gsb(node.gsb_url) as client:
            await server.register(prefix, echo)
            payload = {"n": 1, "blob": b"\x00\xff", "list": [1.5, None, "zażółć"]}
            reply = await client.call(f"{prefix}/Echo", payload)
    # The handler sees the address below its prefix and the caller the router reports.
    assert reply == {"address": "Echo", "caller": "local", "payload": payload}


async def test_an_err_from_the_handler_reaches_the_caller_as_remote_error(tmp_path: Path) -> None:
    async def refuse(address: str, caller: str, payload: Any) -> Any:
        raise GsbHandlerError({"InternalError": f"no {payload}"})

    prefix = service_prefix()
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as server, open_gsb(node.gsb_url) as client:
            await server.register(prefix, refuse)
            with pytest.raises(GsbRemoteError) as caught:
                await client.call(f"{prefix}/GetChunk", "chunk")
    assert caught.value.error == {"InternalError": "no chunk"}
    assert caught.value.address == f"{prefix}/GetChunk"


async def test_a_failing_handler_is_logged_and_answered_with_code_500(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def crash(address: str, caller: str, payload: Any) -> Any:
        raise KeyError("boom")

    prefix = service_prefix()
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as server, open_gsb(node.gsb_url) as client:
            await server.register(prefix, crash)
            with caplog.at_level(logging.ERROR, logger="workgen.gsb.client"):
                with pytest.raises(GsbCallError) as caught:
                    await client.call(f"{prefix}/X", None)
            # the serving side survives its handler's failure
            await server.register(f"{prefix}-2", echo)
            assert (await client.call(f"{prefix}-2/Y", 1))["payload"] == 1
    assert caught.value.code == 500
    assert "KeyError" in caught.value.message and "boom" in caught.value.message
    assert any("boom" in (r.exc_text or "") for r in caplog.records)


async def count_to(address: str, caller: str, payload: Any) -> AsyncIterator[Any]:
    for i in range(payload):
        yield {"i": i}


async def test_a_streamed_reply_yields_every_partial_item(tmp_path: Path) -> None:
    prefix = service_prefix()
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as server, open_gsb(node.gsb_url) as client:
            await server.register(prefix, count_to)
            items = [item async for item in client.stream(f"{prefix}/Count", 7)]
            empty = [item async for item in client.stream(f"{prefix}/Count", 0)]
    assert items == [{"i": i} for i in range(7)]
    assert empty == []


async def test_a_stream_goes_out_as_partials_ended_by_an_empty_full_reply(tmp_path: Path) -> None:
    prefix = service_prefix()
    async with daemon(tmp_path) as node, open_gsb(node.gsb_url) as server:
        await server.register(prefix, count_to)
        replies = await raw_call(node, CallRequest(
            caller="local", address=f"{prefix}/Count", request_id="raw-1", data=encode_payload(3)))
    assert [r.reply_type for r in replies] == [ReplyType.PARTIAL] * 3 + [ReplyType.FULL]
    assert replies[-1].data == b""
    assert all(r.code == 0 and r.request_id == "raw-1" for r in replies)


async def raw_call(node: YagnaNode, request: CallRequest) -> list[CallReply]:
    """A call made with the codec on a bare socket, to see the replies as they are on the wire."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.gsb_port)
    try:
        writer.write(encode_frame(Hello(name="raw", instance_id=secrets.token_bytes(16))))
        writer.write(encode_frame(request))
        decoder, replies = FrameDecoder(), list[CallReply]()
        while not replies or replies[-1].reply_type is not ReplyType.FULL:
            data = await reader.read(65536)
            assert data, "the router hung up"
            replies += [m for m in decoder.feed(data) if isinstance(m, CallReply)]
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_stream_that_fails_midway_raises_after_its_items(tmp_path: Path) -> None:
    async def two_then_fail(address: str, caller: str, payload: Any) -> AsyncIterator[Any]:
        yield 1
        yield 2
        raise GsbHandlerError({"Eof": None})

    prefix = service_prefix()
    got = []
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as server, open_gsb(node.gsb_url) as client:
            await server.register(prefix, two_then_fail)
            with pytest.raises(GsbRemoteError) as caught:
                async for item in client.stream(f"{prefix}/S", None):
                    got.append(item)
    assert got == [1, 2]
    assert caught.value.error == {"Eof": None}


async def test_a_slow_handler_does_not_hold_up_other_calls(tmp_path: Path) -> None:
    released = asyncio.Event()

    async def wait_for_release(address: str, caller: str, payload: Any) -> Any:
        await released.wait()
        return "waited"

    async def release(address: str, caller: str, payload: Any) -> Any:
        released.set()
        return "released"

    prefix = service_prefix()
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as server, open_gsb(node.gsb_url) as client:
            await server.register(f"{prefix}/wait", wait_for_release)
            await server.register(f"{prefix}/release", release)
            async with asyncio.TaskGroup() as tg:
                slow = tg.create_task(client.call(f"{prefix}/wait/X", None))
                fast = tg.create_task(client.call(f"{prefix}/release/X", None))
    assert (slow.result(), fast.result()) == ("waited", "released")


async def test_a_reply_queued_behind_a_call_to_a_silent_handler_is_not_held_back(
        tmp_path: Path) -> None:
    # The router writes with Nagle's algorithm on: after a call to us that we do not answer
    # yet, a reply we wait for is held until we acknowledge the call's bytes, and a delayed
    # ACK would hold it ~40 ms (a provider waiting on its daemon while a requestor asks).
    reached: asyncio.Event
    answered: asyncio.Event
    delays: list[float] = []

    async def answer_once_reached(address: str, caller: str, payload: Any) -> Any:
        await reached.wait()
        return "answer"

    async def wait_in_silence(address: str, caller: str, payload: Any) -> Any:
        reached.set()
        await answered.wait()
        return "done"

    prefix = service_prefix()
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as waiter, open_gsb(node.gsb_url) as answerer, \
                open_gsb(node.gsb_url) as caller:
            await answerer.register(f"{prefix}/answer", answer_once_reached)
            await waiter.register(f"{prefix}/silent", wait_in_silence)
            for _ in range(20):
                reached, answered = asyncio.Event(), asyncio.Event()
                async with asyncio.TaskGroup() as tg:
                    asked = tg.create_task(waiter.call(f"{prefix}/answer/X", None))
                    silent = tg.create_task(caller.call(f"{prefix}/silent/X", None))
                    await reached.wait()
                    began = asyncio.get_running_loop().time()
                    await asked
                    delays.append(asyncio.get_running_loop().time() - began)
                    answered.set()
                    await silent
    # The later rounds: a new connection starts out acknowledging at once.
    assert sorted(delays[10:])[5] < 0.02, [round(d * 1000, 1) for d in delays]


async def test_calls_route_to_the_longest_registered_prefix(tmp_path: Path) -> None:
    async def outer(address: str, caller: str, payload: Any) -> Any:
        return f"outer:{address}"

    async def inner(address: str, caller: str, payload: Any) -> Any:
        return f"inner:{address}"

    prefix = service_prefix()
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as a, open_gsb(node.gsb_url) as b, \
                open_gsb(node.gsb_url) as client:
            await a.register(prefix, outer)
            await b.register(f"{prefix}/sub", inner)
            assert await client.call(f"{prefix}/sub/Get", None) == "inner:Get"
            assert await client.call(f"{prefix}/subway/Get", None) == "outer:subway/Get"
            assert await client.call(f"{prefix}/other/deep/Get", None) == "outer:other/deep/Get"
            assert await client.call(prefix, None) == "outer:"


async def test_a_call_to_an_address_nobody_serves_fails_with_code_400(tmp_path: Path) -> None:
    async with daemon(tmp_path) as node, open_gsb(node.gsb_url) as client:
        with pytest.raises(GsbCallError) as caught:
            await client.call(f"{service_prefix()}/Nothing", None)
    assert caught.value.code == 400
    assert "not found" in caught.value.message


async def test_a_prefix_belongs_to_one_connection_until_unregistered(tmp_path: Path) -> None:
    async def second(address: str, caller: str, payload: Any) -> Any:
        return "second"

    prefix = service_prefix()
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as first, open_gsb(node.gsb_url) as other:
            await first.register(prefix, echo)
            with pytest.raises(GsbRegistrationError) as taken:
                await other.register(prefix, second)
            with pytest.raises(GsbRegistrationError) as not_owner:
                await other.unregister(prefix)
            await first.unregister(prefix)
            with pytest.raises(GsbRegistrationError) as gone:
                await first.unregister(prefix)
            await other.register(prefix, second)
            assert await first.call(f"{prefix}/X", None) == "second"
    assert (taken.value.code, not_owner.value.code, gone.value.code) == (409, 404, 404)


async def test_a_closed_connection_gives_its_prefixes_back(tmp_path: Path) -> None:
    prefix = service_prefix()
    async with daemon(tmp_path) as node, open_gsb(node.gsb_url) as client:
        async with open_gsb(node.gsb_url) as first:
            await first.register(prefix, echo)
        with pytest.raises(GsbCallError):
            await client.call(f"{prefix}/X", None)
        await client.register(prefix, echo)


async def test_closing_answers_the_calls_still_being_served(tmp_path: Path) -> None:
    called = asyncio.Event()

    async def hang(address: str, caller: str, payload: Any) -> Any:
        called.set()
        await asyncio.Event().wait()

    prefix = service_prefix()
    async with daemon(tmp_path) as node, open_gsb(node.gsb_url) as client:

        async def call_until_closed() -> GsbCallError:
            with pytest.raises(GsbCallError) as caught:
                await client.call(f"{prefix}/Hang", None)
            return caught.value

        async with asyncio.TaskGroup() as tg:
            async with open_gsb(node.gsb_url) as server:
                await server.register(prefix, hang)
                pending = tg.create_task(call_until_closed())
                await called.wait()
    assert pending.result().code == 500
    assert "closed before answering" in pending.result().message


async def test_the_daemons_identity_service_answers(tmp_path: Path) -> None:
    # yagna binds its own services per message (/local/identity/List, .../Get, ...);
    # List takes an empty struct, Get the unit variant "byDefault" (serde, camelCase).
    async with daemon(tmp_path) as node, open_gsb(node.gsb_url) as bus:
        identities = await bus.call("/local/identity/List", {})
        default = await bus.call("/local/identity/Get", "byDefault")
        by_id = await bus.call("/local/identity/Get", {"byNodeId": node.node_id})
    assert [i["nodeId"] for i in identities] == [node.node_id]
    assert default == by_id
    assert default["nodeId"] == node.node_id and default["isDefault"] is True
    assert set(default) == {"alias", "nodeId", "isLocked", "isDefault", "deleted"}


async def test_a_call_that_is_not_answered_in_time_raises_timeout_error(tmp_path: Path) -> None:
    async def never(address: str, caller: str, payload: Any) -> Any:
        await asyncio.Event().wait()

    prefix = service_prefix()
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as server, open_gsb(node.gsb_url) as client:
            await server.register(prefix, never)
            with pytest.raises(TimeoutError):
                await client.call(f"{prefix}/X", None, timeout=0.2)
            await server.register(f"{prefix}-echo", echo)  # the connection is still good
            assert (await client.call(f"{prefix}-echo/X", 5))["payload"] == 5


async def test_call_refuses_a_streamed_reply(tmp_path: Path) -> None:
    prefix = service_prefix()
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as server, open_gsb(node.gsb_url) as client:
            await server.register(prefix, count_to)
            with pytest.raises(GsbProtocolError, match="stream"):
                await client.call(f"{prefix}/Count", 3)


@pytest.mark.watchdog(120)
async def test_the_router_going_away_fails_pending_calls(tmp_path: Path) -> None:
    called = asyncio.Event()

    async def hang(address: str, caller: str, payload: Any) -> Any:
        called.set()
        await asyncio.Event().wait()

    prefix = service_prefix()
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as server, open_gsb(node.gsb_url) as client:
            await server.register(prefix, hang)

            async def pending_call() -> GsbConnectionLost:
                with pytest.raises(GsbConnectionLost) as caught:
                    await client.call(f"{prefix}/Hang", None)
                return caught.value

            async with asyncio.TaskGroup() as tg:
                pending = tg.create_task(pending_call())
                await called.wait()
                await node.stop()
            lost = pending.result()
            await client.closed.wait()
            await server.closed.wait()
            assert client.connection_lost is not None
            with pytest.raises(GsbConnectionLost):
                await client.call(f"{prefix}/Again", None)
        assert not pid_alive(node.pid)
    assert node.gsb_url in str(lost)
    assert lost.url == node.gsb_url


@pytest.mark.watchdog(120)
async def test_pongs_keep_an_idle_connection_alive(tmp_path: Path) -> None:
    # With GSB_PING_TIMEOUT=4 the router pings a connection idle for 0.5 s and drops one idle
    # for 4 s. A bare socket that never answers is dropped; our client, connected all along,
    # is not.
    async with daemon(tmp_path, env={"GSB_PING_TIMEOUT": "4"}) as node, \
            open_gsb(node.gsb_url) as bus:
        received = await until_dropped(node)
        assert any(isinstance(m, Ping) for m in received)
        assert not bus.closed.is_set()
        assert (await bus.call("/local/identity/Get", "byDefault"))["nodeId"] == node.node_id


async def until_dropped(node: YagnaNode) -> list[GsbMessage]:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.gsb_port)
    try:
        writer.write(encode_frame(Hello(name="silent", instance_id=secrets.token_bytes(16))))
        decoder, received = FrameDecoder(), list[GsbMessage]()
        while data := await reader.read(65536):
            received += decoder.feed(data)
        return received
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.watchdog(120)
async def test_a_call_across_two_daemons_carries_the_calling_node_id(tmp_path: Path) -> None:
    # /net/<node>/x on the caller's daemon arrives as /public/x on <node>'s daemon, with the
    # calling daemon's node id as the caller (a call put directly on the hub keeps ours).
    prefix = service_prefix()
    async with daemon(tmp_path, name="hub") as hub, \
            daemon(tmp_path, name="peer", hub_gsb_port=hub.gsb_port) as peer:
        async with open_gsb(hub.gsb_url) as server, open_gsb(peer.gsb_url) as client:
            await server.register(prefix, echo)
            await server.register(f"{prefix}-count", count_to)
            remote = prefix.replace("/public/", f"/net/{hub.node_id}/", 1)
            reply = await client.call(f"{remote}/Echo", {"x": 1}, timeout=30)
            items = [i async for i in client.stream(f"{remote}-count/Count", 2)]
    assert reply == {"address": "Echo", "caller": peer.node_id, "payload": {"x": 1}}
    assert items == [{"i": 0}, {"i": 1}]


async def test_connecting_to_a_port_without_a_router_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GsbConnectionError, match=f"127.0.0.1:{port}"):
        async with open_gsb(f"tcp://127.0.0.1:{port}"):
            pass


async def test_connecting_to_the_rest_port_is_not_mistaken_for_a_router(tmp_path: Path) -> None:
    async with daemon(tmp_path) as node:
        with pytest.raises(GsbConnectionLost, match="GSB router"):
            async with open_gsb(node.api_url.replace("http://", "tcp://")):
                pass


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "tcp://127.0.0.1", "unix:"])
async def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        async with open_gsb(url):
            pass


async def test_unix_socket_urls_connect_and_see_the_router_leave(tmp_path: Path) -> None:
    # A stand-in router on a unix socket: greets, waits for our Hello, then hangs up.
    greeted = asyncio.Event()

    async def router(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame(Hello(name="fake-router", version="0")))
        header = await reader.readexactly(4)
        await reader.readexactly(struct.unpack(">I", header)[0])
        greeted.set()
        writer.close()

    path = tmp_path / "gsb.sock"
    server = await asyncio.start_unix_server(router, path=str(path))
    async with server:
        async with open_gsb(f"unix:{path}") as bus:
            assert bus.router_hello is not None and bus.router_hello.name == "fake-router"
            await greeted.wait()
            await bus.closed.wait()
            assert bus.connection_lost is not None
            with pytest.raises(GsbConnectionLost, match="closed the connection"):
                await bus.call("/local/x", None)


async def test_a_client_used_after_its_block_refuses(tmp_path: Path) -> None:
    async with daemon(tmp_path) as node:
        async with open_gsb(node.gsb_url) as bus:
            pass
        assert bus.closed.is_set() and bus.connection_lost is None
        with pytest.raises(GsbClosed):
            await bus.call("/local/identity/List", {})
