"""JSON-RPC 2.0 messages: strict decoding and encoding, no I/O.

:func:`decode` never raises: anything that is not a valid message becomes :class:`Invalid`
carrying the error to send back, so every driver answers bad input the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Union

from myx.protocol.errors import InvalidRequest, ParseError, RpcError, error_object, from_error_object

JSONRPC_VERSION = "2.0"

Id = Union[str, int, float, None]
Params = Union[List[Any], Dict[str, Any], None]

_REQUEST_KEYS = frozenset({"jsonrpc", "method", "params", "id"})
_RESPONSE_KEYS = frozenset({"jsonrpc", "result", "error", "id"})
_ERROR_KEYS = frozenset({"code", "message", "data"})


@dataclass(frozen=True)
class Request:
    method: str
    params: Params
    id: Id

    def to_obj(self) -> Dict[str, Any]:
        obj: Dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "method": self.method}
        if self.params is not None:
            obj["params"] = self.params
        obj["id"] = self.id
        return obj


@dataclass(frozen=True)
class Notification:
    method: str
    params: Params

    def to_obj(self) -> Dict[str, Any]:
        obj: Dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "method": self.method}
        if self.params is not None:
            obj["params"] = self.params
        return obj


@dataclass(frozen=True)
class Response:
    id: Id
    result: Any

    def to_obj(self) -> Dict[str, Any]:
        return {"jsonrpc": JSONRPC_VERSION, "result": self.result, "id": self.id}


@dataclass(frozen=True)
class ErrorResponse:
    id: Id
    error: RpcError

    def to_obj(self) -> Dict[str, Any]:
        return {"jsonrpc": JSONRPC_VERSION, "error": error_object(self.error), "id": self.id}


@dataclass(frozen=True)
class Invalid:
    """Input that is not a valid message; ``error`` is what to answer (with id null)."""

    error: RpcError

    def reply(self) -> ErrorResponse:
        return ErrorResponse(None, self.error)


Message = Union[Request, Notification, Response, ErrorResponse, Invalid]


@dataclass(frozen=True)
class Batch:
    items: List[Message] = field(default_factory=list)


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are Python extensions, not JSON.
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    # A literal too large for a double (1e400) would become inf, which encode() cannot send back.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def decode(data: Union[bytes, str]) -> Union[Message, Batch]:
    """Parse one JSON-RPC payload: a single message or a batch."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return Invalid(ParseError(f"Parse error: {_short(exc)}"))
    if isinstance(obj, list):
        if not obj:
            return Invalid(InvalidRequest("Invalid Request: empty batch"))
        return Batch([from_obj(item) for item in obj])
    return from_obj(obj)


def from_obj(obj: Any) -> Message:
    """Validate one already-parsed JSON value as a message."""
    if not isinstance(obj, dict):
        return Invalid(InvalidRequest("Invalid Request: a message must be a JSON object"))
    if obj.get("jsonrpc") != JSONRPC_VERSION:
        return Invalid(InvalidRequest('Invalid Request: "jsonrpc" must be exactly "2.0"'))
    if "method" in obj:
        return _request_from_obj(obj)
    if "result" in obj or "error" in obj:
        return _response_from_obj(obj)
    return Invalid(InvalidRequest('Invalid Request: neither "method" nor "result"/"error" present'))


def _request_from_obj(obj: Dict[str, Any]) -> Message:
    extra = set(obj) - _REQUEST_KEYS
    if extra:
        return Invalid(InvalidRequest(f"Invalid Request: unexpected member(s) {_names(extra)}"))
    method = obj["method"]
    if not isinstance(method, str):
        return Invalid(InvalidRequest('Invalid Request: "method" must be a string'))
    params = obj.get("params")
    if "params" in obj and not isinstance(params, (list, dict)):
        return Invalid(InvalidRequest('Invalid Request: "params" must be an array or an object'))
    if "id" not in obj:
        return Notification(method, params)
    if not _valid_id(obj["id"]):
        return Invalid(InvalidRequest('Invalid Request: "id" must be a string, a number or null'))
    return Request(method, params, obj["id"])


def _response_from_obj(obj: Dict[str, Any]) -> Message:
    extra = set(obj) - _RESPONSE_KEYS
    if extra:
        return Invalid(InvalidRequest(f"Invalid Request: unexpected member(s) {_names(extra)}"))
    if "id" not in obj or not _valid_id(obj["id"]):
        return Invalid(InvalidRequest('Invalid Request: a response needs a valid "id"'))
    if ("result" in obj) == ("error" in obj):
        return Invalid(InvalidRequest('Invalid Request: a response has exactly one of "result" and "error"'))
    if "result" in obj:
        return Response(obj["id"], obj["result"])
    error = obj["error"]
    if (
        not isinstance(error, dict)
        or set(error) - _ERROR_KEYS
        or not _is_int(error.get("code"))
        or not isinstance(error.get("message"), str)
    ):
        return Invalid(InvalidRequest('Invalid Request: "error" must be {code: integer, message: string}'))
    return ErrorResponse(obj["id"], from_error_object(error))


def encode(message: Union[Message, Batch, Sequence[Message]]) -> bytes:
    """Serialize a message, a batch, or a list of replies to compact UTF-8 JSON."""
    if isinstance(message, Batch):
        payload: Any = [to_obj(m) for m in message.items]
    elif isinstance(message, (Request, Notification, Response, ErrorResponse, Invalid)):
        payload = to_obj(message)
    else:
        payload = [to_obj(m) for m in message]
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON allows "\ud800") has no UTF-8 form; \u escapes carry it intact.
        return json.dumps(payload, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def to_obj(message: Message) -> Dict[str, Any]:
    if isinstance(message, Invalid):
        return message.reply().to_obj()
    return message.to_obj()


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or _is_int(value) or isinstance(value, float)


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python but not a number in JSON.
    return isinstance(value, int) and not isinstance(value, bool)


def _names(keys: Any) -> str:
    return ", ".join(sorted(repr(k) for k in keys))


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
