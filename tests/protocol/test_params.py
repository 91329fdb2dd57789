"""params.bind against the real method param classes of methods.py."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from myx.protocol.errors import ErrorCode, InvalidParams
from myx.protocol.methods import (
    COMMAND_ID_PATTERN,
    DEFAULT_LOG_LIMIT,
    DEFAULT_TIMEOUT,
    MAX_LOG_LIMIT,
    MAX_LOG_WAIT,
    MAX_TIMEOUT,
    METHODS,
    NOTIFICATIONS,
    CommandFinishedParams,
    CommandIdParams,
    CommandOutputParams,
    ExecuteCommandParams,
    ExecuteScriptParams,
    GetCommandLogParams,
    HeartbeatParams,
    ListCommandsParams,
    NoParams,
    as_params,
)
from myx.protocol.params import bind

ALL_CLASSES = sorted({*METHODS.values(), *NOTIFICATIONS.values()}, key=lambda c: c.__name__)


def bind_error(cls: type[Any], params: Any) -> InvalidParams:
    with pytest.raises(InvalidParams) as info:
        bind(cls, params)
    assert info.value.code == ErrorCode.INVALID_PARAMS
    assert info.value.message.startswith("Invalid params")
    return info.value


def assert_names(exc: InvalidParams, param: str) -> None:
    """The offending parameter is named in the message and in error.data["param"]."""
    assert exc.data == {"param": param}
    assert repr(param) in exc.message


# --------------------------------------------------------------------------------------------
# Defaults and successful binding


def test_execute_command_defaults() -> None:
    p = bind(ExecuteCommandParams, {"command": "ls"})
    assert p == ExecuteCommandParams(command="ls")
    assert p.args == []
    assert p.timeout == DEFAULT_TIMEOUT
    assert p.command_id is None
    assert p.env is None
    assert p.cwd is None
    assert p.stdin is None
    assert p.shell is False


def test_execute_command_all_fields() -> None:
    params = {
        "command": "echo",
        "args": ["a", "b c", ""],
        "timeout": 12.5,
        "command_id": "cmd-1_2.3",
        "env": {"KEY": "value", "EMPTY": ""},
        "cwd": "/tmp",
        "stdin": "input\n",
        "shell": True,
    }
    p = bind(ExecuteCommandParams, params)
    assert dataclasses.asdict(p) == params


def test_default_factory_gives_fresh_lists() -> None:
    a = bind(ExecuteCommandParams, {"command": "x"})
    b = bind(ExecuteCommandParams, {"command": "y"})
    assert a.args == []
    assert b.args == []
    assert a.args is not b.args


def test_execute_script_defaults() -> None:
    p = bind(ExecuteScriptParams, {"script": "echo hi"})
    assert p.interpreter == "/bin/sh"
    assert p.args == []
    assert p.timeout == DEFAULT_TIMEOUT
    # An empty script is allowed (no nonempty constraint), an empty interpreter is not.
    assert bind(ExecuteScriptParams, {"script": ""}).script == ""
    assert_names(bind_error(ExecuteScriptParams, {"script": "x", "interpreter": ""}), "interpreter")


def test_get_command_log_defaults() -> None:
    p = bind(GetCommandLogParams, {"command_id": "abc"})
    assert p == GetCommandLogParams(command_id="abc", offset=0, wait=0.0, limit=DEFAULT_LOG_LIMIT)


@pytest.mark.parametrize("params", [None, {}, []])
def test_no_params(params: Any) -> None:
    assert bind(NoParams, params) == NoParams()


def test_no_params_rejects_anything() -> None:
    assert_names(bind_error(NoParams, {"x": 1}), "x")
    exc = bind_error(NoParams, [1])
    assert "at most 0" in exc.message


def test_list_commands_and_heartbeat() -> None:
    assert bind(ListCommandsParams, None).include_finished is True
    assert bind(ListCommandsParams, {"include_finished": False}).include_finished is False
    assert bind(HeartbeatParams, {}).server_time is None
    assert (
        bind(HeartbeatParams, {"server_time": "2024-01-01T00:00:00Z"}).server_time == "2024-01-01T00:00:00Z"
    )
    assert bind(HeartbeatParams, {"server_time": 1700000000.5}).server_time == 1700000000.5
    assert bind(HeartbeatParams, {"server_time": None}).server_time is None


@pytest.mark.parametrize("value", [[1], {"a": 1}, True])
def test_heartbeat_server_time_rejects_other_types(value: Any) -> None:
    assert_names(bind_error(HeartbeatParams, {"server_time": value}), "server_time")


def test_lone_surrogate_is_invalid_params() -> None:
    assert_names(bind_error(ExecuteCommandParams, {"command": "a\ud800b"}), "command")


def test_notifications_bind() -> None:
    out = bind(
        CommandOutputParams,
        {"command_id": "c", "offset": 0, "new_offset": 3, "chunks": [{"stream": "stdout", "data": "abc"}]},
    )
    assert out.chunks == [{"stream": "stdout", "data": "abc"}]
    fin = bind(CommandFinishedParams, {"command_id": "c", "new_offset": 3, "result": {"status": "success"}})
    assert fin.result == {"status": "success"}
    assert_names(bind_error(CommandOutputParams, {"command_id": "c", "offset": 0, "new_offset": 3}), "chunks")
    exc = bind_error(
        CommandOutputParams, {"command_id": "c", "offset": 0, "new_offset": 3, "chunks": [{}, "x"]}
    )
    assert_names(exc, "chunks[1]")
    assert "got string" in exc.message


# --------------------------------------------------------------------------------------------
# Missing and unknown parameters


@pytest.mark.parametrize(
    ("cls", "params", "missing"),
    [
        (ExecuteCommandParams, {}, "command"),
        (ExecuteCommandParams, {"args": ["x"]}, "command"),
        (ExecuteScriptParams, {"interpreter": "/bin/bash"}, "script"),
        (GetCommandLogParams, {"offset": 5}, "command_id"),
        (CommandIdParams, None, "command_id"),
        (CommandIdParams, [], "command_id"),
        (CommandFinishedParams, {"command_id": "c", "new_offset": 1}, "result"),
    ],
)
def test_missing_required_parameter_named(cls: type[Any], params: Any, missing: str) -> None:
    exc = bind_error(cls, params)
    assert_names(exc, missing)
    assert "missing" in exc.message


@pytest.mark.parametrize(
    ("cls", "params", "unknown"),
    [
        (ExecuteCommandParams, {"command": "ls", "argv": ["x"]}, "argv"),
        (ExecuteCommandParams, {"command": "ls", "Timeout": 1}, "Timeout"),
        (GetCommandLogParams, {"command_id": "c", "": 1}, ""),
        (CommandIdParams, {"command_id": "c", "id": "c"}, "id"),
    ],
)
def test_unknown_parameter_named(cls: type[Any], params: Any, unknown: str) -> None:
    exc = bind_error(cls, params)
    assert_names(exc, unknown)
    assert "unknown" in exc.message


def test_unknown_reported_before_missing() -> None:
    # Catching a typo beats complaining the correctly spelt name is absent.
    assert_names(bind_error(ExecuteCommandParams, {"comand": "ls"}), "comand")


def test_several_unknown_parameters_first_alphabetically_named() -> None:
    assert_names(bind_error(CommandIdParams, {"command_id": "c", "zz": 1, "aa": 2}), "aa")


@pytest.mark.parametrize("params", [5, "x", True, 1.5])
def test_params_must_be_object_or_array(params: Any) -> None:
    exc = bind_error(ExecuteCommandParams, params)
    assert "object or an array" in exc.message


# --------------------------------------------------------------------------------------------
# Types

JSON_KINDS = {
    "string": "s",
    "number": 1,
    "float": 1.5,
    "boolean": True,
    "null": None,
    "array": ["s"],
    "object": {"k": "v"},
}
JSON_TYPE_NAME = {"float": "number"}


def _kinds_except(*allowed: str) -> list[tuple[str, Any]]:
    return [(JSON_TYPE_NAME.get(k, k), v) for k, v in JSON_KINDS.items() if k not in allowed]


@pytest.mark.parametrize(("json_type", "value"), _kinds_except("string"))
def test_str_field_wrong_type(json_type: str, value: Any) -> None:
    exc = bind_error(ExecuteCommandParams, {"command": value})
    assert_names(exc, "command")
    assert "a string" in exc.message
    assert exc.message.endswith(f"got {json_type}")


@pytest.mark.parametrize(("json_type", "value"), _kinds_except("number", "float"))
def test_float_field_wrong_type(json_type: str, value: Any) -> None:
    exc = bind_error(ExecuteCommandParams, {"command": "ls", "timeout": value})
    assert_names(exc, "timeout")
    assert "a number" in exc.message
    assert exc.message.endswith(f"got {json_type}")


@pytest.mark.parametrize(("json_type", "value"), _kinds_except("number"))
def test_int_field_wrong_type(json_type: str, value: Any) -> None:
    exc = bind_error(GetCommandLogParams, {"command_id": "c", "offset": value})
    assert_names(exc, "offset")
    assert "an integer" in exc.message
    assert exc.message.endswith(f"got {json_type}")


@pytest.mark.parametrize(("json_type", "value"), _kinds_except("boolean"))
def test_bool_field_wrong_type(json_type: str, value: Any) -> None:
    exc = bind_error(ExecuteCommandParams, {"command": "ls", "shell": value})
    assert_names(exc, "shell")
    assert "a boolean" in exc.message
    assert exc.message.endswith(f"got {json_type}")


@pytest.mark.parametrize("value", [0, 1, "true", "false", "", None])
def test_bool_field_not_truthy(value: Any) -> None:
    assert_names(bind_error(ListCommandsParams, {"include_finished": value}), "include_finished")


@pytest.mark.parametrize(("json_type", "value"), _kinds_except("array"))
def test_list_field_wrong_type(json_type: str, value: Any) -> None:
    exc = bind_error(ExecuteCommandParams, {"command": "ls", "args": value})
    assert_names(exc, "args")
    assert "an array" in exc.message
    assert exc.message.endswith(f"got {json_type}")


@pytest.mark.parametrize(("json_type", "value"), _kinds_except("object", "null"))
def test_optional_dict_field_wrong_type(json_type: str, value: Any) -> None:
    exc = bind_error(ExecuteCommandParams, {"command": "ls", "env": value})
    assert_names(exc, "env")
    assert "an object" in exc.message
    assert exc.message.endswith(f"got {json_type}")


@pytest.mark.parametrize("value", [True, False])
def test_bool_not_accepted_as_int(value: bool) -> None:
    exc = bind_error(GetCommandLogParams, {"command_id": "c", "offset": value})
    assert exc.message.endswith("got boolean")
    exc = bind_error(GetCommandLogParams, {"command_id": "c", "limit": value})
    assert_names(exc, "limit")


@pytest.mark.parametrize("value", [True, False])
def test_bool_not_accepted_as_float(value: bool) -> None:
    exc = bind_error(ExecuteCommandParams, {"command": "ls", "timeout": value})
    assert_names(exc, "timeout")
    assert exc.message.endswith("got boolean")


@pytest.mark.parametrize(("value", "expected"), [(0.0, 0), (5.0, 5), (1e6, 1_000_000), (-0.0, 0)])
def test_integral_float_accepted_as_int(value: float, expected: int) -> None:
    p = bind(GetCommandLogParams, {"command_id": "c", "offset": value})
    assert p.offset == expected
    assert type(p.offset) is int


@pytest.mark.parametrize("value", [0.5, 1.000001, float("nan"), float("inf"), float("-inf")])
def test_non_integral_float_rejected_as_int(value: float) -> None:
    exc = bind_error(GetCommandLogParams, {"command_id": "c", "offset": value})
    assert_names(exc, "offset")
    assert exc.message.endswith("got number")


def test_int_accepted_as_float() -> None:
    p = bind(ExecuteCommandParams, {"command": "ls", "timeout": 10})
    assert p.timeout == 10.0
    assert type(p.timeout) is float


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), 10**400, -(10**400)],
    ids=["nan", "inf", "-inf", "10**400", "-10**400"],
)
def test_non_finite_and_huge_numbers_rejected_as_float(value: Any) -> None:
    # 10**400 is a valid JSON integer that no float can hold: it must be a -32602, not an OverflowError.
    assert_names(bind_error(ExecuteCommandParams, {"command": "ls", "timeout": value}), "timeout")
    assert_names(bind_error(GetCommandLogParams, {"command_id": "c", "wait": value}), "wait")


def test_huge_int_for_int_field_checked_against_range() -> None:
    assert bind(GetCommandLogParams, {"command_id": "c", "offset": 10**400}).offset == 10**400
    assert_names(bind_error(GetCommandLogParams, {"command_id": "c", "limit": 10**400}), "limit")


# --------------------------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize(
    ("cls", "field", "ok", "bad", "base"),
    [
        (
            ExecuteCommandParams,
            "timeout",
            [0.001, 1, MAX_TIMEOUT],
            [0, 0.0009, -1, MAX_TIMEOUT + 1],
            {"command": "x"},
        ),
        (ExecuteScriptParams, "timeout", [0.001, MAX_TIMEOUT], [0, MAX_TIMEOUT * 2], {"script": "x"}),
        (GetCommandLogParams, "offset", [0, 1, 2**62], [-1, -(2**62)], {"command_id": "c"}),
        (
            GetCommandLogParams,
            "wait",
            [0, 0.0, 30, MAX_LOG_WAIT],
            [-0.1, -1, MAX_LOG_WAIT + 0.001],
            {"command_id": "c"},
        ),
        (GetCommandLogParams, "limit", [1, MAX_LOG_LIMIT], [0, -5, MAX_LOG_LIMIT + 1], {"command_id": "c"}),
    ],
)
def test_min_max_limits(
    cls: type[Any], field: str, ok: list[Any], bad: list[Any], base: dict[str, Any]
) -> None:
    for value in ok:
        assert getattr(bind(cls, {**base, field: value}), field) == value
    for value in bad:
        exc = bind_error(cls, {**base, field: value})
        assert_names(exc, field)
        assert re.search(r"must be [<>]= ", exc.message)


def test_max_len_on_string() -> None:
    assert bind(ExecuteCommandParams, {"command": "x" * 65536}).command == "x" * 65536
    exc = bind_error(ExecuteCommandParams, {"command": "x" * 65537})
    assert_names(exc, "command")
    assert "longer than 65536" in exc.message


def test_max_len_on_list() -> None:
    assert len(bind(ExecuteCommandParams, {"command": "x", "args": [""] * 65536}).args) == 65536
    exc = bind_error(ExecuteCommandParams, {"command": "x", "args": [""] * 65537})
    assert_names(exc, "args")
    assert "longer than 65536" in exc.message


def test_max_len_counts_characters_not_bytes() -> None:
    assert bind(ExecuteCommandParams, {"command": "é" * 65536}).command == "é" * 65536


def test_nonempty() -> None:
    exc = bind_error(ExecuteCommandParams, {"command": ""})
    assert_names(exc, "command")
    assert "empty" in exc.message


# --------------------------------------------------------------------------------------------
# command_id pattern

GOOD_IDS = ["a", "A", "0", "abc-DEF_123.log", "a" * 128, "0" + "._-" * 42, "c" + "-" * 127]
BAD_IDS = [
    "",
    "-a",
    ".",
    "..",
    "../x",
    "a/b",
    "_a",
    ".hidden",
    "a b",
    "a\n",
    "\na",
    "a\x00",
    "é",
    "a" * 129,
    "a:b",
    "a\\b",
    "ａ",  # fullwidth letter: \w would take it, the pattern must not
    "١",  # Arabic-Indic digit
]


@pytest.mark.parametrize("command_id", GOOD_IDS)
@pytest.mark.parametrize("cls", [GetCommandLogParams, CommandIdParams])
def test_command_id_pattern_accepts(cls: type[Any], command_id: str) -> None:
    assert bind(cls, {"command_id": command_id}).command_id == command_id


@pytest.mark.parametrize("command_id", BAD_IDS)
@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (GetCommandLogParams, {}),
        (CommandIdParams, {}),
        (ExecuteCommandParams, {"command": "x"}),
        (ExecuteScriptParams, {"script": "x"}),
    ],
)
def test_command_id_pattern_rejects(cls: type[Any], base: dict[str, Any], command_id: str) -> None:
    exc = bind_error(cls, {**base, "command_id": command_id})
    assert_names(exc, "command_id")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=140))
def test_command_id_pattern_property(command_id: str) -> None:
    safe = (
        1 <= len(command_id) <= 128
        and command_id.isascii()
        and command_id[0].isalnum()
        and all(c.isalnum() or c in "_.-" for c in command_id)
    )
    try:
        bind(CommandIdParams, {"command_id": command_id})
    except InvalidParams:
        assert not safe
    else:
        assert safe
    assert (re.fullmatch(COMMAND_ID_PATTERN, command_id) is not None) == safe


# --------------------------------------------------------------------------------------------
# Nested elements, Optional


@pytest.mark.parametrize(
    ("args", "name", "json_type"),
    [
        (["a", 2], "args[1]", "number"),
        ([None], "args[0]", "null"),
        (["a", "b", ["c"]], "args[2]", "array"),
        (["a", {"x": 1}], "args[1]", "object"),
        ([True], "args[0]", "boolean"),
    ],
)
def test_list_element_errors_named_by_index(args: list[Any], name: str, json_type: str) -> None:
    exc = bind_error(ExecuteCommandParams, {"command": "x", "args": args})
    assert_names(exc, name)
    assert exc.message.endswith(f"got {json_type}")


@pytest.mark.parametrize(
    ("env", "name", "json_type"),
    [
        ({"KEY": 1}, "env.KEY", "number"),
        ({"OK": "v", "PATH": None}, "env.PATH", "null"),
        ({"A": ["x"]}, "env.A", "array"),
        ({"A": False}, "env.A", "boolean"),
        ({"A": {"B": "c"}}, "env.A", "object"),
    ],
)
def test_dict_value_errors_named_by_key(env: dict[str, Any], name: str, json_type: str) -> None:
    exc = bind_error(ExecuteCommandParams, {"command": "x", "env": env})
    assert_names(exc, name)
    assert exc.message.endswith(f"got {json_type}")


@pytest.mark.parametrize("field", ["command_id", "env", "cwd", "stdin"])
def test_optional_fields_accept_null(field: str) -> None:
    p = bind(ExecuteCommandParams, {"command": "x", field: None})
    assert getattr(p, field) is None


@pytest.mark.parametrize(("field", "value"), [("cwd", 1), ("stdin", ["x"]), ("command_id", 5)])
def test_optional_fields_still_type_checked(field: str, value: Any) -> None:
    assert_names(bind_error(ExecuteCommandParams, {"command": "x", field: value}), field)


@pytest.mark.parametrize(
    ("field", "value"),
    [("command", None), ("args", None), ("timeout", None), ("shell", None)],
)
def test_non_optional_fields_reject_null(field: str, value: Any) -> None:
    base = {"command": "x"}
    exc = bind_error(ExecuteCommandParams, {**base, field: value})
    assert_names(exc, field)
    assert exc.message.endswith("got null")


def test_required_field_rejects_null() -> None:
    exc = bind_error(CommandIdParams, {"command_id": None})
    assert_names(exc, "command_id")


def test_nested_any_values_passed_through() -> None:
    result = {"status": "success", "nested": [1, {"x": None}], "n": 1.5}
    assert (
        bind(CommandFinishedParams, {"command_id": "c", "new_offset": 0, "result": result}).result == result
    )


# --------------------------------------------------------------------------------------------
# Positional params


def test_positional_params_map_to_fields_in_order() -> None:
    p = bind(ExecuteCommandParams, ["ls", ["-l"], 5, "id1", {"A": "b"}, "/", "in", True])
    assert p == ExecuteCommandParams("ls", ["-l"], 5.0, "id1", {"A": "b"}, "/", "in", True)


def test_positional_params_with_defaults_for_the_rest() -> None:
    p = bind(GetCommandLogParams, ["c1", 10])
    assert p == GetCommandLogParams("c1", 10, 0.0, DEFAULT_LOG_LIMIT)


def test_positional_params_too_many() -> None:
    exc = bind_error(CommandIdParams, ["a", "b"])
    assert "at most 1" in exc.message


def test_positional_params_type_errors_named() -> None:
    assert_names(bind_error(GetCommandLogParams, ["c1", "ten"]), "offset")
    assert_names(bind_error(ExecuteCommandParams, ["ls", "-l"]), "args")


def test_positional_null_for_required_field() -> None:
    assert_names(bind_error(CommandIdParams, [None]), "command_id")


# --------------------------------------------------------------------------------------------
# as_params <-> bind


@pytest.mark.parametrize(
    "obj",
    [
        ExecuteCommandParams(command="ls"),
        ExecuteCommandParams("sh", ["-c", "x"], 1.5, "c1", {"A": "B"}, "/tmp", "in", True),
        ExecuteScriptParams(script="print(1)", interpreter="/usr/bin/python3"),
        GetCommandLogParams(command_id="c", offset=5, wait=1.0, limit=10),
        CommandIdParams("c"),
        ListCommandsParams(include_finished=False),
        HeartbeatParams(server_time="now"),
        NoParams(),
    ],
)
def test_as_params_round_trips_through_bind(obj: Any) -> None:
    params = as_params(obj)
    assert bind(type(obj), params) == obj


def test_as_params_leaves_out_defaults() -> None:
    assert as_params(GetCommandLogParams(command_id="c")) == {"command_id": "c"}
    assert as_params(ListCommandsParams()) == {}


# --------------------------------------------------------------------------------------------
# Property: bind returns an instance or raises InvalidParams, nothing else

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()  # NaN and infinities too: bind must cope even if the codec would not pass them
    | st.text(max_size=10)
    | st.sampled_from(["", "c1", "ls", "/bin/sh", "../x", "a" * 129])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=15,
)


@st.composite
def params_for(draw: st.DrawFn, cls: type[Any]) -> Any:
    names = [f.name for f in dataclasses.fields(cls)]
    key = st.sampled_from(names) | st.text(max_size=6) if names else st.text(max_size=6)
    return draw(
        st.one_of(
            json_values,
            st.dictionaries(key, json_values, max_size=len(names) + 1),
            st.lists(json_values, max_size=len(names) + 1),
        )
    )


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ALL_CLASSES).flatmap(lambda cls: st.tuples(st.just(cls), params_for(cls))))
def test_bind_returns_instance_or_raises_invalid_params(case: tuple[type[Any], Any]) -> None:
    cls, params = case
    outcome: Any
    try:
        outcome = bind(cls, params)
    except InvalidParams as exc:
        outcome = exc
    if isinstance(outcome, InvalidParams):
        assert outcome.code == ErrorCode.INVALID_PARAMS
        assert outcome.data is None or set(outcome.data) == {"param"}
    else:
        assert isinstance(outcome, cls)
