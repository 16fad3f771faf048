"""An asyncio client of the Golem Service Bus: one connection to a GSB router (a yagna daemon).

``open_gsb(url)`` connects, exchanges ``Hello``s and yields a :class:`GsbClient` that can serve
address prefixes (``register``) and call services anywhere on the bus (``call``, ``stream``).
The client owns a task group: a reader task, and one task per incoming call so a slow handler
never holds up the others. Nothing outlives the ``async with`` block.

The router routes a call to the connection that registered the longest prefix of its address
(cut at ``/``), forwards replies by request id, pings idle connections (we answer ``Pong``) and
drops a connection's registrations when it goes. Bytes are turned into messages by
:mod:`workgen.gsb.codec` only; this module does the socket I/O and the bookkeeping.

The socket is read with ``asyncio.BufferedProtocol``: the kernel copies a large frame (a GFTP
chunk) straight into the buffer its message then views, and a large reply goes out as the
very buffer its handler returned. Those are the only copies our side makes of bulk data.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

from .._aio import task_scope
from .codec import (
    CODE_BAD_REQUEST, CODE_OK, CODE_SERVICE_FAILURE, Buffer, CallReply, CallRequest, FrameDecoder,
    GsbMessage, Hello, Ping, Pong, RegisterReply, RegisterRequest, ReplyType, UnregisterReply,
    UnregisterRequest, decode_payload, encode_frame_parts, encode_payload_parts, err, ok,
    unwrap_result,
)
from .errors import (
    GsbCallError, GsbClosed, GsbConnectionError, GsbConnectionLost, GsbHandlerError,
    GsbProtocolError, GsbRegistrationError,
)

logger = logging.getLogger(__name__)

Handler: TypeAlias = Callable[[str, str, Any], Awaitable[Any] | AsyncIterator[Any]]
"""``handler(address, caller, payload)`` serving a registered prefix.

``address`` is the called address relative to the prefix (``"Exec"`` for a call to
``/public/exeunit/a1/Exec`` on the prefix ``/public/exeunit/a1``; ``""`` for the prefix itself),
``caller`` is who the router says called (``"local"``, or a node id for remote calls) and
``payload`` the decoded request. Return (from a coroutine) the value to answer ``{"Ok": value}``,
raise :class:`GsbHandlerError` to answer ``{"Err": error}``, or be an async generator to answer a
stream. Any other exception is logged and answered with code 500.
"""

# Sent in our Hello; the router only logs it. The ya-service-bus release whose wire we speak.
HELLO_VERSION = "0.7.3"
DEFAULT_CALLER = "local"  # what ya-service-bus puts in calls made inside a node

_CLOSE_TIMEOUT = 5.0  # for each step of closing: handing prefixes back, flushing the socket
_T = TypeVar("_T")


@contextlib.asynccontextmanager
async def open_gsb(url: str, *, name: str = "workgen") -> AsyncIterator[GsbClient]:
    """Connects to the GSB router at ``url`` (``tcp://host:port`` or ``unix:/path``).

    Returns once the router's ``Hello`` arrived, so the connection is known to be a GSB one.
    Raises :class:`GsbConnectionError` if it cannot connect, :class:`GsbConnectionLost` if the
    router hangs up before greeting. There is no connect timeout of its own: wrap the call in
    ``asyncio.timeout`` where a silent peer is possible.
    """
    connection = await _connect(url)
    try:
        async with task_scope() as tasks:
            bus = GsbClient(_token, url, connection, tasks)
            bus._start(name)
            try:
                await bus._greeted()
                yield bus
            finally:
                await bus._aclose()
    finally:
        connection.transport.close()
        try:  # lets what we wrote last (replies) reach the router, but not forever
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await asyncio.shield(connection.closed)
        except TimeoutError:
            connection.transport.abort()


async def _connect(url: str) -> _Connection:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    try:
        if parts.scheme == "tcp":
            if not parts.hostname or parts.port is None:
                raise ValueError(f"GSB url {url!r} needs a host and a port: tcp://host:port")
            _, connection = await loop.create_connection(
                lambda: _Connection(url), parts.hostname, parts.port)
            return connection
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"GSB url {url!r} needs a socket path: unix:/path")
            _, connection = await loop.create_unix_connection(lambda: _Connection(url), parts.path)
            return connection
    except OSError as exc:
        raise GsbConnectionError(url, f"cannot connect to the GSB router at {url}: {exc}") from exc
    raise ValueError(f"GSB url {url!r}: the scheme must be tcp:// or unix:")


class _Connection(asyncio.BufferedProtocol):
    """The socket's side of a client: frames in (decoded as they complete, and handed to the
    client), frames out in pieces, and the flow control of what is written."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.transport: asyncio.Transport
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._decoder = FrameDecoder()
        self._client: GsbClient | None = None
        self._early: list[GsbMessage] = []  # what arrived before the client was attached
        self._lost: str | None = None  # why the connection ended, once it has
        self._writable: asyncio.Future[None] | None = None  # set while writing is paused
        self._quickack: Any = None  # the TCP socket, where acknowledgements can be hurried

    def attach(self, client: GsbClient) -> None:
        self._client = client
        for message in self._early:
            client._dispatch(message)
        self._early.clear()
        if self._lost is not None:
            client._lost(self._lost)

    def write(self, parts: list[Buffer]) -> None:
        for part in parts:
            self.transport.write(part)

    async def drain(self) -> None:
        """Waits while the socket's buffer is over its high-water mark."""
        if self._lost is not None:
            raise ConnectionResetError(self._lost)
        if self._writable is not None:
            await asyncio.shield(self._writable)

    # asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if (hasattr(socket, "TCP_QUICKACK") and sock is not None
                and sock.family in (socket.AF_INET, socket.AF_INET6)):
            self._quickack = sock

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self._quickack is not None:
            # yagna's router writes to us with Nagle's algorithm on: a second small frame
            # (say a reply we wait for) is held until our ACK of the first, and a delayed ACK
            # holds it ~40 ms when we have nothing to send meanwhile. ACK what came at once.
            self._quickack.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        try:
            messages = self._decoder.advance(nbytes)
        except GsbProtocolError as exc:
            self._end(f"the GSB connection to {self.url} broke: {exc}", warn=True)
            self.transport.abort()
            return
        if self._client is None:
            self._early += messages
            return
        for message in messages:
            self._client._dispatch(message)

    def eof_received(self) -> bool:
        return False  # the transport closes, and connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._end(f"the GSB connection to {self.url} broke: {exc}", warn=True)
        else:
            buffered = self._decoder.buffered
            cut = f", {buffered} bytes into a frame" if buffered else ""
            self._end(f"the GSB router at {self.url} closed the connection{cut}")
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    def _end(self, reason: str, *, warn: bool = False) -> None:
        if self._lost is not None:
            return
        self._lost = reason
        if warn:
            logger.warning("%s", reason)
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError(reason))
            self._writable.exception()  # retrieved here: no waiter has to be there to see it
        if self._client is not None:
            self._client._lost(reason)


_token = object()  # GsbClient is made by open_gsb only, which owns its tasks


class GsbClient:
    """One connection to a GSB router; made by :func:`open_gsb`, valid inside its block."""

    def __init__(self, token: object, url: str, connection: _Connection,
                 tasks: asyncio.TaskGroup) -> None:
        if token is not _token:
            raise RuntimeError("use `async with open_gsb(url) as bus:`")
        self.url = url
        self.closed = asyncio.Event()
        """Set when the connection has ended, whether the router went away or we closed it."""
        self.router_hello: Hello | None = None
        self._connection = connection
        self._tasks = tasks
        self._hello: asyncio.Future[Hello] = asyncio.get_running_loop().create_future()
        self._failure: GsbConnectionError | None = None
        self._handlers: dict[str, Handler] = {}
        self._pending: dict[str, asyncio.Queue[CallReply | GsbConnectionError]] = {}
        # The router answers (un)register requests in order and without an id: FIFO matching.
        self._register_waiters: collections.deque[asyncio.Future[RegisterReply]] = collections.deque()
        self._unregister_waiters: collections.deque[asyncio.Future[UnregisterReply]] = (
            collections.deque())
        self._serving: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def connection_lost(self) -> GsbConnectionLost | None:
        """Why the router went away, or ``None`` while connected or if we closed it ourselves."""
        return self._failure if isinstance(self._failure, GsbConnectionLost) else None

    # --- serving -------------------------------------------------------------------------------

    async def register(self, prefix: str, handler: Handler) -> None:
        """Routes calls to ``prefix`` and any address below it to ``handler``.

        The router accepts any prefix not registered yet (``/public/...`` is reachable from
        other nodes as ``/net/<node_id>/...``; ``/local/...`` only on this node). Raises
        :class:`GsbRegistrationError` (code 409) if another connection holds it.
        """
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"GSB prefix {prefix!r} must start with '/' and not end with '/'")
        if prefix in self._handlers:
            raise ValueError(f"{prefix} is already registered on this connection")
        self._handlers[prefix] = handler  # before the request: a call may follow the reply at once
        try:
            reply = await self._ask(RegisterRequest(service_id=prefix), self._register_waiters)
        except BaseException:
            self._handlers.pop(prefix, None)
            raise
        if reply.code != CODE_OK:
            self._handlers.pop(prefix, None)
            raise GsbRegistrationError(prefix, reply.code, reply.message)

    async def unregister(self, prefix: str) -> None:
        """Stops serving ``prefix``; :class:`GsbRegistrationError` (404) if it was not ours."""
        self._handlers.pop(prefix, None)
        reply = await self._ask(UnregisterRequest(service_id=prefix), self._unregister_waiters)
        if reply.code != CODE_OK:
            raise GsbRegistrationError(prefix, reply.code, "not registered by this connection")

    # --- calling -------------------------------------------------------------------------------

    async def call(self, address: str, payload: Any, *, timeout: float | None = None,
                   caller: str = DEFAULT_CALLER, blob_views: bool = False) -> Any:
        """Calls ``address`` with ``payload`` and returns the ``v`` of its ``{"Ok": v}`` reply.

        Raises :class:`GsbRemoteError` for ``{"Err": e}``, :class:`GsbCallError` when the bus
        fails the call (400: no service at that address; 500: the service failed),
        :class:`GsbConnectionLost` if the router goes away meanwhile, ``TimeoutError`` after
        ``timeout`` seconds. Pass a timeout wherever the serving side may die: yagna's router
        never answers a call whose serving connection drops before replying, nor a call to
        ``/net/<node_id>/...`` for a node it does not know. ``blob_views``: blobs in the reply
        come back as read-only memoryviews of the received frame, not copies (see
        :func:`~workgen.gsb.decode_payload`).
        """
        data = encode_payload_parts(payload)
        async with asyncio.timeout(timeout), self._exchange(address, data, caller) as replies:
            reply = _reply_or_raise(await replies.get(), address)
        if reply.reply_type is ReplyType.PARTIAL:
            raise GsbProtocolError(f"{address} answered with a stream: use stream()")
        if not reply.data:
            raise GsbProtocolError(f"{address} answered with an empty reply")
        return unwrap_result(decode_payload(reply.data, blob_views=blob_views), address=address)

    async def stream(self, address: str, payload: Any, *,
                     caller: str = DEFAULT_CALLER) -> AsyncIterator[Any]:
        """Calls ``address`` and yields the ``v`` of each ``{"Ok": v}`` item it streams back.

        A stream is PARTIAL replies ended by a FULL one (empty, or carrying a last item).
        Errors are those of :meth:`call`, raised where the stream breaks.
        """
        data = encode_payload_parts(payload)
        async with self._exchange(address, data, caller) as replies:
            while True:
                reply = _reply_or_raise(await replies.get(), address)
                last = reply.reply_type is ReplyType.FULL
                if last and not reply.data:
                    return
                yield unwrap_result(decode_payload(reply.data), address=address)
                if last:
                    return

    @contextlib.asynccontextmanager
    async def _exchange(self, address: str, data: list[Buffer],
                        caller: str) -> AsyncIterator[asyncio.Queue[CallReply | GsbConnectionError]]:
        self._check_open()
        request_id = uuid.uuid4().hex  # the router keys replies by id across connections
        replies: asyncio.Queue[CallReply | GsbConnectionError] = asyncio.Queue()
        self._pending[request_id] = replies
        try:
            await self._send(CallRequest(caller=caller, address=address, request_id=request_id),
                             data)
            yield replies
        finally:
            self._pending.pop(request_id, None)  # a late reply then finds no one and is dropped

    # --- the connection ------------------------------------------------------------------------

    def _start(self, name: str) -> None:
        self._connection.attach(self)
        # Each connection needs its own instance id: the router drops an older connection that
        # greets with the same one.
        self._write(Hello(name=name, version=HELLO_VERSION, instance_id=uuid.uuid4().bytes))

    async def _greeted(self) -> None:
        self.router_hello = await self._hello
        logger.debug("connected to GSB router %s %s at %s",
                     self.router_hello.name, self.router_hello.version, self.url)

    def _lost(self, reason: str) -> None:
        """The connection ended (the router hung up, or it broke)."""
        self._shut_down(GsbConnectionLost(self.url, reason))

    def _dispatch(self, message: GsbMessage) -> None:
        if isinstance(message, CallReply):
            replies = self._pending.get(message.request_id)
            if replies is None:
                logger.debug("dropping a reply to %s, no longer awaited", message.request_id)
                return
            if message.reply_type is ReplyType.FULL:
                del self._pending[message.request_id]
            replies.put_nowait(message)
        elif isinstance(message, CallRequest):
            try:
                task = self._tasks.create_task(self._serve(message), name=f"gsb-serve {message.address}")
            except RuntimeError:  # the task group is shutting down: no one will serve it
                logger.debug("not serving %s: the client is closing", message.address)
                return
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        elif isinstance(message, Ping):
            self._write(Pong())  # the router kills a connection that stays silent (20 s)
        elif isinstance(message, RegisterReply):
            _resolve(self._register_waiters, message)
        elif isinstance(message, UnregisterReply):
            _resolve(self._unregister_waiters, message)
        elif isinstance(message, Hello):
            if not self._hello.done():
                self._hello.set_result(message)
        elif not isinstance(message, Pong):  # broadcasts: no subscriptions are made yet
            logger.debug("ignoring %s from the GSB router", type(message).__name__)

    async def _aclose(self) -> None:
        """Closes in order: hand the prefixes back, end the calls being served, hang up.

        Only closing the socket would leave the router to notice on its own; meanwhile it
        still routes calls to us, and those are never answered (seen with yagna 0.17.6).
        Unregistering first makes the router answer 400 right away instead.
        """
        if self._failure is None:
            self._closing = True
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await self._unregister_all()
                    for task in self._serving:
                        task.cancel()  # each answers its caller with a 500 as it goes
                    if self._serving:
                        await asyncio.wait(list(self._serving))
            except (GsbConnectionError, TimeoutError) as exc:
                logger.debug("closing the GSB connection to %s uncleanly: %s", self.url, exc)
        self._shut_down(GsbClosed(self.url, f"the GSB connection to {self.url} was closed"))

    async def _unregister_all(self) -> None:
        prefixes, waiters = list(self._handlers), []
        self._handlers.clear()  # from now on, calls that still arrive get a 400 from _serve
        for prefix in prefixes:  # pipelined: all requests out, then all replies in
            waiter: asyncio.Future[UnregisterReply] = asyncio.get_running_loop().create_future()
            self._unregister_waiters.append(waiter)
            self._write(UnregisterRequest(service_id=prefix))
            waiters.append(waiter)
        try:
            await self._connection.drain()
            for waiter in waiters:
                await waiter
        finally:
            for waiter in waiters:  # on a timeout: no one is left to read what they would get
                waiter.cancel()

    def _shut_down(self, reason: GsbConnectionError) -> None:
        """Ends the connection once: every waiter gets ``reason``, every task is cancelled."""
        if self._failure is not None:
            return
        self._failure = reason
        self.closed.set()
        for replies in self._pending.values():
            replies.put_nowait(reason)
        self._pending.clear()
        for waiters in (self._register_waiters, self._unregister_waiters):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(_fresh(reason))
        if not self._hello.done():
            self._hello.set_exception(_fresh(reason))
        for task in self._serving:  # their replies could go nowhere
            task.cancel()
        self._connection.transport.close()

    def _check_open(self) -> None:
        if self._failure is not None:
            raise _fresh(self._failure)

    def _write(self, message: GsbMessage, data: list[Buffer] | None = None) -> None:
        self._check_open()
        self._connection.write(encode_frame_parts(message, data))

    async def _send(self, message: GsbMessage, data: list[Buffer] | None = None) -> None:
        self._write(message, data)
        try:
            await self._connection.drain()
        except ConnectionError as exc:
            raise GsbConnectionLost(self.url, f"the GSB connection to {self.url} broke: {exc}") from exc

    async def _ask(self, request: GsbMessage, waiters: collections.deque[asyncio.Future[_T]]) -> _T:
        self._check_open()
        waiter: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)  # in the same step as the write, so the FIFO order holds
        await self._send(request)
        return await waiter

    # --- serving one call ----------------------------------------------------------------------

    def _lookup(self, address: str) -> tuple[str, Handler] | None:
        key = address
        while key:  # the router's rule: the longest registered prefix, cut at '/'
            handler = self._handlers.get(key)
            if handler is not None:
                return key, handler
            key = key[:max(key.rfind("/"), 0)]
        return None

    async def _serve(self, request: CallRequest) -> None:
        found = self._lookup(request.address)
        if found is None:  # unregistered while the call was on its way
            await self._answer(request, CODE_BAD_REQUEST, [f"no service at {request.address}".encode()])
            return
        prefix, handler = found
        try:
            payload = decode_payload(request.data)
        except GsbProtocolError as exc:
            logger.warning("bad request to %s from %s: %s", request.address, request.caller, exc)
            await self._answer(request, CODE_BAD_REQUEST, [f"cannot decode the request: {exc}".encode()])
            return
        try:
            result = handler(request.address[len(prefix):].lstrip("/"), request.caller, payload)
            if isinstance(result, AsyncIterator):
                await self._answer_stream(request, result)
            elif inspect.isawaitable(result):
                reply = encode_payload_parts(ok(await result))
                await self._answer(request, CODE_OK, reply)
            else:
                raise TypeError(f"the handler for {prefix} returned {type(result).__name__}, "
                                "not an awaitable or an async iterator")
        except GsbHandlerError as exc:
            await self._answer(request, CODE_OK, encode_payload_parts(err(exc.error)))
        except GsbConnectionError as exc:
            if self._failure is None:  # the handler's own call failed; ours still stands
                await self._answer(request, CODE_SERVICE_FAILURE, [f"{type(exc).__name__}: {exc}".encode()])
        except asyncio.CancelledError:
            if self._closing and self._failure is None and not request.no_reply:
                with contextlib.suppress(GsbConnectionError):  # no await: we are being cancelled
                    self._write(CallReply(request_id=request.request_id, code=CODE_SERVICE_FAILURE,
                                          data=b"the service closed before answering"))
            raise
        except Exception as exc:
            logger.exception("GSB handler for %s failed on %s", prefix, request.address)
            await self._answer(request, CODE_SERVICE_FAILURE, [f"{type(exc).__name__}: {exc}".encode()])

    async def _answer_stream(self, request: CallRequest, items: AsyncIterator[Any]) -> None:
        aclose = getattr(items, "aclose", None)
        try:
            async for item in items:
                if not await self._answer(request, CODE_OK, encode_payload_parts(ok(item)),
                                          ReplyType.PARTIAL):
                    return
            await self._answer(request, CODE_OK, [])  # an empty FULL reply ends the stream
        finally:
            if aclose is not None:
                await aclose()

    async def _answer(self, request: CallRequest, code: int, data: list[Buffer],
                      reply_type: ReplyType = ReplyType.FULL) -> bool:
        """Sends one reply; False if the connection is gone (the caller then stops)."""
        if request.no_reply:
            return True
        try:
            await self._send(CallReply(request_id=request.request_id, code=code,
                                       reply_type=reply_type), data)
        except GsbConnectionError:
            logger.debug("cannot answer %s: the connection is gone", request.address)
            return False
        return True


def _reply_or_raise(item: CallReply | GsbConnectionError, address: str) -> CallReply:
    if isinstance(item, GsbConnectionError):
        raise _fresh(item)
    if item.code != CODE_OK:
        # The router and ya-service-bus put a UTF-8 message, not a payload, in failed replies.
        raise GsbCallError(item.code, str(item.data, "utf-8", "replace"), address=address)
    return item


def _resolve(waiters: collections.deque[asyncio.Future[_T]], reply: _T) -> None:
    if not waiters:
        logger.warning("unexpected %s from the GSB router", type(reply).__name__)
        return
    waiter = waiters.popleft()
    if not waiter.done():  # a cancelled register() still owns its place in the queue
        waiter.set_result(reply)


def _fresh(error: GsbConnectionError) -> GsbConnectionError:
    """A new instance per raise, so tracebacks of different callers do not pile up on one."""
    return type(error)(error.url, str(error))
