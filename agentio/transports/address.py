"""Agent addresses: parse and print ``unix://``, ``vsock://`` and ``hvsock://`` URLs.

Layer: transports. Imports only :mod:`agentio.errors`.

Accepted forms (schemes are case-insensitive, everything else is literal — no percent-decoding):

- ``unix:///abs/path`` — an AF_UNIX socket on the filesystem;
- ``unix://@name`` — an abstract AF_UNIX socket (Linux), ``name`` without the leading NUL;
- ``vsock://CID:PORT`` — AF_VSOCK, both numbers decimal u32;
- ``hvsock:///abs/path/vmm.sock:PORT`` (or ``hvsock://@name:PORT``) — hybrid vsock as served by
  Firecracker and Cloud Hypervisor: the VMM's unix socket plus a ``CONNECT <PORT>`` handshake.
  The port is after the *last* colon, so the path itself may contain colons.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

from agentio.errors import ConfigError

Scheme = Literal["unix", "vsock", "hvsock"]

SCHEMES: tuple[Scheme, ...] = ("unix", "vsock", "hvsock")
U32_MAX = 2**32 - 1
# Linux sun_path is 108 bytes; a filesystem path needs a trailing NUL, an abstract name a
# leading one, so either way 107 bytes of name are usable.
SUN_PATH_MAX = 107

# ASCII digits only: int() would also take "+1", " 1", "1_0" and non-ASCII digits.
_DECIMAL = re.compile(r"[0-9]{1,10}")
_QUOTE_MAX = 80


@dataclass(frozen=True, slots=True)
class Address:
    """Where an agent listens. Build with :func:`parse_address` or the class methods.

    ``path`` is set for ``unix`` and ``hvsock`` (an absolute path, or ``@name`` for an abstract
    socket), ``cid`` only for ``vsock``, ``port`` for ``vsock`` and ``hvsock``. Instances are
    validated on construction, and ``parse_address(str(a)) == a`` for every instance.
    """

    scheme: Scheme
    path: str | None = None
    cid: int | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"unknown address scheme {self.scheme!r}")
        if self.scheme == "vsock":
            _check_u32("CID", self.cid)
            if self.path is not None:
                raise ConfigError("a vsock address has no path")
        else:
            _check_unix_path(self.path)
            if self.cid is not None:
                raise ConfigError(f"a {self.scheme} address has no CID")
        if self.scheme == "unix":
            if self.port is not None:
                raise ConfigError("a unix address has no port")
        else:
            _check_u32("port", self.port)

    @classmethod
    def unix(cls, path: str) -> Address:
        """A unix socket address (``path`` absolute, or ``@name`` for an abstract socket)."""
        return cls("unix", path=path)

    @classmethod
    def vsock(cls, cid: int, port: int) -> Address:
        """An AF_VSOCK address."""
        return cls("vsock", cid=cid, port=port)

    @classmethod
    def hvsock(cls, path: str, port: int) -> Address:
        """A hybrid vsock address: the VMM's unix socket and the guest port to ``CONNECT`` to."""
        return cls("hvsock", path=path, port=port)

    @property
    def is_abstract(self) -> bool:
        """True for an abstract unix socket (``@name``)."""
        return self.path is not None and self.path.startswith("@")

    def unix_sockaddr(self) -> str:
        """The argument to ``socket.connect`` for ``unix``/``hvsock`` (NUL-prefixed if abstract)."""
        if self.path is None:
            raise ConfigError(f"{self} has no unix socket path")
        return "\0" + self.path[1:] if self.is_abstract else self.path

    def __str__(self) -> str:
        if self.scheme == "vsock":
            return f"vsock://{self.cid}:{self.port}"
        if self.scheme == "hvsock":
            return f"hvsock://{self.path}:{self.port}"
        return f"unix://{self.path}"


def parse_address(url: str) -> Address:
    """Parse an address URL; raise :class:`~agentio.errors.ConfigError` naming the bad part."""
    if not isinstance(url, str):
        raise ConfigError(f"address must be a string, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"bad address {_quote(url)}: expected scheme://..., e.g. unix:///path")
    scheme = scheme.lower()
    try:
        if scheme == "unix":
            return Address("unix", path=rest)
        if scheme == "vsock":
            cid, port = _split_port(rest)
            return Address("vsock", cid=_parse_u32("CID", cid), port=port)
        if scheme == "hvsock":
            path, port = _split_port(rest)
            return Address("hvsock", path=path, port=port)
    except ConfigError as exc:
        raise ConfigError(f"bad address {_quote(url)}: {exc.message}") from None
    raise ConfigError(
        f"bad address {_quote(url)}: unknown scheme {_quote(scheme)}"
        " (expected unix, vsock or hvsock)"
    )


def _split_port(rest: str) -> tuple[str, int]:
    head, sep, port = rest.rpartition(":")
    if not sep:
        raise ConfigError("missing port (expected ...:PORT)")
    return head, _parse_u32("port", port)


def _parse_u32(what: str, text: str) -> int:
    if not text:
        raise ConfigError(f"missing {what}")
    if not _DECIMAL.fullmatch(text):
        raise ConfigError(f"{what} {_quote(text)} is not a decimal number of at most 10 digits")
    value = int(text)
    _check_u32(what, value)
    return value


def _check_u32(what: str, value: object) -> None:
    # bool is an int subclass; True as a port is a bug, not port 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, not {value!r}")
    if not 0 <= value <= U32_MAX:
        raise ConfigError(f"{what} {value} out of range 0..{U32_MAX}")


def _check_unix_path(path: object) -> None:
    if not isinstance(path, str) or not path:
        raise ConfigError("missing socket path (expected an absolute path or @name)")
    if "\0" in path:
        raise ConfigError("NUL character in socket path")
    if path.startswith("@"):
        name = path[1:]
        if not name:
            raise ConfigError("empty abstract socket name")
    elif not path.startswith("/"):
        raise ConfigError(f"socket path {_quote(path)} is relative (expected /... or @name)")
    else:
        name = path
    try:
        size = len(os.fsencode(name))
    except UnicodeError:
        raise ConfigError(f"socket path {_quote(path)} cannot be encoded") from None
    if size > SUN_PATH_MAX:
        raise ConfigError(
            f"socket path is {size} bytes, longer than sun_path allows ({SUN_PATH_MAX})"
        )


def _quote(text: str) -> str:
    """repr() of user text, cut short so a huge bogus address cannot flood a log line."""
    if len(text) > _QUOTE_MAX:
        return repr(text[:_QUOTE_MAX]) + "..."
    return repr(text)
