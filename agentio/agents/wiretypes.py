"""Check that a parsed protobuf message holds the Python types its fields declare.

Layer: agents (helper of the call path). betterproto2 does not check wire types: a ``bytes``
field sent as a varint parses as an ``int``, an ``int32`` sent length-delimited parses as a
packed list, a message sent as a varint stays an ``int``. Such a value would crash whatever
uses it far from the call that received it, so every parsed response is checked here once,
against the generated field metadata, and a mismatch is reported by the caller as a malformed
response.

The check for each message class is built once from its metadata and cached; checking a small
message costs a few attribute reads and ``type()`` comparisons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import betterproto2

_Check = Callable[[Any], str | None]
"""Returns None when the value is acceptable, else a short description of what is wrong."""

_SCALARS: dict[str, type] = {
    betterproto2.TYPE_BOOL: bool,
    betterproto2.TYPE_STRING: str,
    betterproto2.TYPE_BYTES: bytes,
    betterproto2.TYPE_FLOAT: float,
    betterproto2.TYPE_DOUBLE: float,
    **{name: int for name in betterproto2.ALL_INT_TYPES},
}

_MESSAGE_CHECKS: dict[type, list[tuple[str, _Check]]] = {}


class WireTypeError(ValueError):
    """A field of a parsed message holds a value of the wrong type (a wrong wire type)."""


def check_message(message: betterproto2.Message) -> None:
    """Raise :class:`WireTypeError` naming the field if any field has the wrong Python type."""
    problem = _check_fields(message)
    if problem is not None:
        raise WireTypeError(f"{type(message).__name__}.{problem}")


def _check_fields(message: Any) -> str | None:
    checks = _MESSAGE_CHECKS.get(type(message))
    if checks is None:
        checks = _MESSAGE_CHECKS[type(message)] = _build(type(message))
    for name, check in checks:
        problem = check(getattr(message, name))
        if problem is not None:
            return f"{name}{problem}"
    return None


def _build(cls: Any) -> list[tuple[str, _Check]]:
    meta: betterproto2.ProtoClassMetadata = cls._betterproto
    checks: list[tuple[str, _Check]] = []
    for name, field in meta.meta_by_field_name.items():
        if field.proto_type == betterproto2.TYPE_MAP:
            assert field.map_meta is not None
            entry: Any = meta.cls_by_field[name]
            key = _single(field.map_meta[0], None)
            value = _single(field.map_meta[1], entry._betterproto.cls_by_field.get("value"))
            check = _map_of(key, value)
        else:
            check = _single(field, meta.cls_by_field.get(name))
            if field.repeated:
                check = _list_of(check, _SCALARS.get(field.proto_type))
            elif field.optional or field.proto_type == betterproto2.TYPE_MESSAGE:
                check = _or_none(check)
        checks.append((name, check))
    return checks


def _single(field: betterproto2.FieldMetadata, cls: type | None) -> _Check:
    if field.proto_type == betterproto2.TYPE_MESSAGE and field.unwrap is None:
        assert cls is not None
        return _message(cls)
    if field.proto_type == betterproto2.TYPE_MESSAGE:
        return _anything  # a well-known wrapper, already its plain value: nothing to tell by
    if field.proto_type == betterproto2.TYPE_ENUM:
        assert cls is not None
        return _instance(cls)
    return _exact(_SCALARS[field.proto_type])


def _describe(value: Any) -> str:
    return f": {type(value).__name__} where the field's type needs another (wrong wire type)"


def _exact(expected: type) -> _Check:
    def check(value: Any) -> str | None:
        return None if type(value) is expected else _describe(value)
    return check


def _instance(expected: type) -> _Check:
    def check(value: Any) -> str | None:
        return None if isinstance(value, expected) else _describe(value)
    return check


def _message(cls: type) -> _Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, cls):
            return _describe(value)
        problem = _check_fields(value)
        return None if problem is None else f".{problem}"
    return check


def _anything(value: Any) -> str | None:
    return None


def _or_none(check: _Check) -> _Check:
    def optional(value: Any) -> str | None:
        return None if value is None else check(value)
    return optional


def _list_of(check: _Check, scalar: type | None) -> _Check:
    def each(value: Any) -> str | None:
        if type(value) is not list:
            return _describe(value)
        if scalar is not None and all(type(item) is scalar for item in value):
            return None  # the common large case, in one quick pass
        for index, item in enumerate(value):
            problem = check(item)
            if problem is not None:
                return f"[{index}]{problem}"
        return None
    return each


def _map_of(key: _Check, value: _Check) -> _Check:
    def entries(mapping: Any) -> str | None:
        if type(mapping) is not dict:
            return _describe(mapping)
        for k, v in mapping.items():
            problem = key(k) or value(v)
            if problem is not None:
                return f"[{k!r}]{problem}"
        return None
    return entries
