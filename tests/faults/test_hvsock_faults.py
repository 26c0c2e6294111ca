"""Case 5: a hybrid-vsock VMM that answers ``CONNECT`` with an endless line or with garbage.

The VMM is a :class:`~agentio.testing.FaultProxy` with ``vmm_port`` (it reads ``CONNECT
<port>`` and replies ``OK <n>``, then forwards to a local agent); the handshake faults replace
or bend that reply. Whatever it sends, dialing ends in a typed error within the handshake
bound, having read at most one line's worth of bytes per attempt, and leaves nothing open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

import agentio
from agentio.errors import ConfigError, DialError, HandshakeError
from agentio.localagent import LocalAgent
from agentio.testing import (
    Corrupt,
    Delay,
    Direction,
    Endless,
    Fault,
    FaultProxy,
    LeakCheck,
    Truncate,
)
from agentio.transports import DialPolicy, connect
from agentio.transports.hvsock import DEFAULT_MAX_LINE, HandshakeClosed

PORT = 1024
POLICY = DialPolicy(budget=1.0, attempt_timeout=0.5, handshake_timeout=0.3)
# generous bounds where the error must come from the reply itself, not from a bound running
# out on a loaded machine
PATIENT = DialPolicy(budget=20.0, attempt_timeout=10.0, handshake_timeout=10.0)
ProxyFactory = Callable[..., Awaitable[FaultProxy]]


def _handshake(fault: type[Fault], **kwargs: object) -> Fault:
    return fault(direction=Direction.TO_CLIENT, handshake=True, count=None,
                 **kwargs)  # type: ignore[arg-type]


REFUSED = [
    pytest.param(_handshake(Endless, pattern=b"x" * 4096, max_bytes=64 << 20), id="endless-x"),
    pytest.param(_handshake(Endless, pattern=b"OK 1", max_bytes=64 << 20), id="endless-ok"),
    pytest.param(_handshake(Endless, pattern=b"9" * 4096, max_bytes=64 << 20),
                 id="endless-digits"),
    pytest.param(_handshake(Endless, pattern=b"\n", max_bytes=64 << 20), id="endless-newlines"),
    pytest.param(_handshake(Corrupt, offsets=(0,)), id="garbage-first-byte"),
    pytest.param(_handshake(Corrupt, offsets=(-2,), xor=0x20), id="garbage-digit"),
    pytest.param(_handshake(Corrupt, offsets=(2,), xor=0x2A), id="garbage-separator"),
]


async def _dial_fails(address: str, policy: DialPolicy = POLICY) -> BaseException:
    with pytest.raises(DialError) as caught:
        transport, _ = await connect(address, lambda: asyncio.Protocol(), policy)
        transport.close()
    return caught.value


@pytest.mark.parametrize("fault", REFUSED)
async def test_garbage_or_endless_reply_is_a_bounded_handshake_error(
    local_agent: LocalAgent, make_proxy: ProxyFactory, fault: Fault
) -> None:
    upstream = await local_agent.serve()
    vmm = await make_proxy(upstream, framing="raw", vmm_port=PORT, host_port=1073741824)
    vmm.inject(fault)
    leaks = LeakCheck.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    error = await _dial_fails(vmm.address, PATIENT)
    assert loop.time() - started < PATIENT.handshake_timeout  # refused, not timed out
    assert isinstance(error.__cause__, HandshakeError)
    assert not isinstance(error.__cause__, HandshakeClosed)
    assert vmm.accepted == 1  # a malformed reply is final: no retry loop
    await leaks.assert_clean()


@pytest.mark.parametrize("fault", [
    pytest.param(_handshake(Truncate, keep=3), id="truncated-then-closed"),
    pytest.param(_handshake(Delay, seconds=5.0), id="never-in-time"),
])
async def test_short_or_slow_reply_is_retried_within_the_budget_only(
    local_agent: LocalAgent, make_proxy: ProxyFactory, fault: Fault
) -> None:
    """A VMM that closes early (guest not listening yet) or answers too slowly is retried
    with backoff, and the dial gives up when its budget is spent: bounded, never a tight
    loop."""
    upstream = await local_agent.serve()
    vmm = await make_proxy(upstream, framing="raw", vmm_port=PORT)
    vmm.inject(fault)
    leaks = LeakCheck.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    error = await _dial_fails(vmm.address)
    elapsed = loop.time() - started
    assert elapsed < POLICY.budget + 0.5
    assert "budget spent" in str(error)
    # each attempt waited for its reply or backed off: at most budget / (first backoff)
    assert 1 <= vmm.accepted <= POLICY.budget / POLICY.backoff_initial
    await vmm.kill()  # the proxy's own half of a slow reply
    await leaks.assert_clean()


async def test_a_good_reply_after_the_faults_are_gone_connects(
    local_agent: LocalAgent, make_proxy: ProxyFactory
) -> None:
    """The same VMM without faults: the harness itself is not what makes the dials fail."""
    upstream = await local_agent.serve()
    vmm = await make_proxy(upstream, framing="raw", vmm_port=PORT)
    transport, _ = await connect(vmm.address, lambda: asyncio.Protocol(), POLICY)
    transport.close()
    assert vmm.accepted == 1


@pytest.mark.parametrize("line", [5, 8, 14])
async def test_the_handshake_line_limit_is_configuration(
    local_agent: LocalAgent, make_proxy: ProxyFactory, line: int
) -> None:
    """``Limits.handshake_line`` reaches the dialer: a reply of exactly that many bytes
    connects, one a byte longer is refused as a HandshakeError."""
    upstream = await local_agent.serve()
    limits = agentio.Limits(handshake_line=line)
    config = {"dial_timeout": 20.0, "handshake_timeout": 10.0}  # the reply decides
    digits = line - len(b"OK \n")  # "OK <digits>\n"
    fits = await make_proxy(upstream, framing="raw", vmm_port=PORT, host_port=int("1" * digits))
    too_long = await make_proxy(upstream, framing="raw", vmm_port=PORT,
                                host_port=int("1" * (digits + 1)))
    async with agentio.open_agent(fits.address, config=config, limits=limits) as agent:
        await agent.check(timeout=5)
    async with agentio.open_agent(too_long.address, config=config, limits=limits) as agent:
        with pytest.raises(DialError) as caught:
            await agent.check(timeout=5)
    assert isinstance(caught.value.__cause__, HandshakeError)
    assert f"longer than {line} bytes" in str(caught.value.__cause__)


def test_handshake_line_default_and_validation() -> None:
    assert agentio.Limits().handshake_line == DEFAULT_MAX_LINE
    with pytest.raises(ConfigError):
        agentio.Limits(handshake_line=4)
