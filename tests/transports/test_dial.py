"""dial(): unix and hybrid vsock against real unix sockets, budgets, retries, cancellation."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentio.errors import AgentTimeout, ConfigError, DialError, HandshakeError
from agentio.transports import Address, DialPolicy, HandshakeClosed, default_socket_factory, dial

FAST = DialPolicy(budget=2.0, attempt_timeout=1.0, backoff_initial=0.005, backoff_max=0.02)


async def recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        assert chunk, "peer closed early"
        data += chunk
    return data


# --- policy ------------------------------------------------------------------------------


def test_policy_defaults() -> None:
    policy = DialPolicy()
    assert policy.budget == 30.0
    assert policy.attempt_timeout == 5.0
    assert policy.backoff_initial == 0.05 and policy.backoff_max == 1.0


def test_backoff_doubles_to_max_with_bounded_jitter() -> None:
    policy = DialPolicy(backoff_jitter=0.0)
    assert [policy.backoff(n, 0.5) for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    jittery = DialPolicy(backoff_jitter=0.1)
    assert 0.9 <= jittery.backoff(100, 0.999) <= 1.0
    assert jittery.backoff(10**6, 0.0) == 1.0  # no overflow on absurd attempt counts


@pytest.mark.parametrize(
    "kwargs",
    [
        {"budget": 0},
        {"budget": float("inf")},
        {"attempt_timeout": -1},
        {"backoff_initial": 0},  # would be a tight loop
        {"backoff_max": 0.01},
        {"backoff_jitter": 1.0},
        {"handshake_timeout": float("nan")},
        {"handshake_max_line": 3},
    ],
)
def test_policy_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DialPolicy(**kwargs)


# --- plain unix --------------------------------------------------------------------------


async def test_dial_unix(sock_dir: Path) -> None:
    path = sock_dir / "agent.sock"
    accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hi")
        await writer.drain()
        accepted.set_result(None)
        writer.close()

    server = await asyncio.start_unix_server(on_client, path=str(path))
    async with server:
        dialed = await dial(f"unix://{path}", FAST)
        with dialed.sock:
            assert not dialed.sock.getblocking()
            assert dialed.initial_data == b"" and dialed.attempts == 1
            assert await recv_exactly(dialed.sock, 2) == b"hi"
        await accepted


async def test_dial_abstract_unix(sock_dir: Path) -> None:
    name = f"agentio-test-{os.getpid()}-{sock_dir.name}"
    server = await asyncio.start_unix_server(lambda r, w: w.close(), path="\0" + name)
    async with server:
        dialed = await dial(Address.unix("@" + name), FAST)
        dialed.sock.close()
        assert dialed.attempts == 1


async def test_missing_socket_retried_until_budget(sock_dir: Path, recorder: Any) -> None:
    policy = DialPolicy(budget=0.2, backoff_initial=0.01, backoff_max=0.02)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DialError) as info:
        await dial(Address.unix(str(sock_dir / "absent.sock")), policy, socket_factory=recorder)
    # It gave up only when the next backoff (<= 0.02 s) would overrun the budget; uvloop's
    # clock has millisecond resolution.
    assert loop.time() - start >= 0.2 - 0.02 - 0.005
    assert isinstance(info.value.__cause__, FileNotFoundError)
    attempts = len(recorder.sockets)
    assert attempts >= 5
    assert f"{attempts} attempt(s)" in str(info.value)
    assert str(sock_dir / "absent.sock") in str(info.value)
    assert recorder.all_closed()


async def test_budget_below_one_backoff_still_makes_one_attempt(
    sock_dir: Path, recorder: Any
) -> None:
    policy = DialPolicy(budget=0.01, backoff_initial=5.0, backoff_max=5.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DialError, match="1 attempt"):
        await dial(Address.unix(str(sock_dir / "absent.sock")), policy, socket_factory=recorder)
    assert loop.time() - start < 1.0  # did not sleep the backoff
    assert len(recorder.sockets) == 1 and recorder.all_closed()


async def test_socket_appearing_later_is_reached(sock_dir: Path) -> None:
    path = sock_dir / "late.sock"
    first_attempt = asyncio.Event()
    attempts = 0

    def factory(address: Address) -> socket.socket:
        nonlocal attempts
        attempts += 1
        first_attempt.set()
        return default_socket_factory(address)

    dialing = asyncio.create_task(dial(Address.unix(str(path)), FAST, socket_factory=factory))
    # The connect that follows the factory call fails synchronously (no file yet), so once we
    # run again the first attempt is over.
    await first_attempt.wait()
    server = await asyncio.start_unix_server(lambda r, w: w.close(), path=str(path))
    async with server:
        dialed = await dialing
        dialed.sock.close()
    assert dialed.attempts == attempts >= 2


async def test_refused_is_retried(sock_dir: Path, recorder: Any) -> None:
    path = sock_dir / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays; nobody listens: ECONNREFUSED
    policy = DialPolicy(budget=0.1, backoff_initial=0.01, backoff_max=0.01)
    with pytest.raises(DialError) as info:
        await dial(Address.unix(str(path)), policy, socket_factory=recorder)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert len(recorder.sockets) > 1 and recorder.all_closed()


async def test_not_a_directory_fails_at_once(sock_dir: Path, recorder: Any) -> None:
    (sock_dir / "file").write_bytes(b"")
    with pytest.raises(DialError, match="not retryable") as info:
        await dial(Address.unix(str(sock_dir / "file" / "s")), FAST, socket_factory=recorder)
    assert isinstance(info.value.__cause__, NotADirectoryError)
    assert len(recorder.sockets) == 1 and recorder.all_closed()


async def test_permission_denied_fails_at_once() -> None:
    calls = []

    def factory(address: Address) -> socket.socket:
        calls.append(address)
        raise PermissionError(13, "Permission denied")

    with pytest.raises(DialError, match="1 attempt") as info:
        await dial(Address.vsock(3, 1024), FAST, socket_factory=factory)
    assert isinstance(info.value.__cause__, PermissionError)
    assert len(calls) == 1


async def test_bad_address_string_is_config_error() -> None:
    with pytest.raises(ConfigError):
        await dial("vsock://three:1024")


# --- hybrid vsock ------------------------------------------------------------------------


async def test_hvsock_ok_then_echo(fake_vmm: Callable[..., Any]) -> None:
    vmm = await fake_vmm(["ok"])
    dialed = await dial(vmm.address, FAST)
    with dialed.sock:
        assert dialed.host_port == 1234
        assert dialed.initial_data == b""
        assert vmm.requests == [b"CONNECT 1024\n"]
        await asyncio.get_running_loop().sock_sendall(dialed.sock, b"ping")
        assert await recv_exactly(dialed.sock, 4) == b"ping"


async def test_hvsock_payload_with_ok_line_is_initial_data(fake_vmm: Callable[..., Any]) -> None:
    vmm = await fake_vmm(["payload"])
    dialed = await dial(vmm.address, FAST)
    dialed.sock.close()
    assert dialed.initial_data == b"HELLO"


async def test_hvsock_silent_vmm_times_out_retries_then_fails(
    fake_vmm: Callable[..., Any], recorder: Any
) -> None:
    vmm = await fake_vmm(default="silent")
    policy = DialPolicy(budget=0.3, handshake_timeout=0.05, backoff_initial=0.01, backoff_max=0.01)
    with pytest.raises(DialError, match="budget spent") as info:
        await dial(vmm.address, policy, socket_factory=recorder)
    assert isinstance(info.value.__cause__, AgentTimeout)
    assert "no reply to CONNECT 1024" in str(info.value)
    assert len(recorder.sockets) >= 2
    # The VMM may not have logged the very last CONNECT yet; all earlier ones it has.
    assert len(recorder.sockets) - 1 <= len(vmm.requests) <= len(recorder.sockets)
    assert recorder.all_closed()


@pytest.mark.parametrize("closes", [1, 3])
async def test_hvsock_vmm_closing_is_retried(
    fake_vmm: Callable[..., Any], recorder: Any, closes: int
) -> None:
    vmm = await fake_vmm(["close"] * closes)
    dialed = await dial(vmm.address, FAST, socket_factory=recorder)
    dialed.sock.close()
    assert dialed.attempts == closes + 1
    assert len(vmm.requests) == closes + 1
    assert all(request == b"CONNECT 1024\n" for request in vmm.requests)


async def test_hvsock_always_closing_ends_with_handshake_closed(
    fake_vmm: Callable[..., Any],
) -> None:
    vmm = await fake_vmm(default="close")
    policy = DialPolicy(budget=0.1, backoff_initial=0.01, backoff_max=0.01)
    with pytest.raises(DialError) as info:
        await dial(vmm.address, policy)
    # Depending on timing the client sees EOF or a reset: both mean "VMM hung up". The budget
    # may also run out during the last attempt's reply wait, which then ends as a timeout.
    assert isinstance(info.value.__cause__, HandshakeClosed | ConnectionError | AgentTimeout)
    assert "budget spent" in str(info.value)
    assert len(vmm.requests) > 1


@pytest.mark.parametrize(
    ("action", "message"), [("garbage", "bad reply"), ("endless", "longer than")]
)
async def test_hvsock_bad_reply_is_not_retried(
    fake_vmm: Callable[..., Any], recorder: Any, action: str, message: str
) -> None:
    vmm = await fake_vmm(default=action)
    with pytest.raises(DialError, match="not retryable") as info:
        await dial(vmm.address, FAST, socket_factory=recorder)
    cause = info.value.__cause__
    assert isinstance(cause, HandshakeError) and not isinstance(cause, HandshakeClosed)
    assert message in str(cause)
    assert len(str(info.value)) < 400
    assert len(vmm.requests) == 1 and recorder.all_closed()


# --- cancellation ------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_cancel_during_handshake_closes_socket(
    fake_vmm: Callable[..., Any], recorder: Any
) -> None:
    vmm = await fake_vmm(default="silent")
    before = open_fds()
    dialing = asyncio.create_task(dial(vmm.address, socket_factory=recorder))
    await vmm.connected.wait()
    dialing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dialing
    assert len(recorder.sockets) == 1 and recorder.all_closed()
    await vmm.stop()  # the server's side of the connection is the only other new fd
    assert open_fds() <= before


async def test_cancel_during_backoff(sock_dir: Path, recorder: Any) -> None:
    policy = DialPolicy(backoff_initial=10.0, backoff_max=10.0)
    first_attempt = asyncio.Event()

    def factory(address: Address) -> socket.socket:
        first_attempt.set()
        sock: socket.socket = recorder(address)
        return sock

    dialing = asyncio.create_task(
        dial(Address.unix(str(sock_dir / "absent.sock")), policy, socket_factory=factory)
    )
    await first_attempt.wait()  # the attempt fails synchronously; dial is now in its backoff
    dialing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dialing
    assert len(recorder.sockets) == 1 and recorder.all_closed()


# --- vsock with an injected socket -------------------------------------------------------


async def test_vsock_uses_factory_socket_as_is() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    seen: list[Address] = []

    def factory(address: Address) -> socket.socket:
        seen.append(address)
        return ours

    with theirs:
        dialed = await dial("vsock://3:1024", FAST, socket_factory=factory)
        assert dialed.sock is ours and seen == [Address.vsock(3, 1024)]
        theirs.sendall(b"x")
        assert await recv_exactly(ours, 1) == b"x"
        ours.close()


async def test_vsock_factory_unsupported_family_fails_at_once() -> None:
    def factory(address: Address) -> socket.socket:
        raise OSError(97, "Address family not supported by protocol")

    with pytest.raises(DialError, match="not retryable"):
        await dial(Address.vsock(3, 1024), FAST, socket_factory=factory)
