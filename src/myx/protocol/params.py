"""Binding JSON-RPC params to typed dataclasses.

Each method's params are a frozen dataclass; :func:`bind` checks a received ``params`` value
against it and names the offending parameter in the -32602 error, so a caller learns exactly
what to fix.  Annotations use ``typing`` forms because they are evaluated at run time, on
Python 3.9 too.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, TypeVar

from myx.protocol.errors import InvalidParams

T = TypeVar("T")

_NoneType = type(None)


def bind(cls: Type[T], params: Any) -> T:
    """Build *cls* from by-name (object) or by-position (array) params."""
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    if params is None:
        params = {}
    if isinstance(params, list):
        if len(params) > len(fields):
            raise InvalidParams(f"Invalid params: expected at most {len(fields)} positional params")
        params = {f.name: value for f, value in zip(fields, params)}
    if not isinstance(params, dict):
        raise InvalidParams("Invalid params: params must be an object or an array")
    known = {f.name for f in fields}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidParams(f"Invalid params: unknown parameter {unknown[0]!r}", {"param": unknown[0]})
    hints = _hints(cls)
    values: Dict[str, Any] = {}
    for f in fields:
        if f.name not in params:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InvalidParams(
                    f"Invalid params: missing required parameter {f.name!r}", {"param": f.name}
                )
            continue
        values[f.name] = _check(f.name, params[f.name], hints[f.name], f.metadata)
    return cls(**values)


_HINT_CACHE: Dict[type, Dict[str, Any]] = {}


def _hints(cls: type) -> Dict[str, Any]:
    hints = _HINT_CACHE.get(cls)
    if hints is None:
        module = sys.modules[cls.__module__]
        hints = typing.get_type_hints(cls, vars(module))
        _HINT_CACHE[cls] = hints
    return hints


def _fail(name: str, expected: str, value: Any) -> InvalidParams:
    return InvalidParams(
        f"Invalid params: {name!r} must be {expected}, got {_json_type(value)}", {"param": name}
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check(name: str, value: Any, hint: Any, meta: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None and _NoneType in args:
            return None
        inner = [a for a in args if a is not _NoneType]
        if len(inner) > 1:
            return _check_any_of(name, value, inner, meta)
        hint = inner[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    checker = _CHECKERS.get(origin or hint)
    if checker is None:
        return value
    return checker(name, value, args, meta)


def _check_any_of(name: str, value: Any, hints: List[Any], meta: Any) -> Any:
    """The first union member *value* fits; the error lists them all."""
    for hint in hints:
        try:
            return _check(name, value, hint, meta)
        except InvalidParams:
            continue
    names = " or ".join(getattr(h, "__name__", str(h)) for h in hints)
    raise InvalidParams(f"Invalid params: {name!r} must be {names}, got {_json_type(value)}", {"param": name})


def _check_str(name: str, value: Any, _args: Tuple[Any, ...], meta: Any) -> str:
    if not isinstance(value, str):
        raise _fail(name, "a string", value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON can escape a lone surrogate; it is not text, and exec/open would choke on it.
        raise InvalidParams(f"Invalid params: {name!r} is not valid Unicode", {"param": name}) from None
    _check_len(name, value, meta)
    if meta.get("nonempty") and not value:
        raise InvalidParams(f"Invalid params: {name!r} must not be empty", {"param": name})
    pattern = meta.get("pattern")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise InvalidParams(f"Invalid params: {name!r} must match {pattern}", {"param": name})
    return value


def _check_int(name: str, value: Any, _args: Tuple[Any, ...], meta: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(name, "an integer", value)
    _check_range(name, value, meta)
    return value


def _check_float(name: str, value: Any, _args: Tuple[Any, ...], meta: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _fail(name, "a number", value)
    try:
        number = float(value)  # an int beyond the float range raises OverflowError
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidParams(f"Invalid params: {name!r} must be a finite number", {"param": name})
    _check_range(name, number, meta)
    return number


def _check_bool(name: str, value: Any, _args: Tuple[Any, ...], _meta: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, "a boolean", value)
    return value


def _check_list(name: str, value: Any, args: Tuple[Any, ...], meta: Any) -> List[Any]:
    if not isinstance(value, list):
        raise _fail(name, "an array", value)
    _check_len(name, value, meta)
    item = args[0] if args else Any
    return [_check(f"{name}[{i}]", v, item, {}) for i, v in enumerate(value)]


def _check_dict(name: str, value: Any, args: Tuple[Any, ...], meta: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(name, "an object", value)
    _check_len(name, value, meta)
    item = args[1] if len(args) == 2 else Any
    return {k: _check(f"{name}.{k}", v, item, {}) for k, v in value.items()}


def _check_len(name: str, value: Any, meta: Any) -> None:
    limit = meta.get("max_len")
    if limit is not None and len(value) > limit:
        raise InvalidParams(f"Invalid params: {name!r} is longer than {limit}", {"param": name})


def _check_range(name: str, value: float, meta: Any) -> None:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and value < low:
        raise InvalidParams(f"Invalid params: {name!r} must be >= {low}", {"param": name})
    if high is not None and value > high:
        raise InvalidParams(f"Invalid params: {name!r} must be <= {high}", {"param": name})


_CHECKERS: Dict[Any, Callable[[str, Any, Tuple[Any, ...], Any], Any]] = {
    str: _check_str,
    int: _check_int,
    float: _check_float,
    bool: _check_bool,
    list: _check_list,
    dict: _check_dict,
}


def constrained(
    default: Any = dataclasses.MISSING,
    *,
    min: Optional[float] = None,
    max: Optional[float] = None,
    max_len: Optional[int] = None,
    nonempty: bool = False,
    pattern: Optional[str] = None,
    factory: Optional[Callable[[], Any]] = None,
) -> Any:
    """A dataclass field with validation limits that :func:`bind` enforces."""
    meta = {"min": min, "max": max, "max_len": max_len, "nonempty": nonempty, "pattern": pattern}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
