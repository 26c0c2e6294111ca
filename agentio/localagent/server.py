"""The local agent server: independent agents on private unix sockets, one per "VM".

Layer: local agent. Each socket gets its own :class:`~.service.KataService` (its own sandbox
state), as each VM runs its own agent. Sockets live in a directory only the current user can
enter (mode 0700) and are themselves mode 0600: the agent runs host processes for whoever
reaches it. It never listens on a network port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Literal

from ..errors import ConfigError
from ..lifecycle import Closing
from ..protocols.grpc.server import GrpcServer
from ..protocols.ttrpc import TtrpcServer
from ..protocols.ttrpc.server import WireStyle
from ..transports.yamux.session import YamuxConfig
from .generations import CURRENT, KATA1
from .service import EofStyle, KataService

log = logging.getLogger(__name__)


def private_directory(path: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """A directory only we can enter: ``path`` after checking it, or a new temporary one.

    Returns the directory and whether we created it (and so should remove it).
    """
    if path is None:
        return Path(tempfile.mkdtemp(prefix="agentio-")), True
    directory = Path(path)
    created = not directory.exists()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(f"{directory} must be owned by uid {os.getuid()} with mode 0700 "
                          f"(it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})")
    return directory, created


class LocalAgent(Closing):
    """Serves the Kata agent API from host processes on one or more unix sockets.

    Args:
        directory: where sockets and guest roots go; created private if missing, checked if
            present; a temporary directory when ``None`` (removed on :meth:`close`).
        wire_style: ``"rust"`` answers like the Kata 2.x+ agent (explicit OK status),
            ``"go"`` like a Go ttrpc server.
        eof_style: how the end of output is said: ``"empty"`` (Kata >= 3.27), ``"error"``
            (INTERNAL "read meet eof", older agents) or ``"unknown"`` (UNKNOWN "EOF", 1.x);
            by default the agent generation's own form.
        drain_timeout: how long WaitProcess lets readers drain output after the exit.
        agent: ``"kata"`` serves the current API over ttrpc; ``"kata1"`` the Kata 1.x API
            over gRPC (``wire_style`` does not apply).
        yamux: with ``agent="kata1"``, run a yamux session (server role) on each connection
            and HTTP/2 on every stream, as the 1.x agent does on its serial port; clients then
            need ``config={"yamux": True}`` (the default for ``unix://`` addresses).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        wire_style: WireStyle = "rust",
        eof_style: EofStyle | None = None,
        drain_timeout: float = 2.0,
        agent: Literal["kata", "kata1"] = "kata",
        yamux: bool = False,
    ) -> None:
        if agent not in ("kata", "kata1"):
            raise ConfigError(f"the local agent serves kata or kata1, not {agent!r}")
        if yamux and agent != "kata1":
            raise ConfigError("yamux is only served with agent='kata1'")
        self.directory, self._owns_directory = private_directory(directory)
        self.agent = agent
        self.yamux = yamux
        self.wire_style: WireStyle = wire_style
        self.eof_style: EofStyle = eof_style or ("unknown" if agent == "kata1" else "empty")
        self.drain_timeout = drain_timeout
        self._agents: list[tuple[TtrpcServer | GrpcServer, KataService]] = []
        self.addresses: list[str] = []

    def __repr__(self) -> str:
        return f"<LocalAgent {self.agent} {self.directory} sockets={len(self.addresses)}>"

    @property
    def servers(self) -> list[TtrpcServer | GrpcServer]:
        """The protocol server of each agent, in :attr:`addresses` order."""
        return [server for server, _ in self._agents]

    def client_settings(self) -> tuple[str, dict[str, bool] | None]:
        """The agent type and config a client passes to reach these agents."""
        if self.agent == "kata1":
            return "kata1", {"yamux": self.yamux}
        return "kata", None

    async def serve(self, name: str | None = None) -> str:
        """Start one more agent on a new socket; its address (``unix:///…``)."""
        index = len(self._agents)
        name = name or f"agent-{index}"
        if "/" in name or name in ("", ".", ".."):
            raise ConfigError(f"bad socket name {name!r}")
        path = self.directory / f"{name}.sock"
        guest_root = self.directory / f"{name}.guest"
        guest_root.mkdir(mode=0o700, exist_ok=True)
        service = KataService(guest_root=guest_root, eof_style=self.eof_style,
                              drain_timeout=self.drain_timeout)
        server: TtrpcServer | GrpcServer
        if self.agent == "kata1":
            server = GrpcServer()
            service.register(server, KATA1)
            await server.start_unix(str(path), yamux=YamuxConfig() if self.yamux else None)
        else:
            server = TtrpcServer(wire_style=self.wire_style)
            service.register(server, CURRENT)
            await server.start_unix(str(path))
        self._agents.append((server, service))
        address = f"unix://{path}"
        self.addresses.append(address)
        log.debug("local agent serving on %s", address)
        return address

    async def serve_many(self, count: int) -> list[str]:
        """Start ``count`` agents; their addresses."""
        return [await self.serve() for _ in range(count)]

    async def close(self) -> None:
        """Stop serving, kill every process the agents started, remove what we created."""
        agents, self._agents = self._agents, []
        for server, service in agents:
            await server.close()
            with contextlib.suppress(Exception):
                await service.close()
        self.addresses.clear()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

