"""The agent's HTTPS and WebSocket driver (listen mode): moves bytes between sockets and the RPC core.

Only ``POST /{rpc_path}/rpc`` and ``/{rpc_path}/ws`` exist.  Every other path gets the same
404 before any token check, so a scanner learns nothing; a wrong token gets 401, and repeated
failures from one address are answered ever more slowly, one at a time.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import time
from typing import Any, Awaitable, Callable, Deque, Dict, List, MutableMapping, Optional, Set

from myx.agent.rpc import AgentRpc, CallContext
from myx.agent.runner import Command, Runner
from myx.protocol import jsonrpc
from myx.protocol.errors import Unauthorized, error_object
from myx.protocol.methods import CommandFinishedParams, CommandOutputParams, as_params

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

NOT_FOUND_BODY = b'{"error":"not found"}'
PUSH_CHUNK_BYTES = 256 << 10
WS_MAX_IN_FLIGHT = 64
_JSON = [(b"content-type", b"application/json")]


class AuthThrottle:
    """Slows down token guessing: after a few failures per address, each failure waits longer.

    Failures from one address are answered one at a time, so parallel guesses queue up instead
    of sharing one delay.
    """

    FREE_FAILURES = 5
    WINDOW_SECONDS = 60.0
    MAX_DELAY = 5.0
    MAX_ADDRESSES = 10000

    def __init__(self) -> None:
        self._failures: collections.OrderedDict[str, Deque[float]] = collections.OrderedDict()
        self._locks: Dict[str, asyncio.Lock] = {}

    def delay(self, address: str) -> float:
        failures = self._failures.get(address)
        if not failures:
            return 0.0
        cutoff = time.monotonic() - self.WINDOW_SECONDS
        while failures and failures[0] < cutoff:
            failures.popleft()
        excess = len(failures) - self.FREE_FAILURES
        return 0.0 if excess <= 0 else min(0.25 * 2**excess, self.MAX_DELAY)

    async def failed(self, address: str) -> None:
        failures = self._failures.setdefault(address, collections.deque(maxlen=64))
        self._failures.move_to_end(address)
        failures.append(time.monotonic())
        while len(self._failures) > self.MAX_ADDRESSES:
            old, _ = self._failures.popitem(last=False)
            self._locks.pop(old, None)
        delay = self.delay(address)
        if delay > 0:
            lock = self._locks.setdefault(address, asyncio.Lock())
            async with lock:
                await asyncio.sleep(delay)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


class AgentApp:
    """The ASGI application served by uvicorn."""

    def __init__(self, rpc: AgentRpc, runner: Runner, rpc_path: str, token: str, max_body: int) -> None:
        self.rpc = rpc
        self.runner = runner
        self.http_path = f"/{rpc_path}/rpc"
        self.ws_path = f"/{rpc_path}/ws"
        self._token = token.encode("utf-8")
        self.max_body = max_body
        self.throttle = AuthThrottle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    # lifespan

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.runner.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.runner.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # shared checks

    def _authorized(self, scope: Scope) -> bool:
        supplied = b""
        for name, value in scope.get("headers", ()):
            if name == b"x-agent-token":
                supplied = value
        return hmac.compare_digest(supplied, self._token)

    @staticmethod
    def _peer(scope: Scope) -> str:
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

    async def _check_token(self, scope: Scope) -> bool:
        peer = self._peer(scope)
        if self._authorized(scope):
            self.throttle.succeeded(peer)
            return True
        log.warning("rejected request with a missing or wrong token peer=%s", peer)
        await self.throttle.failed(peer)
        return False

    # HTTP

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != self.http_path:
            await _respond(send, 404, NOT_FOUND_BODY)
            return
        if scope["method"] != "POST":
            await _respond(send, 405, b'{"error":"use POST"}', [(b"allow", b"POST")])
            return
        if not await self._check_token(scope):
            await _respond(send, 401, _unauthorized_body())
            return
        body = await _read_body(scope, receive, self.max_body)
        if body is None:
            await _respond(
                send, 413, json.dumps({"error": f"request body over {self.max_body} bytes"}).encode()
            )
            return
        message = jsonrpc.decode(body)
        reply = await self.rpc.dispatcher.dispatch(message, CallContext("http", self._peer(scope)))
        if reply is None:
            await _respond(send, 204, b"", [])
        else:
            await _respond(send, 200, jsonrpc.encode(reply))

    # WebSocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != self.ws_path:
            await _deny(scope, send, 404, NOT_FOUND_BODY)
            return
        if not await self._check_token(scope):
            await _deny(scope, send, 401, _unauthorized_body())
            return
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await _WsSession(self, scope, receive, send).run()


class _WsSession:
    """One accepted WebSocket: concurrent requests in, replies and pushed notifications out."""

    def __init__(self, app: AgentApp, scope: Scope, receive: Receive, send: Send) -> None:
        self.app = app
        self.peer = AgentApp._peer(scope)
        self.receive = receive
        self._send = send
        self._send_lock = asyncio.Lock()
        self._tasks: Set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(WS_MAX_IN_FLIGHT)
        self.closed = False

    async def run(self) -> None:
        try:
            while True:
                message = await self.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await self._slots.acquire()  # back-pressure: stop reading while too much is in flight
                self._spawn(self._handle(data))
        finally:
            self.closed = True
            for task in list(self._tasks):
                task.cancel()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, data: Any) -> None:
        try:
            ctx = CallContext("ws", self.peer, subscribe=self.subscribe)
            reply = await self.app.rpc.dispatcher.dispatch(jsonrpc.decode(data), ctx)
            if reply is not None:
                await self.send(jsonrpc.encode(reply))
            for callback in ctx.after_reply:
                callback()
        finally:
            self._slots.release()

    async def send(self, payload: bytes) -> None:
        if self.closed:
            return
        async with self._send_lock:
            try:
                await self._send({"type": "websocket.send", "text": payload.decode("utf-8")})
            except (OSError, RuntimeError):
                # The peer went away mid-send; the receive loop sees the disconnect and cleans up.
                self.closed = True

    async def notify(self, method: str, params: Dict[str, Any]) -> None:
        await self.send(jsonrpc.encode(jsonrpc.Notification(method, params)))

    def subscribe(self, command: Command) -> None:
        """Push this command's output to the socket from the start, then its result."""
        self._spawn(self._pump(command))

    async def _pump(self, command: Command) -> None:
        offset = 0
        while not self.closed:
            chunks = command.read(offset, PUSH_CHUNK_BYTES)
            if chunks:
                new_offset = chunks[-1].end
                params = CommandOutputParams(command.id, offset, new_offset, [c.to_wire() for c in chunks])
                await self.notify("command_output", as_params(params))
                offset = new_offset
                continue  # more may have arrived while sending: read again before waiting
            if command.is_final_at(offset):
                result = command.result() or {}
                await self.notify(
                    "command_finished", as_params(CommandFinishedParams(command.id, offset, result))
                )
                return
            await command.wait_changed(30.0)


def _unauthorized_body() -> bytes:
    error = Unauthorized("Unauthorized: missing or wrong X-Agent-Token")
    return json.dumps({"jsonrpc": "2.0", "error": error_object(error), "id": None}).encode()


async def _respond(send: Send, status: int, body: bytes, headers: Optional[List[Any]] = None) -> None:
    head = list(_JSON if headers is None else headers)
    head.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def _deny(scope: Scope, send: Send, status: int, body: bytes) -> None:
    """Refuse a WebSocket handshake with a real HTTP status where the server supports it."""
    if "websocket.http.response" in scope.get("extensions", {}):
        head = [*_JSON, (b"content-length", str(len(body)).encode())]
        await send({"type": "websocket.http.response.start", "status": status, "headers": head})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


async def _read_body(scope: Scope, receive: Receive, limit: int) -> Optional[bytes]:
    """The request body, or None once it is known to exceed *limit* (checked before reading it all)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    parts: List[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
        more = message.get("more_body", False)
    return b"".join(parts)
