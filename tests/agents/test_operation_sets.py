"""Every operation of the agent interface, on the agents that need no guest to answer.

The table below names each operation once with arguments; a new operation added to
:class:`~agentio.agents.base.Agent` without a row here fails the first test.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import agentio
from agentio import errors
from agentio.agents import Agent, NoopAgent, ProcessSpec, SandboxSpec, open_agent

SPEC = SandboxSpec(sandbox_id="sb-1")
CALLS: dict[str, Callable[[Agent], Awaitable[Any]]] = {
    "check": lambda a: a.check(),
    "version": lambda a: a.version(),
    "disconnect": lambda a: a.disconnect(),
    "create_sandbox": lambda a: a.create_sandbox(SPEC),
    "start_sandbox": lambda a: a.start_sandbox(SPEC),
    "stop_sandbox": lambda a: a.stop_sandbox("sb-1"),
    "create_container": lambda a: a.create_container("c1", {"process": {"args": ["true"]}}),
    "start_container": lambda a: a.start_container("c1"),
    "stop_container": lambda a: a.stop_container("c1"),
    "pause_container": lambda a: a.pause_container("c1"),
    "resume_container": lambda a: a.resume_container("c1"),
    "update_container": lambda a: a.update_container("c1", {"cpu": {"shares": 2}}),
    "stats_container": lambda a: a.stats_container("c1"),
    "list_processes": lambda a: a.list_processes("c1"),
    "exec_process": lambda a: a.exec_process("c1", "e1", ProcessSpec(args=["true"])),
    "signal_process": lambda a: a.signal_process("c1", "e1", 15),
    "resize_tty": lambda a: a.resize_tty("c1", "e1", 24, 80),
    "write_stdin": lambda a: a.write_stdin("c1", "e1", b"abc"),
    "close_stdin": lambda a: a.close_stdin("c1", "e1"),
    "read_stdout": lambda a: a.read_stdout("c1", "e1", 100),
    "read_stderr": lambda a: a.read_stderr("c1", "e1", 100),
    "wait_process": lambda a: a.wait_process("c1", "e1"),
    "online_cpu_mem": lambda a: a.online_cpu_mem(2),
    "guest_details": lambda a: a.guest_details(),
    "copy_file": lambda a: a.copy_file("/etc/x", b"data"),
    "get_oom_event": lambda a: a.get_oom_event(timeout=0.01),
    "list_interfaces": lambda a: a.list_interfaces(),
    "list_routes": lambda a: a.list_routes(),
    "get_metrics": lambda a: a.get_metrics(),
}


def test_the_table_covers_every_operation() -> None:
    # mark_failed is the health monitor's lever on the agent, not an agent operation
    operations = {name for name, member in inspect.getmembers(Agent)
                  if inspect.iscoroutinefunction(member) and not name.startswith("_")}
    assert operations - {"mark_failed"} == set(CALLS)


# -- noop ------------------------------------------------------------------------------------

# what the runtime's noop agent answers: nothing, zero, empty (writes take every byte)
NOOP_RESULTS: dict[str, Any] = {
    "version": agentio.AgentVersion(agent_version="", api_version=""),
    "stats_container": agentio.ContainerStats(cpu_usage_ns=0, memory_usage_bytes=0, pids=0),
    "list_processes": b"", "read_stdout": b"", "read_stderr": b"", "write_stdin": 3,
    "wait_process": 0, "guest_details": {}, "list_interfaces": [], "list_routes": [],
    "get_metrics": "",
}


@pytest.mark.parametrize("operation", sorted(set(CALLS) - {"get_oom_event"}))
async def test_noop_succeeds_with_an_empty_result(operation: str) -> None:
    agent = open_agent(None, "noop")
    assert await CALLS[operation](agent) == NOOP_RESULTS.get(operation)


async def test_noop_has_no_oom_event_to_report() -> None:
    # a long poll with nothing to say: bounded by the caller, never a busy "" loop
    with pytest.raises(errors.AgentTimeout):
        await CALLS["get_oom_event"](NoopAgent())


async def test_noop_through_the_public_api() -> None:
    async with await agentio.Sandbox.create("", agent_type="noop") as sandbox:
        await sandbox.check()
        async with await sandbox.create_container("c1", ["sleep", "1000"]) as container:
            init = await container.start()
            proc = await container.exec(["cat"])
            assert await proc.communicate(b"x" * 5000) == (b"", b"")
            assert proc.returncode == 0
            await proc.send_signal(15)
            await proc.resize(10, 10)
            tty = await container.exec(["sh"], tty=True)
            assert await tty.stdout.read() == b""
            assert await tty.wait() == 0
            await container.pause()
            await container.resume()
            await container.update({})
            assert (await container.stats()).pids == 0
            assert await container.list_processes() == b""
            await sandbox.online_cpu_mem(4)
            await sandbox.copy_file("/x", b"y")
            await container.signal(9)
            assert await init.wait() == 0


# -- hyperstart: what it cannot do -----------------------------------------------------------

HYPERSTART_UNSUPPORTED = {
    "pause_container", "resume_container", "update_container", "stats_container",
    "list_processes", "guest_details", "copy_file", "get_oom_event", "list_interfaces",
    "list_routes", "get_metrics",
}


@pytest.mark.parametrize("operation", sorted(HYPERSTART_UNSUPPORTED))
async def test_hyperstart_refuses_what_it_cannot_do_without_touching_the_guest(
    operation: str,
) -> None:
    agent = open_agent("vsock://3:2718", "hyperstart", sandbox_id="sb-9")
    with pytest.raises(errors.UnsupportedOperation) as info:
        await CALLS[operation](agent)
    assert "not supported by hyperstart" in str(info.value)
    assert info.value.operation is not None and info.value.operation.startswith(operation)
    assert info.value.context["sandbox"] == "sb-9"
    assert not agent.client.started  # refused up front: nothing was dialled


async def test_hyperstart_refuses_sandbox_features_it_lacks() -> None:
    agent = open_agent("vsock://3:2718", "hyperstart")
    with pytest.raises(errors.UnsupportedOperation, match="cpu_only"):
        await agent.online_cpu_mem(2, cpu_only=True)
    for spec in (SandboxSpec(sandbox_id="s", kernel_modules=["m"]),
                 SandboxSpec(sandbox_id="s", guest_hook_path="/hooks"),
                 SandboxSpec(sandbox_id="s", sandbox_pidns=True)):
        with pytest.raises(errors.UnsupportedOperation, match="not supported by hyperstart"):
            await agent.start_sandbox(spec)
