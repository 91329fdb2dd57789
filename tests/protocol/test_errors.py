"""The one mapping between exceptions and JSON-RPC error codes."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest

from myx.protocol import errors
from myx.protocol.errors import (
    Busy,
    Conflict,
    ErrorCode,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    RpcError,
    Unauthorized,
    UnknownTarget,
    error_object,
    from_error_object,
)

EXPECTED: dict[ErrorCode, type[RpcError]] = {
    ErrorCode.PARSE_ERROR: ParseError,
    ErrorCode.INVALID_REQUEST: InvalidRequest,
    ErrorCode.METHOD_NOT_FOUND: MethodNotFound,
    ErrorCode.INVALID_PARAMS: InvalidParams,
    ErrorCode.INTERNAL_ERROR: InternalError,
    ErrorCode.UNAUTHORIZED: Unauthorized,
    ErrorCode.UNKNOWN_TARGET: UnknownTarget,
    ErrorCode.BUSY: Busy,
    ErrorCode.CONFLICT: Conflict,
}

DATA_VALUES: list[Any] = [
    {"param": "command_id"},
    {"nested": {"list": [1, 2.5, None, True, "x"]}},
    ["a", 1],
    "text",
    0,
    False,
    "",
    [],
    {},
]


def test_codes_match_the_design() -> None:
    assert {c.name: int(c) for c in ErrorCode} == {
        "PARSE_ERROR": -32700,
        "INVALID_REQUEST": -32600,
        "METHOD_NOT_FOUND": -32601,
        "INVALID_PARAMS": -32602,
        "INTERNAL_ERROR": -32603,
        "UNAUTHORIZED": -32001,
        "UNKNOWN_TARGET": -32002,
        "BUSY": -32003,
        "CONFLICT": -32004,
    }


def test_every_code_has_exactly_one_class() -> None:
    assert set(EXPECTED) == set(ErrorCode)
    assert len(set(EXPECTED.values())) == len(EXPECTED)
    module_classes = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, RpcError) and cls is not RpcError
    }
    assert module_classes == set(EXPECTED.values())


@pytest.mark.parametrize(("code", "cls"), EXPECTED.items())
def test_class_carries_its_code(code: ErrorCode, cls: type[RpcError]) -> None:
    assert cls.code == code
    exc = cls()
    assert issubclass(cls, RpcError)
    assert isinstance(exc, Exception)
    assert exc.code == code
    assert exc.message == cls.default_message
    assert exc.message
    assert str(exc) == exc.message
    assert exc.data is None


@pytest.mark.parametrize(("code", "cls"), EXPECTED.items())
def test_error_object_without_data(code: ErrorCode, cls: type[RpcError]) -> None:
    obj = error_object(cls("what happened"))
    assert obj == {"code": int(code), "message": "what happened"}
    assert type(obj["code"]) is int
    assert json.loads(json.dumps(obj)) == obj


@pytest.mark.parametrize(("code", "cls"), EXPECTED.items())
def test_from_error_object_rebuilds_class(code: ErrorCode, cls: type[RpcError]) -> None:
    exc = from_error_object({"code": int(code), "message": "peer said so"})
    assert type(exc) is cls
    assert exc.code == code
    assert exc.message == "peer said so"
    assert exc.data is None


@pytest.mark.parametrize("data", DATA_VALUES, ids=repr)
@pytest.mark.parametrize(("code", "cls"), EXPECTED.items())
def test_round_trip_preserves_data(code: ErrorCode, cls: type[RpcError], data: Any) -> None:
    original = cls("msg", data)
    obj = json.loads(json.dumps(error_object(original)))
    assert obj == {"code": int(code), "message": "msg", "data": data}
    back = from_error_object(obj)
    assert type(back) is cls
    assert back.code == code
    assert back.message == "msg"
    assert back.data == data
    assert type(back.data) is type(data)
    assert error_object(back) == error_object(original)


@pytest.mark.parametrize(("code", "cls"), EXPECTED.items())
def test_missing_or_bad_message_falls_back_to_default(code: ErrorCode, cls: type[RpcError]) -> None:
    assert from_error_object({"code": int(code)}).message == cls.default_message
    assert from_error_object({"code": int(code), "message": None}).message == cls.default_message
    assert from_error_object({"code": int(code), "message": 5}).message == cls.default_message
    assert cls(None).message == cls.default_message


@pytest.mark.parametrize("code", [-32000, -32099, -32005, -32604, -1, 0, 1, 404, -(2**40)])
def test_unknown_codes_are_kept(code: int) -> None:
    exc = from_error_object({"code": code, "message": "server specific", "data": {"x": 1}})
    assert type(exc) is RpcError
    assert exc.code == code
    assert exc.message == "server specific"
    assert exc.data == {"x": 1}
    assert error_object(exc) == {"code": code, "message": "server specific", "data": {"x": 1}}


def test_unknown_code_does_not_leak_into_the_class() -> None:
    from_error_object({"code": -32050, "message": "x"})
    assert RpcError.code == ErrorCode.INTERNAL_ERROR
    assert RpcError().code == ErrorCode.INTERNAL_ERROR


def test_unknown_code_without_message() -> None:
    exc = from_error_object({"code": -32050})
    assert exc.code == -32050
    assert exc.message == "Unknown error"


def test_malformed_error_object_still_gives_an_exception() -> None:
    exc = from_error_object({})
    assert isinstance(exc, RpcError)
    assert exc.message == "Unknown error"
    exc = from_error_object({"code": "-32600", "message": "m"})
    assert type(exc) is RpcError
    assert exc.message == "m"


def test_plain_rpc_error_is_internal() -> None:
    assert error_object(RpcError()) == {"code": -32603, "message": "Internal error"}
    assert error_object(RpcError("custom", [1])) == {"code": -32603, "message": "custom", "data": [1]}


def test_errors_can_be_raised_and_caught_as_rpc_error() -> None:
    for cls in EXPECTED.values():
        with pytest.raises(RpcError) as info:
            raise cls("m", {"k": 1})
        assert info.value.data == {"k": 1}
