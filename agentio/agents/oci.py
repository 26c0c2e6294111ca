"""OCI runtime-spec mappings → agent protobuf messages.

Layer: agents. Callers hand us OCI structures in their JSON shape (``config.json``: camelCase
keys such as ``noNewPrivileges``, ``uidMappings``, ``ociVersion``); Kata's messages name the
same fields in CapitalCase (``NoNewPrivileges``, ``UIDMappings``, ``Version``). Matching names
with case and underscores folded maps one onto the other for every generation's classes
without a hand-kept table. Fields the agent's spec lacks (``umask``, …) are dropped with a
debug log, as the Kata runtime does; a value of the wrong type is a :class:`ConfigError`
naming its path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

import betterproto2

from ..errors import ConfigError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=betterproto2.Message)

# OCI names whose folded form differs from the agent's field.
_ALIASES = {"ociversion": "version"}

_INT_TYPES = frozenset({"int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32",
                        "fixed64", "sfixed32", "sfixed64"})


def _fold(name: str) -> str:
    return name.replace("_", "").lower()


def from_oci(cls: type[M], data: Mapping[str, Any], path: str = "spec") -> M:
    """Build message ``cls`` from the OCI-shaped mapping ``data``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected an object, got {type(data).__name__}")
    meta: Any = getattr(cls, "_betterproto")  # noqa: B009 - its classproperty confuses mypy
    by_fold = {_fold(name): name for name in meta.meta_by_field_name}
    values: dict[str, Any] = {}
    for key, value in data.items():
        folded = _fold(str(key))
        name = by_fold.get(folded) or by_fold.get(_ALIASES.get(folded, ""))
        if name is None:
            log.debug("dropping %s.%s: the agent's spec has no such field", path, key)
            continue
        if value is None:
            continue
        values[name] = _field_value(meta, name, value, f"{path}.{key}")
    return cls(**values)


def _field_value(meta: Any, name: str, value: Any, path: str) -> Any:
    field = meta.meta_by_field_name[name]
    if field.proto_type == "map":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected an object, got {type(value).__name__}")
        value_meta = field.map_meta[1]
        value_cls = meta.cls_by_field.get(f"{name}.value")
        return {str(k): _single(value_meta.proto_type, value_cls, v, f"{path}.{k}")
                for k, v in value.items()}
    cls = meta.cls_by_field.get(name)
    if field.repeated:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_single(field.proto_type, cls, v, f"{path}[{i}]") for i, v in enumerate(value)]
    return _single(field.proto_type, cls, value, path)


def _single(proto_type: str, cls: Any, value: Any, path: str) -> Any:
    if proto_type == "message":
        return from_oci(cls, value, path)
    if proto_type == "string" and isinstance(value, str):
        return value
    if proto_type == "bool" and isinstance(value, bool):
        return value
    if proto_type in _INT_TYPES:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)  # proto3 JSON writes 64-bit integers as strings
    if proto_type in ("double", "float") and isinstance(value, int | float):
        return float(value)
    if proto_type == "bytes" and isinstance(value, bytes | bytearray):
        return bytes(value)
    if proto_type == "enum" and isinstance(value, int | str):
        return cls(value) if isinstance(value, int) else cls[value]
    raise ConfigError(f"{path}: expected {proto_type}, got {type(value).__name__} {value!r:.40}")
