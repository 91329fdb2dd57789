"""JSON-RPC error codes and the protocol's exception tree.

This is the one place where exceptions meet wire codes: raise a subclass of :class:`RpcError`
anywhere on either side and :func:`error_object` turns it into the error member of a response;
:func:`from_error_object` turns a received error member back into the matching exception.
"""

from __future__ import annotations

import enum
from typing import Any, Dict, Optional, Type


class ErrorCode(enum.IntEnum):
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    UNAUTHORIZED = -32001
    UNKNOWN_TARGET = -32002
    BUSY = -32003
    CONFLICT = -32004


class RpcError(Exception):
    """Root of every error that crosses the wire as a JSON-RPC error object."""

    code: int = ErrorCode.INTERNAL_ERROR
    default_message = "Internal error"

    def __init__(self, message: Optional[str] = None, data: Any = None) -> None:
        self.message = message or self.default_message
        self.data = data
        super().__init__(self.message)


class ParseError(RpcError):
    code = ErrorCode.PARSE_ERROR
    default_message = "Parse error"


class InvalidRequest(RpcError):
    code = ErrorCode.INVALID_REQUEST
    default_message = "Invalid Request"


class MethodNotFound(RpcError):
    code = ErrorCode.METHOD_NOT_FOUND
    default_message = "Method not found"


class InvalidParams(RpcError):
    code = ErrorCode.INVALID_PARAMS
    default_message = "Invalid params"


class InternalError(RpcError):
    code = ErrorCode.INTERNAL_ERROR
    default_message = "Internal error"


class Unauthorized(RpcError):
    code = ErrorCode.UNAUTHORIZED
    default_message = "Unauthorized"


class UnknownTarget(RpcError):
    """An unknown command id or terminal session."""

    code = ErrorCode.UNKNOWN_TARGET
    default_message = "Unknown command or session"


class Busy(RpcError):
    code = ErrorCode.BUSY
    default_message = "Busy: concurrency limit reached"


class Conflict(RpcError):
    code = ErrorCode.CONFLICT
    default_message = "Conflict"


_BY_CODE: Dict[int, Type[RpcError]] = {
    int(cls.code): cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        Unauthorized,
        UnknownTarget,
        Busy,
        Conflict,
    )
}


def error_object(exc: RpcError) -> Dict[str, Any]:
    """The ``error`` member of a response for *exc*."""
    obj: Dict[str, Any] = {"code": int(exc.code), "message": exc.message}
    if exc.data is not None:
        obj["data"] = exc.data
    return obj


def from_error_object(error: Dict[str, Any]) -> RpcError:
    """Rebuild the exception a peer raised from the error object it sent.

    Codes we do not know (the spec reserves a range for servers) keep their number on a plain
    :class:`RpcError` so callers can still tell them apart.
    """
    code = error.get("code")
    message = error.get("message") if isinstance(error.get("message"), str) else None
    cls = _BY_CODE.get(code) if isinstance(code, int) else None
    if cls is not None:
        return cls(message, error.get("data"))
    exc = RpcError(message or "Unknown error", error.get("data"))
    if isinstance(code, int):
        exc.code = code
    return exc
