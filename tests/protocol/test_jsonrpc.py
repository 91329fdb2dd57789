"""JSON-RPC 2.0 codec and dispatcher, driven by feeding payloads: no sockets.

The first block replays every example of section 7 of https://www.jsonrpc.org/specification
through ``decode`` -> ``Dispatcher.dispatch`` -> ``encode`` and compares the parsed replies with
the spec's (error messages may differ, codes may not).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from myx.protocol import errors
from myx.protocol.dispatch import MAX_BATCH, Dispatcher, unwrap
from myx.protocol.errors import ErrorCode, RpcError
from myx.protocol.jsonrpc import (
    Batch,
    ErrorResponse,
    Invalid,
    Notification,
    Request,
    Response,
    decode,
    encode,
    from_obj,
)
from myx.protocol.methods import METHODS

# --------------------------------------------------------------------------------------------
# The spec's example server


@dataclass(frozen=True)
class SubtractParams:
    minuend: int
    subtrahend: int


@dataclass(frozen=True)
class SumParams:
    a: int = 0
    b: int = 0
    c: int = 0


@dataclass(frozen=True)
class UpdateParams:
    a: int
    b: int
    c: int
    d: int
    e: int


@dataclass(frozen=True)
class HelloParams:
    value: int


@dataclass(frozen=True)
class NoParams:
    pass


@dataclass(frozen=True)
class AnyParams:
    value: Any = None


TABLE: dict[str, type[Any]] = {
    "subtract": SubtractParams,
    "sum": SumParams,
    "notify_sum": SumParams,
    "update": UpdateParams,
    "notify_hello": HelloParams,
    "get_data": NoParams,
    "echo": AnyParams,
    "fail_rpc": AnyParams,
    "fail_bug": AnyParams,
    "whoami": NoParams,
}


class Server:
    """A dispatcher with the spec's methods plus a few for error paths; records side effects."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.internal_errors: list[tuple[str, BaseException]] = []
        self.responses: list[tuple[Any, Response | ErrorResponse]] = []
        self.dispatcher: Dispatcher[str] = Dispatcher(
            table=TABLE,
            on_internal_error=lambda method, exc: self.internal_errors.append((method, exc)),
            on_response=lambda ctx, msg: self.responses.append((ctx, msg)),
        )
        d = self.dispatcher

        async def subtract(ctx: str, p: SubtractParams) -> int:
            self.calls.append(("subtract", p))
            return p.minuend - p.subtrahend

        async def sum_(ctx: str, p: SumParams) -> int:
            self.calls.append(("sum", p))
            return p.a + p.b + p.c

        async def notify_sum(ctx: str, p: SumParams) -> None:
            self.calls.append(("notify_sum", p))

        async def update(ctx: str, p: UpdateParams) -> None:
            self.calls.append(("update", p))

        async def notify_hello(ctx: str, p: HelloParams) -> None:
            self.calls.append(("notify_hello", p))

        async def get_data(ctx: str, p: NoParams) -> list[Any]:
            self.calls.append(("get_data", p))
            return ["hello", 5]

        async def echo(ctx: str, p: AnyParams) -> Any:
            return p.value

        async def fail_rpc(ctx: str, p: AnyParams) -> None:
            self.calls.append(("fail_rpc", p))
            raise errors.Conflict("already running", {"command_id": p.value})

        async def fail_bug(ctx: str, p: AnyParams) -> None:
            self.calls.append(("fail_bug", p))
            raise ZeroDivisionError("boom")

        async def whoami(ctx: str, p: NoParams) -> str:
            return ctx

        d.add("subtract", subtract)
        d.add("sum", sum_)
        d.add("notify_sum", notify_sum)
        d.add("update", update)
        d.add("notify_hello", notify_hello)
        d.add("get_data", get_data)
        d.add("echo", echo)
        d.add("fail_rpc", fail_rpc)
        d.add("fail_bug", fail_bug)
        d.add("whoami", whoami)

    def rpc(self, payload: str | bytes, ctx: str = "ctx") -> Any:
        """Decode, dispatch, encode; the parsed reply JSON, or None when nothing is sent."""
        reply = asyncio.run(self.dispatcher.dispatch(decode(payload), ctx))
        if reply is None:
            return None
        return json.loads(encode(reply))


@pytest.fixture
def server() -> Server:
    return Server()


def _strip_message(reply: Any) -> Any:
    """Check every error message is a non-empty string, then drop it (wording may differ)."""
    if isinstance(reply, list):
        return [_strip_message(r) for r in reply]
    if isinstance(reply, dict) and "error" in reply:
        error = dict(reply["error"])
        assert isinstance(error.pop("message"), str)
        assert reply["error"]["message"]
        return {**reply, "error": error}
    return reply


def _key(reply: Any) -> str:
    return json.dumps(reply, sort_keys=True)


def assert_reply(actual: Any, expected_json: str | None) -> None:
    """Compare with the spec's reply: messages ignored, batches in any order."""
    if expected_json is None:
        assert actual is None
        return
    expected = _strip_message(json.loads(expected_json))
    actual = _strip_message(actual)
    if isinstance(expected, list):
        assert isinstance(actual, list)
        assert sorted(map(_key, actual)) == sorted(map(_key, expected))
    else:
        assert actual == expected


# --------------------------------------------------------------------------------------------
# Section 7 examples


@pytest.mark.parametrize(
    ("request_json", "reply_json"),
    [
        (
            '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
            '{"jsonrpc": "2.0", "result": 19, "id": 1}',
        ),
        (
            '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
            '{"jsonrpc": "2.0", "result": -19, "id": 2}',
        ),
    ],
)
def test_spec_positional_params(server: Server, request_json: str, reply_json: str) -> None:
    assert_reply(server.rpc(request_json), reply_json)


@pytest.mark.parametrize(
    ("request_json", "reply_json"),
    [
        (
            '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
            '{"jsonrpc": "2.0", "result": 19, "id": 3}',
        ),
        (
            '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
            '{"jsonrpc": "2.0", "result": 19, "id": 4}',
        ),
    ],
)
def test_spec_named_params(server: Server, request_json: str, reply_json: str) -> None:
    assert_reply(server.rpc(request_json), reply_json)


def test_spec_notification(server: Server) -> None:
    assert server.rpc('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}') is None
    assert server.calls == [("update", UpdateParams(1, 2, 3, 4, 5))]
    # Unknown method, but a notification: still no reply.
    assert server.rpc('{"jsonrpc": "2.0", "method": "foobar"}') is None


def test_spec_non_existent_method(server: Server) -> None:
    assert_reply(
        server.rpc('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}'),
        '{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}',
    )


def test_spec_invalid_json(server: Server) -> None:
    assert_reply(
        server.rpc('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]'),
        '{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}',
    )


def test_spec_invalid_request_object(server: Server) -> None:
    assert_reply(
        server.rpc('{"jsonrpc": "2.0", "method": 1, "params": "bar"}'),
        '{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}',
    )


def test_spec_batch_invalid_json(server: Server) -> None:
    payload = """[
      {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
      {"jsonrpc": "2.0", "method"
    ]"""
    assert_reply(
        server.rpc(payload),
        '{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}',
    )
    assert server.calls == []


def test_spec_empty_array(server: Server) -> None:
    # A single error object, not an array holding one.
    assert_reply(
        server.rpc("[]"),
        '{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}',
    )


def test_spec_invalid_batch_not_empty(server: Server) -> None:
    assert_reply(
        server.rpc("[1]"),
        '[{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}]',
    )


def test_spec_invalid_batch(server: Server) -> None:
    assert_reply(
        server.rpc("[1,2,3]"),
        """[
          {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
          {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
          {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}
        ]""",
    )


def test_spec_batch(server: Server) -> None:
    payload = """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"""
    assert_reply(
        server.rpc(payload),
        """[
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
        ]""",
    )
    assert ("notify_hello", HelloParams(7)) in server.calls


def test_spec_batch_all_notifications(server: Server) -> None:
    payload = """[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]"""
    assert server.rpc(payload) is None
    assert sorted(server.calls, key=repr) == sorted(
        [("notify_sum", SumParams(1, 2, 4)), ("notify_hello", HelloParams(7))], key=repr
    )


# --------------------------------------------------------------------------------------------
# Ids


@pytest.mark.parametrize("id_json", ['"abc"', '""', '"\\u00e9\\u4e2d"', "0", "1", "-7", "1.5", "2e3", "null"])
def test_ids_of_every_valid_kind_are_echoed(server: Server, id_json: str) -> None:
    reply = server.rpc(f'{{"jsonrpc":"2.0","method":"subtract","params":[3,1],"id":{id_json}}}')
    assert reply == {"jsonrpc": "2.0", "result": 2, "id": json.loads(id_json)}
    assert type(reply["id"]) is type(json.loads(id_json))


def test_big_integer_id_echoed_exactly(server: Server) -> None:
    big = 2**80 + 1
    reply = server.rpc(f'{{"jsonrpc":"2.0","method":"get_data","id":{big}}}')
    assert reply["id"] == big


def test_error_reply_echoes_request_id(server: Server) -> None:
    reply = server.rpc('{"jsonrpc":"2.0","method":"nope","id":"req-7"}')
    assert reply["id"] == "req-7"
    assert reply["error"]["code"] == ErrorCode.METHOD_NOT_FOUND


@pytest.mark.parametrize("id_json", ["true", "false", "[]", "[1]", "{}", '{"a":1}'])
def test_invalid_id_kinds_rejected(server: Server, id_json: str) -> None:
    message = decode(f'{{"jsonrpc":"2.0","method":"get_data","id":{id_json}}}')
    assert isinstance(message, Invalid)
    assert message.error.code == ErrorCode.INVALID_REQUEST
    reply = server.rpc(f'{{"jsonrpc":"2.0","method":"get_data","id":{id_json}}}')
    assert reply["error"]["code"] == -32600
    assert reply["id"] is None
    assert server.calls == []


# --------------------------------------------------------------------------------------------
# Invalid requests


@pytest.mark.parametrize(
    "payload",
    [
        '{"jsonrpc":"1.0","method":"get_data","id":1}',
        '{"jsonrpc":2.0,"method":"get_data","id":1}',
        '{"jsonrpc":"2","method":"get_data","id":1}',
        '{"jsonrpc":null,"method":"get_data","id":1}',
        '{"method":"get_data","id":1}',
        '{"jsonrpc":"2.0","method":"get_data","id":1,"extra":true}',
        '{"jsonrpc":"2.0","method":"get_data","extra":true}',
        '{"jsonrpc":"2.0","method":"get_data","id":1,"result":1}',
        '{"jsonrpc":"2.0","method":null,"id":1}',
        '{"jsonrpc":"2.0","method":["get_data"],"id":1}',
        '{"jsonrpc":"2.0","id":1}',
        '{"jsonrpc":"2.0"}',
        "{}",
        "1",
        '"get_data"',
        "null",
        "true",
    ],
)
def test_invalid_request_objects(server: Server, payload: str) -> None:
    message = decode(payload)
    assert isinstance(message, Invalid)
    assert type(message.error) is errors.InvalidRequest
    reply = server.rpc(payload)
    assert reply["error"]["code"] == -32600
    assert reply["id"] is None
    assert server.calls == []


@pytest.mark.parametrize("params_json", ["5", '"bar"', "true", "null", "1.5"])
@pytest.mark.parametrize("with_id", [True, False])
def test_scalar_params_rejected(server: Server, params_json: str, with_id: bool) -> None:
    id_part = ',"id":1' if with_id else ""
    payload = f'{{"jsonrpc":"2.0","method":"echo","params":{params_json}{id_part}}}'
    message = decode(payload)
    assert isinstance(message, Invalid)
    assert message.error.code == ErrorCode.INVALID_REQUEST
    # An invalid notification is still an invalid request: the spec answers it.
    assert server.rpc(payload)["error"]["code"] == -32600


def test_missing_params_decoded_as_none() -> None:
    assert decode('{"jsonrpc":"2.0","method":"m","id":1}') == Request("m", None, 1)
    assert decode('{"jsonrpc":"2.0","method":"m"}') == Notification("m", None)
    assert decode('{"jsonrpc":"2.0","method":"m","params":[],"id":1}') == Request("m", [], 1)
    assert decode('{"jsonrpc":"2.0","method":"m","params":{}}') == Notification("m", {})


# --------------------------------------------------------------------------------------------
# Parse errors


@pytest.mark.parametrize(
    "payload",
    [
        '{"jsonrpc":"2.0","method":"echo","params":[NaN],"id":1}',
        '{"jsonrpc":"2.0","method":"echo","params":[Infinity],"id":1}',
        '{"jsonrpc":"2.0","method":"echo","params":[-Infinity],"id":1}',
        '{"jsonrpc":"2.0","method":"echo","id":NaN}',
        # Out of the double range: Python would turn these into inf.
        '{"jsonrpc":"2.0","method":"echo","params":[1e400],"id":1}',
        '{"jsonrpc":"2.0","method":"echo","params":[-1e400],"id":1}',
        '{"jsonrpc":"2.0","method":"echo","id":1e400}',
        "",
        "   ",
        "{",
        '{"jsonrpc":"2.0","method":"echo","id":1} trailing',
        '{"jsonrpc":"2.0","method":"echo","id":1}{"jsonrpc":"2.0","method":"echo","id":2}',
        "{'jsonrpc':'2.0','method':'echo','id':1}",
        '{"jsonrpc":"2.0","method":"echo","id":01}',
        '{"jsonrpc":"2.0","method":"echo","id":1,}',
        # Integers beyond Python's int/str conversion limit.
        pytest.param('{"jsonrpc":"2.0","method":"echo","id":' + "9" * 5000 + "}", id="5000-digit-int"),
    ],
)
def test_parse_errors(server: Server, payload: str) -> None:
    message = decode(payload)
    assert isinstance(message, Invalid)
    assert type(message.error) is errors.ParseError
    reply = server.rpc(payload)
    assert reply["error"]["code"] == -32700
    assert reply["id"] is None
    assert server.calls == []


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        b'{"jsonrpc":"2.0","method":"\xff","id":1}',
        b'{"jsonrpc":"2.0","method":"\xc3\x28","id":1}',  # bad continuation byte
        b'{"jsonrpc":"2.0","method":"\xe2\x82","id":1}',  # truncated 3-byte character
        b'{"jsonrpc":"2.0","method":"\xc0\xaf","id":1}',  # overlong encoding of "/"
        b'{"jsonrpc":"2.0","method":"\xed\xa0\x80","id":1}',  # UTF-8-encoded surrogate
        b'{"jsonrpc":"2.0","method":"\xf4\x90\x80\x80","id":1}',  # above U+10FFFF
        '{"jsonrpc":"2.0","method":"m","id":1}'.encode("utf-16"),
        b"\xef\xbb\xbf" + b'{"jsonrpc":"2.0","method":"m","id":1}',  # BOM is not JSON
    ],
)
def test_non_utf8_bytes_are_parse_errors(server: Server, payload: bytes) -> None:
    message = decode(payload)
    assert isinstance(message, Invalid)
    assert message.error.code == ErrorCode.PARSE_ERROR
    assert server.rpc(payload)["error"]["code"] == -32700


def test_utf8_bytes_decoded() -> None:
    payload = '{"jsonrpc":"2.0","method":"echo","params":["héllo 中文 😀"],"id":"é"}'.encode()
    assert decode(payload) == Request("echo", ["héllo 中文 😀"], "é")


@pytest.mark.parametrize(
    "payload",
    [
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"jsonrpc":"2.0","method":"echo","params":' + "[" * 100_000 + "]" * 100_000 + ',"id":1}',
    ],
    ids=["unclosed-arrays", "arrays", "objects", "in-params"],
)
def test_deeply_nested_json_is_a_parse_error_not_a_crash(server: Server, payload: str) -> None:
    message = decode(payload)
    assert isinstance(message, Invalid)
    assert message.error.code == ErrorCode.PARSE_ERROR
    assert len(message.error.message) < 300
    assert server.rpc(payload)["error"]["code"] == -32700


def test_moderately_nested_params_are_fine(server: Server) -> None:
    nested = "[" * 50 + "]" * 50
    reply = server.rpc(f'{{"jsonrpc":"2.0","method":"echo","params":[{nested}],"id":1}}')
    assert reply["result"] == json.loads(nested)


# --------------------------------------------------------------------------------------------
# Responses


def test_result_response_decoded() -> None:
    assert decode('{"jsonrpc":"2.0","result":19,"id":1}') == Response(1, 19)
    assert decode('{"jsonrpc":"2.0","result":null,"id":"a"}') == Response("a", None)
    assert decode('{"jsonrpc":"2.0","result":{"x":[1,2]},"id":null}') == Response(None, {"x": [1, 2]})


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_response_decoded_to_matching_class(code: ErrorCode) -> None:
    payload = json.dumps(
        {"jsonrpc": "2.0", "error": {"code": int(code), "message": "it broke", "data": {"k": [1]}}, "id": 5}
    )
    message = decode(payload)
    assert isinstance(message, ErrorResponse)
    assert message.id == 5
    assert type(message.error) is not RpcError
    assert message.error.code == code
    assert message.error.message == "it broke"
    assert message.error.data == {"k": [1]}


@pytest.mark.parametrize("code", [-32000, -32099, -32005, -1, 0, 42, 2**40])
def test_error_response_with_unknown_code_keeps_it(code: int) -> None:
    message = decode(json.dumps({"jsonrpc": "2.0", "error": {"code": code, "message": "custom"}, "id": 1}))
    assert isinstance(message, ErrorResponse)
    assert type(message.error) is RpcError
    assert message.error.code == code
    assert message.error.message == "custom"
    assert json.loads(encode(message))["error"] == {"code": code, "message": "custom"}


def test_error_response_with_null_id() -> None:
    message = decode('{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}')
    assert isinstance(message, ErrorResponse)
    assert message.id is None
    assert isinstance(message.error, errors.ParseError)


@pytest.mark.parametrize(
    "payload",
    [
        '{"jsonrpc":"2.0","result":1}',  # no id
        '{"jsonrpc":"2.0","result":1,"id":true}',
        '{"jsonrpc":"2.0","result":1,"id":[1]}',
        '{"jsonrpc":"2.0","result":1,"error":{"code":1,"message":"x"},"id":1}',
        '{"jsonrpc":"2.0","result":1,"id":1,"extra":0}',
        '{"jsonrpc":"1.0","result":1,"id":1}',
        '{"jsonrpc":"2.0","error":null,"id":1}',
        '{"jsonrpc":"2.0","error":"boom","id":1}',
        '{"jsonrpc":"2.0","error":[],"id":1}',
        '{"jsonrpc":"2.0","error":{"message":"x"},"id":1}',
        '{"jsonrpc":"2.0","error":{"code":"-32600","message":"x"},"id":1}',
        '{"jsonrpc":"2.0","error":{"code":true,"message":"x"},"id":1}',
        '{"jsonrpc":"2.0","error":{"code":-32600.5,"message":"x"},"id":1}',
        '{"jsonrpc":"2.0","error":{"code":-32600},"id":1}',
        '{"jsonrpc":"2.0","error":{"code":-32600,"message":null},"id":1}',
        '{"jsonrpc":"2.0","error":{"code":-32600,"message":"x","extra":1},"id":1}',
    ],
)
def test_malformed_responses_invalid(payload: str) -> None:
    message = decode(payload)
    assert isinstance(message, Invalid)
    assert message.error.code == ErrorCode.INVALID_REQUEST


def test_responses_go_to_on_response_hook_and_get_no_reply(server: Server) -> None:
    assert server.rpc('{"jsonrpc":"2.0","result":19,"id":1}', ctx="peer") is None
    assert server.rpc('{"jsonrpc":"2.0","error":{"code":-32003,"message":"busy"},"id":2}', ctx="peer") is None
    assert [ctx for ctx, _ in server.responses] == ["peer", "peer"]
    assert server.responses[0][1] == Response(1, 19)
    error_reply = server.responses[1][1]
    assert isinstance(error_reply, ErrorResponse)
    assert isinstance(error_reply.error, errors.Busy)


def test_batch_of_responses_gets_no_reply(server: Server) -> None:
    payload = '[{"jsonrpc":"2.0","result":1,"id":1},{"jsonrpc":"2.0","result":2,"id":2}]'
    assert server.rpc(payload) is None
    assert sorted(msg.id for _, msg in server.responses) == [1, 2]


def test_responses_without_hook_are_dropped() -> None:
    dispatcher: Dispatcher[None] = Dispatcher(table=TABLE)
    assert asyncio.run(dispatcher.dispatch(decode('{"jsonrpc":"2.0","result":1,"id":1}'), None)) is None


# --------------------------------------------------------------------------------------------
# encode


@pytest.mark.parametrize(
    "message",
    [
        Request("subtract", [42, 23], 1),
        Request("subtract", {"minuend": 42, "subtrahend": 23}, "abc"),
        Request("get_data", None, None),
        Request("echo", ["中文 😀"], 1.5),
        Notification("update", [1, 2, 3, 4, 5]),
        Notification("ping", None),
        Notification("ping", {}),
        Response(1, 19),
        Response("x", None),
        Response(None, {"nested": [1, {"a": "é"}]}),
    ],
)
def test_encode_round_trips(message: Any) -> None:
    data = encode(message)
    assert isinstance(data, bytes)
    assert decode(data) == message
    assert decode(data.decode("utf-8")) == message


def test_encode_error_response_round_trips() -> None:
    original = ErrorResponse(7, errors.UnknownTarget("no such command", {"command_id": "c1"}))
    back = decode(encode(original))
    assert isinstance(back, ErrorResponse)
    assert back.id == 7
    assert type(back.error) is errors.UnknownTarget
    assert back.error.message == "no such command"
    assert back.error.data == {"command_id": "c1"}
    assert back.to_obj() == original.to_obj()


def test_encode_shapes() -> None:
    assert json.loads(encode(Request("m", None, 1))) == {"jsonrpc": "2.0", "method": "m", "id": 1}
    assert json.loads(encode(Request("m", None, None))) == {"jsonrpc": "2.0", "method": "m", "id": None}
    assert json.loads(encode(Notification("m", [1]))) == {"jsonrpc": "2.0", "method": "m", "params": [1]}
    assert json.loads(encode(Response(1, None))) == {"jsonrpc": "2.0", "result": None, "id": 1}
    assert json.loads(encode(ErrorResponse(1, errors.Busy()))) == {
        "jsonrpc": "2.0",
        "error": {"code": -32003, "message": "Busy: concurrency limit reached"},
        "id": 1,
    }
    # Invalid encodes as the error reply it stands for.
    assert json.loads(encode(Invalid(errors.ParseError()))) == {
        "jsonrpc": "2.0",
        "error": {"code": -32700, "message": "Parse error"},
        "id": None,
    }


def test_encode_is_compact_utf8() -> None:
    data = encode(Response(1, "é中😀"))
    assert data == '{"jsonrpc":"2.0","result":"é中😀","id":1}'.encode()


def test_encode_batch_and_reply_list() -> None:
    batch = Batch([Request("a", [1], 1), Notification("b", None)])
    assert decode(encode(batch)) == batch
    replies = [Response(1, 1), ErrorResponse(2, errors.MethodNotFound())]
    assert json.loads(encode(replies)) == [
        {"jsonrpc": "2.0", "result": 1, "id": 1},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 2},
    ]
    assert json.loads(encode(())) == []


def test_encode_rejects_non_finite_results() -> None:
    with pytest.raises(ValueError, match="JSON"):
        encode(Response(1, float("nan")))


def test_lone_surrogates_survive_a_round_trip(server: Server) -> None:
    # JSON may escape a lone surrogate; it has no UTF-8 form, so the reply must escape it too.
    message = decode('{"jsonrpc":"2.0","method":"echo","params":["\\ud800x"],"id":"\\udfff"}')
    assert message == Request("echo", ["\ud800x"], "\udfff")
    assert decode(encode(message)) == message
    assert server.rpc('{"jsonrpc":"2.0","method":"echo","params":["\\ud800x"],"id":"\\udfff"}') == {
        "jsonrpc": "2.0",
        "result": "\ud800x",
        "id": "\udfff",
    }
    # Unknown method whose name is echoed into the error message.
    reply = server.rpc('{"jsonrpc":"2.0","method":"\\ud800","id":1}')
    assert reply["error"]["code"] == -32601


# --------------------------------------------------------------------------------------------
# Dispatcher


def test_default_table_is_the_agent_method_table() -> None:
    dispatcher: Dispatcher[None] = Dispatcher()

    async def handler(ctx: None, params: Any) -> str:
        return "ok"

    for method in METHODS:
        dispatcher.add(method, handler)
    assert dispatcher.methods == sorted(METHODS)
    with pytest.raises(KeyError):
        dispatcher.add("subtract", handler)


def test_add_rejects_methods_outside_the_table(server: Server) -> None:
    async def handler(ctx: str, params: Any) -> None:
        return None

    with pytest.raises(KeyError, match="foobar"):
        server.dispatcher.add("foobar", handler)
    assert "foobar" not in server.dispatcher.methods


def test_method_in_table_without_handler_is_not_found() -> None:
    dispatcher: Dispatcher[None] = Dispatcher(table=TABLE)
    reply = asyncio.run(dispatcher.dispatch(decode('{"jsonrpc":"2.0","method":"sum","id":1}'), None))
    assert isinstance(reply, ErrorResponse)
    assert isinstance(reply.error, errors.MethodNotFound)


def test_handler_receives_context(server: Server) -> None:
    assert server.rpc('{"jsonrpc":"2.0","method":"whoami","id":1}', ctx="conn-42")["result"] == "conn-42"


def test_invalid_params_reply_names_parameter(server: Server) -> None:
    reply = server.rpc('{"jsonrpc":"2.0","method":"subtract","params":["a",1],"id":1}')
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"] == {"param": "minuend"}
    assert "minuend" in reply["error"]["message"]
    reply = server.rpc('{"jsonrpc":"2.0","method":"subtract","params":[1,2,3],"id":2}')
    assert reply["error"]["code"] == -32602
    reply = server.rpc('{"jsonrpc":"2.0","method":"subtract","params":{"minuend":1},"id":3}')
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"] == {"param": "subtrahend"}
    assert server.calls == []


def test_invalid_params_on_notification_no_reply(server: Server) -> None:
    assert server.rpc('{"jsonrpc":"2.0","method":"notify_hello","params":["x"]}') is None
    assert server.calls == []
    assert server.internal_errors == []


def test_handler_rpc_error_becomes_error_reply_with_data(server: Server) -> None:
    reply = server.rpc('{"jsonrpc":"2.0","method":"fail_rpc","params":["c1"],"id":9}')
    assert reply == {
        "jsonrpc": "2.0",
        "error": {"code": -32004, "message": "already running", "data": {"command_id": "c1"}},
        "id": 9,
    }
    assert server.internal_errors == []


def test_handler_bug_becomes_internal_error_and_hook_called(server: Server) -> None:
    reply = server.rpc('{"jsonrpc":"2.0","method":"fail_bug","id":"x"}')
    assert reply["id"] == "x"
    assert reply["error"]["code"] == -32603
    # The exception text stays on this side: it may hold paths or secrets.
    assert "boom" not in json.dumps(reply)
    assert len(server.internal_errors) == 1
    method, exc = server.internal_errors[0]
    assert method == "fail_bug"
    assert isinstance(exc, ZeroDivisionError)


def test_notification_handler_raising_produces_no_reply(server: Server) -> None:
    assert server.rpc('{"jsonrpc":"2.0","method":"fail_rpc"}') is None
    assert server.internal_errors == []
    assert server.rpc('{"jsonrpc":"2.0","method":"fail_bug"}') is None
    assert [m for m, _ in server.internal_errors] == ["fail_bug"]
    assert [name for name, _ in server.calls] == ["fail_rpc", "fail_bug"]


def test_handler_bug_without_hook_still_answers() -> None:
    dispatcher: Dispatcher[None] = Dispatcher(table=TABLE)

    async def bug(ctx: None, params: Any) -> None:
        raise RuntimeError("x")

    dispatcher.add("echo", bug)
    reply = asyncio.run(dispatcher.dispatch(decode('{"jsonrpc":"2.0","method":"echo","id":1}'), None))
    assert isinstance(reply, ErrorResponse)
    assert isinstance(reply.error, errors.InternalError)


def test_batch_with_failures_answers_every_request(server: Server) -> None:
    payload = json.dumps(
        [
            {"jsonrpc": "2.0", "method": "fail_bug", "id": 1},
            {"jsonrpc": "2.0", "method": "fail_rpc", "params": ["c"], "id": 2},
            {"jsonrpc": "2.0", "method": "sum", "params": [1, 1], "id": 3},
            {"jsonrpc": "2.0", "method": "fail_bug"},
        ]
    )
    reply = server.rpc(payload)
    by_id = {r["id"]: r for r in reply}
    assert set(by_id) == {1, 2, 3}
    assert by_id[1]["error"]["code"] == -32603
    assert by_id[2]["error"]["code"] == -32004
    assert by_id[3]["result"] == 2


def test_batch_size_limit(server: Server) -> None:
    item = {"jsonrpc": "2.0", "method": "sum", "params": [1], "id": 0}
    at_limit = [dict(item, id=i) for i in range(MAX_BATCH)]
    reply = server.rpc(json.dumps(at_limit))
    assert sorted(r["id"] for r in reply) == list(range(MAX_BATCH))

    server.calls.clear()
    over = [dict(item, id=i) for i in range(MAX_BATCH + 1)]
    reply = server.rpc(json.dumps(over))
    assert isinstance(reply, dict)  # one error for the whole batch
    assert reply["error"]["code"] == -32600
    assert reply["id"] is None
    assert server.calls == []


def test_batch_of_one_answered_as_array(server: Server) -> None:
    reply = server.rpc('[{"jsonrpc":"2.0","method":"sum","params":[2,3],"id":1}]')
    assert reply == [{"jsonrpc": "2.0", "result": 5, "id": 1}]


def test_nested_batch_is_invalid(server: Server) -> None:
    reply = server.rpc('[[{"jsonrpc":"2.0","method":"sum","params":[2,3],"id":1}]]')
    assert reply == [
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": reply[0]["error"]["message"]}, "id": None}
    ]


def test_from_obj_on_parsed_values() -> None:
    assert from_obj({"jsonrpc": "2.0", "method": "m", "id": 1}) == Request("m", None, 1)
    assert isinstance(from_obj([]), Invalid)
    assert isinstance(from_obj("x"), Invalid)


# --------------------------------------------------------------------------------------------
# unwrap


def test_unwrap_result() -> None:
    assert unwrap(Response(1, {"a": 1})) == {"a": 1}
    assert unwrap(Response(1, None)) is None


def test_unwrap_raises_peer_error_as_its_class() -> None:
    message = decode('{"jsonrpc":"2.0","error":{"code":-32002,"message":"gone","data":{"id":"c"}},"id":1}')
    with pytest.raises(errors.UnknownTarget, match="gone") as info:
        unwrap(message)  # type: ignore[arg-type]
    assert info.value.data == {"id": "c"}


def test_unwrap_unknown_code() -> None:
    with pytest.raises(RpcError) as info:
        unwrap(ErrorResponse(1, errors.from_error_object({"code": -32050, "message": "custom"})))
    assert info.value.code == -32050


def test_unwrap_invalid_raises_its_error() -> None:
    message = decode("{")
    with pytest.raises(errors.ParseError):
        unwrap(message)  # type: ignore[arg-type]


@pytest.mark.parametrize("message", [Request("m", None, 1), Notification("m", None)])
def test_unwrap_non_response(message: Any) -> None:
    with pytest.raises(errors.InvalidRequest, match=type(message).__name__):
        unwrap(message)


# --------------------------------------------------------------------------------------------
# Properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=()), max_size=8)  # surrogates included
    | st.sampled_from(["\ud800", "x\udfff", "é中😀"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
member_names = st.sampled_from(["jsonrpc", "method", "params", "id", "result", "error", "code", "message"])
message_like = st.dictionaries(
    member_names | st.text(max_size=4), json_values, max_size=6
) | st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | json_values, "method": st.text(max_size=8) | json_values},
    optional={"params": json_values, "id": json_values},
)
payloads = st.one_of(json_values, message_like, st.lists(message_like | json_values, max_size=5))


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_decode_and_dispatch_never_crash_on_json(value: Any) -> None:
    server = Server()
    text = json.dumps(value)
    message = decode(text)
    assert isinstance(message, (Request, Notification, Response, ErrorResponse, Invalid, Batch))
    encode(message)  # whatever was decoded can be sent back
    reply = asyncio.run(server.dispatcher.dispatch(message, "ctx"))
    if reply is not None:
        parsed = json.loads(encode(reply))
        replies = parsed if isinstance(parsed, list) else [parsed]
        for r in replies:
            assert r["jsonrpc"] == "2.0"
            assert ("result" in r) != ("error" in r)
            if "error" in r:
                assert r["error"]["code"] != -32603 or "fail_bug" in text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_decode_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    message = decode(data)
    assert isinstance(message, (Request, Notification, Response, ErrorResponse, Invalid, Batch))
    encode(message)


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=10),
    st.none()
    | st.lists(json_values, max_size=3)
    | st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    st.none() | st.text(max_size=5) | st.integers(min_value=-(10**30), max_value=10**30),
)
def test_request_round_trip_property(method: str, params: Any, id_: Any) -> None:
    for message in (Request(method, params, id_), Notification(method, params), Response(id_, params)):
        assert decode(encode(message)) == message
