"""Turning decoded messages into replies: method lookup, param binding, error mapping.

The dispatcher awaits handlers but does no I/O of its own; a driver (HTTP, WebSocket) feeds it
decoded messages and writes back whatever it returns.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Dict, Generic, List, Optional, Tuple, Type, TypeVar, Union

from myx.protocol.errors import InternalError, InvalidRequest, MethodNotFound, RpcError
from myx.protocol.jsonrpc import (
    Batch,
    ErrorResponse,
    Invalid,
    Message,
    Notification,
    Request,
    Response,
)
from myx.protocol.methods import METHODS
from myx.protocol.params import bind

C = TypeVar("C")
Handler = Callable[[C, Any], Awaitable[Any]]
Reply = Union[Response, ErrorResponse]

MAX_BATCH = 256


class Dispatcher(Generic[C]):
    """Routes requests to handlers by method name; *C* is the per-connection context type."""

    def __init__(
        self,
        table: Optional[Dict[str, Type[Any]]] = None,
        on_internal_error: Optional[Callable[[str, BaseException], None]] = None,
        on_response: Optional[Callable[[C, Union[Response, ErrorResponse]], None]] = None,
    ) -> None:
        self._table = dict(METHODS if table is None else table)
        self._handlers: Dict[str, Tuple[Type[Any], Handler[C]]] = {}
        self._on_internal_error = on_internal_error
        self._on_response = on_response

    def add(self, method: str, handler: Handler[C]) -> None:
        """Register *handler* for *method*; it receives (context, bound params)."""
        if method not in self._table:
            raise KeyError(f"{method!r} is not in the method table")
        self._handlers[method] = (self._table[method], handler)

    @property
    def methods(self) -> List[str]:
        return sorted(self._handlers)

    async def dispatch(self, message: Union[Message, Batch], ctx: C) -> Union[Reply, List[Reply], None]:
        """The reply to send for *message*: one response, a list for a batch, or None."""
        if isinstance(message, Batch):
            if len(message.items) > MAX_BATCH:
                return ErrorResponse(None, InvalidRequest(f"Invalid Request: batch over {MAX_BATCH} items"))
            replies = await asyncio.gather(*(self._one(m, ctx) for m in message.items))
            kept = [r for r in replies if r is not None]
            return kept or None  # a batch of notifications gets no reply at all
        return await self._one(message, ctx)

    async def _one(self, message: Message, ctx: C) -> Optional[Reply]:
        if isinstance(message, Invalid):
            return message.reply()
        if isinstance(message, (Response, ErrorResponse)):
            if self._on_response is not None:
                self._on_response(ctx, message)
            return None
        try:
            result = await self._call(message, ctx)
        except RpcError as exc:
            return ErrorResponse(message.id, exc) if isinstance(message, Request) else None
        except Exception as exc:
            if self._on_internal_error is not None:
                self._on_internal_error(message.method, exc)
            error = InternalError(f"Internal error in {message.method}")
            return ErrorResponse(message.id, error) if isinstance(message, Request) else None
        return Response(message.id, result) if isinstance(message, Request) else None

    async def _call(self, message: Union[Request, Notification], ctx: C) -> Any:
        entry = self._handlers.get(message.method)
        if entry is None:
            raise MethodNotFound(f"Method not found: {message.method}")
        params_cls, handler = entry
        return await handler(ctx, bind(params_cls, message.params))


def unwrap(reply: Message) -> Any:
    """The result a reply carries, or the peer's error raised as the matching exception."""
    if isinstance(reply, Response):
        return reply.result
    if isinstance(reply, ErrorResponse):
        raise reply.error
    if isinstance(reply, Invalid):
        raise reply.error
    raise InvalidRequest(f"Expected a response, got {type(reply).__name__}")
