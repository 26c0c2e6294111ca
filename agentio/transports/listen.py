"""Private unix listening sockets for the local servers (never a network port).

Layer: transports. Imports only :mod:`agentio.errors`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from agentio.errors import ConfigError


def bind_private_unix(path: str) -> tuple[socket.socket, int]:
    """A unix stream socket bound at ``path`` with mode 0600, and the socket file's inode.

    Not listening yet: hand it to ``loop.create_unix_server(..., sock=sock)``. A stale
    socket file at ``path`` is replaced; any other file is refused. The privacy of the parent
    directory is the caller's job.
    """
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # chmod before listen(): until then nobody can connect, so there is no window in
        # which the socket is reachable with the umask's mode
        os.chmod(path, 0o600)
        inode = os.stat(path).st_ino
    except BaseException:
        sock.close()
        raise
    return sock, inode


def unlink_own_socket(path: str, inode: int) -> None:
    """Remove the socket file at ``path`` if it is still ours (not a successor's)."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket")
    os.unlink(path)
