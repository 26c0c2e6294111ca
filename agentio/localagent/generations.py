"""The agent API generation the local agent speaks on the wire.

Layer: local agent. :class:`~.service.KataService` is written once, against the current
generation's messages (:mod:`agentio.proto.kata`). A :class:`Wire` sits between it and the
bytes: :data:`CURRENT` parses and serialises those classes as they are; :data:`KATA1`
parses a request with the Kata 1.x classes (:mod:`agentio.proto.kata1`), carries it over to
the current class of the same name field by field (by name, so the renumbered seccomp fields
land where they belong; fields one side lacks are dropped), and carries the reply back the
same way. Messages only 1.x has (ListProcesses) go through untouched.
"""

from __future__ import annotations

from types import ModuleType
from typing import Final, TypeVar

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
        return convert(self._counterpart(cls).parse(payload), cls)

    def encode(self, message: betterproto2.Message) -> bytes:
        """``message`` in this generation's encoding."""
        if self._identity or self.owns(type(message)):
            return bytes(message)
        return bytes(convert(message, self._counterpart(type(message))))

    def _counterpart(self, cls: type[betterproto2.Message]) -> type[betterproto2.Message]:
        module = self._empty if cls is pb_empty.Empty else self._messages
        found = getattr(module, cls.__name__, None)
        if not (isinstance(found, type) and issubclass(found, betterproto2.Message)):
            raise LookupError(f"{self.name} has no message {cls.__name__}")
        return found


def convert(message: betterproto2.Message, target: type[M]) -> M:
    """``message`` as a ``target`` message: fields matched by name, the others dropped."""
    return target.from_dict(message.to_dict(), ignore_unknown_fields=True)


CURRENT: Final = Wire("kata", pb, pb_empty)
"""Kata 2.x and later (ttrpc)."""
KATA1: Final = Wire("kata1", pb1, pb1_empty)
"""Kata 1.x (gRPC)."""
