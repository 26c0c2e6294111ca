"""The agent API generation the local agent speaks on the wire.

Layer: local agent. :class:`~.service.KataService` is written once, against the current
generation's messages (:mod:`agentio.proto.kata`). A :class:`Wire` sits between it and the
bytes: :data:`CURRENT` parses and serialises those classes as they are; :data:`KATA1`
parses a request with the Kata 1.x classes (:mod:`agentio.proto.kata1`), carries it over to
the current class of the same name field by field (by name, so the renumbered seccomp fields
land where they belong; fields one side lacks are dropped), and carries the reply back the
same way. Messages only 1.x has (ListProcesses) go through untouched, and so do the bytes of
messages whose two generations have the same layout throughout (most of them: Health.Check,
the stdio calls), which are parsed or sent as they are.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Final, TypeVar, cast

import betterproto2

from ..proto.kata import grpc as pb
from ..proto.kata.google import protobuf as pb_empty
from ..proto.kata1 import grpc as pb1
from ..proto.kata1.google import protobuf as pb1_empty

M = TypeVar("M", bound=betterproto2.Message)


class Wire:
    """How requests and replies of one generation become the service's messages and back."""

    def __init__(self, name: str, messages: ModuleType, empty: ModuleType) -> None:
        self.name = name
        self._messages = messages
        self._empty = empty
        self._native = (messages.__name__.rsplit(".", 1)[0] + ".")
        self._identity = messages is pb

    def __repr__(self) -> str:
        return f"<Wire {self.name}>"

    def owns(self, cls: type[betterproto2.Message]) -> bool:
        """Whether ``cls`` is one of this generation's own message classes."""
        return cls.__module__.startswith(self._native)

    def decode(self, cls: type[M], payload: bytes) -> M:
        """The request ``payload`` (this generation's encoding) as a ``cls`` message."""
        if self._identity or self.owns(cls):
            return cls.parse(payload)
        theirs = self._counterpart(cls)
        if same_layout(theirs, cls):
            return cls.parse(payload)
        return convert(theirs.parse(payload), cls)

    def encode(self, message: betterproto2.Message) -> bytes:
        """``message`` in this generation's encoding."""
        if self._identity or self.owns(type(message)):
            return bytes(message)
        theirs = self._counterpart(type(message))
        if same_layout(type(message), theirs):
            return bytes(message)
        return bytes(convert(message, theirs))

    def _counterpart(self, cls: type[betterproto2.Message]) -> type[betterproto2.Message]:
        module = self._empty if cls is pb_empty.Empty else self._messages
        found = getattr(module, cls.__name__, None)
        if not (isinstance(found, type) and issubclass(found, betterproto2.Message)):
            raise LookupError(f"{self.name} has no message {cls.__name__}")
        return found


def convert(message: betterproto2.Message, target: type[M]) -> M:
    """``message`` as a ``target`` message: fields matched by name, the others dropped."""
    return target.from_dict(message.to_dict(), ignore_unknown_fields=True)


@functools.cache
def same_layout(a: type[betterproto2.Message], b: type[betterproto2.Message]) -> bool:
    """Whether ``a`` and ``b`` have the same fields (names, numbers, types) all the way down,
    so that one's encoding parses as the other's without loss or surplus."""
    meta_a, meta_b = cast(Any, a)._betterproto, cast(Any, b)._betterproto
    if meta_a.meta_by_field_name.keys() != meta_b.meta_by_field_name.keys():
        return False
    for name, field_a in meta_a.meta_by_field_name.items():
        field_b = meta_b.meta_by_field_name[name]
        if (field_a.number, field_a.proto_type, field_a.repeated, field_a.optional,
                field_a.group) != (field_b.number, field_b.proto_type, field_b.repeated,
                                   field_b.optional, field_b.group):
            return False
        if field_a.proto_type == "map":
            return False  # not needed by the agent API's requests; convert by name instead
        if field_a.proto_type == "message":
            sub_a, sub_b = meta_a.cls_by_field[name], meta_b.cls_by_field[name]
            if sub_a is not sub_b and not same_layout(sub_a, sub_b):
                return False
    return True


CURRENT: Final = Wire("kata", pb, pb_empty)
"""Kata 2.x and later (ttrpc)."""
KATA1: Final = Wire("kata1", pb1, pb1_empty)
"""Kata 1.x (gRPC)."""
