"""The public API end to end against the local agent over real unix sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import anyio
import pytest

import agentio
from agentio import errors
from agentio.localagent import LocalAgent

from .conftest import Target

FAST = agentio.Limits(drain_timeout=1.0)


async def _sandbox(target: Target | str, **kwargs: Any) -> agentio.Sandbox:
    if isinstance(target, Target):
        kwargs.update(target.create_kwargs())
        target = target.address
    return await agentio.Sandbox.create(target, limits=kwargs.pop("limits", FAST), **kwargs)


async def test_whole_operation_set(target: Target, tmp_path: object) -> None:
    async with await _sandbox(target, sandbox_id="sb-ops") as sandbox:
        await sandbox.check()
        version = await sandbox.version()
        assert version.api_version == "0.0.1"
        await sandbox.online_cpu_mem(1)
        details = await sandbox.agent.guest_details()
        assert details["memBlockSizeBytes"]
        await sandbox.copy_file("/etc/agentio-test", b"file body")
        assert await sandbox.agent.list_interfaces() == []
        assert await sandbox.agent.list_routes() == []
        if target.kata1:  # not in the 1.x API
            with pytest.raises(errors.UnsupportedOperation):
                await sandbox.agent.get_metrics()
        else:
            assert "localagent_containers" in await sandbox.agent.get_metrics()
        with pytest.raises(errors.DeadlineExceeded):
            await sandbox.agent.get_oom_event(timeout=0.05)

        container = await sandbox.create_container("ctr-ops", ["sleep", "1000"])
        init = await container.start()
        proc = await container.exec(["sh", "-c", "printf out; printf err >&2; exit 3"])
        assert await proc.communicate() == (b"out", b"err")
        assert proc.returncode == 3

        await container.update({"memory": {"limit": 1 << 30}})
        stats = await container.stats()
        assert stats.pids >= 1
        assert stats.memory_usage_bytes > 0
        if target.kata1:  # only the 1.x API lists processes
            pids = json.loads(await container.list_processes())
            assert pids and all(isinstance(pid, int) and pid > 0 for pid in pids)
        else:
            with pytest.raises(errors.UnsupportedOperation):
                await container.list_processes()

        await container.pause()
        await container.resume()

        await init.send_signal(signal.SIGTERM)
        assert await init.wait() == 128 + signal.SIGTERM
        await container.remove()
        assert "ctr-ops" not in sandbox.containers


async def test_stdin_round_trip_and_close_does_not_end_stdout(target: Target) -> None:
    payload = os.urandom(300_000)
    async with await _sandbox(target) as sandbox:
        container = await sandbox.create_container()
        await container.start()
        proc = await container.exec(["sh", "-c", "cat; echo done"])
        proc.stdin.write(payload)
        await proc.stdin.drain()
        proc.stdin.close()
        await proc.stdin.wait_closed()
        out = await proc.stdout.read()
        assert out == payload + b"done\n"
        assert await proc.wait() == 0


async def test_concurrent_execs_keep_their_own_bytes(target: Target) -> None:
    async with await _sandbox(target) as sandbox:
        container = await sandbox.create_container()
        await container.start()

        async def run(i: int) -> None:
            data = os.urandom(1000 + i)
            proc = await container.exec(["cat"])
            out, err = await proc.communicate(data)
            assert (out, err, proc.returncode) == (data, b"", 0)

        await asyncio.gather(*(run(i) for i in range(40)))


async def test_large_output_arrives_complete_and_in_order_with_a_small_buffer(
    target: Target,
) -> None:
    limits = agentio.Limits(stdout_buffer=64 * 1024, read_chunk=16 * 1024, drain_timeout=1.0)
    async with await _sandbox(target, limits=limits) as sandbox:
        container = await sandbox.create_container()
        await container.start()
        # 4 MiB of numbered lines on stdout, a few lines on stderr in between
        script = "seq 1 500000; echo tail >&2"
        proc = await container.exec(["sh", "-c", script])
        out, err = await proc.communicate()
        assert out == b"".join(b"%d\n" % i for i in range(1, 500001))
        assert err == b"tail\n"


async def test_output_buffer_stays_bounded_while_the_caller_does_not_read(target: Target) -> None:
    limits = agentio.Limits(stdout_buffer=32 * 1024, read_chunk=8 * 1024, drain_timeout=1.0)
    async with await _sandbox(target, limits=limits) as sandbox:
        container = await sandbox.create_container()
        await container.start()
        proc = await container.exec(["sh", "-c", "head -c 5000000 /dev/zero"])
        await proc.stdout.settled()  # the pump parked: buffer full, agent no longer asked
        assert len(proc.stdout._buffer) < 32 * 1024 + 8 * 1024
        total = 0
        while chunk := await proc.stdout.read(65536):
            total += len(chunk)
            assert len(proc.stdout._buffer) < 32 * 1024 + 8 * 1024
        assert total == 5_000_000
        assert await proc.wait() == 0


async def test_signal_gives_128_plus_n_and_terminal_resize(target: Target) -> None:
    async with await _sandbox(target) as sandbox:
        container = await sandbox.create_container()
        await container.start()
        sleeper = await container.exec(["sleep", "1000"])
        await sleeper.send_signal(signal.SIGUSR1)
        assert await sleeper.wait() == 128 + signal.SIGUSR1

        tty = await container.exec(["sh", "-c", "read _; stty size"], tty=True)
        assert tty.stderr is None
        await tty.resize(33, 101)
        tty.stdin.write(b"go\n")
        await tty.stdin.drain()
        out = b""
        while b"33 101" not in out:
            chunk = await tty.stdout.read(1024)
            assert chunk, out
            out += chunk
        assert await tty.wait() == 0


async def test_background_child_holding_stdout_does_not_hang_wait(target: Target) -> None:
    limits = agentio.Limits(drain_timeout=0.3)
    async with await _sandbox(target, limits=limits) as sandbox:
        container = await sandbox.create_container()
        await container.start()
        proc = await container.exec(["sh", "-c", "echo hi; sleep 30 &"])
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert await proc.stdout.read(100) == b"hi\n"
        with pytest.raises(errors.OutputIncomplete):
            await proc.stdout.read(100)


async def test_errors_name_operation_sandbox_and_container(target: Target) -> None:
    async with await _sandbox(target, sandbox_id="sb-err") as sandbox:
        with pytest.raises(errors.RpcError) as raised:
            await sandbox.agent.exec_process("no-such-ctr", "x1",
                                             agentio.ProcessSpec(args=["true"]))
        text = str(raised.value)
        assert "ExecProcess" in text and "sb-err" in text and "no-such-ctr" in text
        container = await sandbox.create_container()
        await container.start()
        with pytest.raises(errors.NotFound, match="InvalidExecId"):
            await sandbox.agent.wait_process(container.id, "never-started")
        with pytest.raises(errors.RpcError, match="Could not run process"):
            await container.exec(["/no/such/binary"])


async def test_cancelled_wait_leaves_process_and_connection_usable(target: Target) -> None:
    async with await _sandbox(target) as sandbox:
        container = await sandbox.create_container()
        await container.start()
        proc = await container.exec(["sleep", "1000"])
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await proc.wait()
        await sandbox.check()
        await proc.kill()
        assert await proc.wait() == 128 + signal.SIGKILL


async def test_anyio_task_group_and_cancel_scope(target: Target) -> None:
    async with await _sandbox(target) as sandbox:
        container = await sandbox.create_container()
        await container.start()
        results: dict[int, bytes] = {}

        async def run(i: int) -> None:
            proc = await container.exec(["sh", "-c", f"echo {i}"])
            out, _ = await proc.communicate()
            results[i] = out

        async with anyio.create_task_group() as group:
            for i in range(10):
                group.start_soon(run, i)
        assert results == {i: b"%d\n" % i for i in range(10)}

        proc = await container.exec(["sleep", "1000"])
        with anyio.move_on_after(0.05) as scope:
            await proc.wait()
        assert scope.cancelled_caught
        await proc.terminate()
        assert await proc.wait() == 128 + signal.SIGTERM


async def test_teardown_in_an_expired_cancel_scope_still_runs_to_its_end(target: Target) -> None:
    # An expired anyio scope cancels every later await in it; closing must still kill, reap
    # and stop its tasks, and a sandbox left inside such a scope must still be destroyed.
    tasks_before = asyncio.all_tasks()
    with anyio.CancelScope() as outer:
        sandbox = await _sandbox(target)
        async with sandbox:
            container = await sandbox.create_container()
            await container.start()
            async with await container.exec(["sleep", "1000"]) as proc:
                outer.cancel()  # as a deadline expiring here would: every await now cancelled
                await proc.wait()
    assert outer.cancelled_caught
    assert proc.returncode == 128 + signal.SIGKILL
    assert sandbox.containers == {}
    assert asyncio.all_tasks() - tasks_before == set()


@pytest.mark.parametrize("eof_style", ["empty", "error"])
@pytest.mark.parametrize("wire_style", ["rust", "go"])
async def test_both_eof_forms_and_both_ok_forms(
    sock_dir: object, eof_style: str, wire_style: str
) -> None:
    async with LocalAgent(None, wire_style=wire_style,  # type: ignore[arg-type]
                          eof_style=eof_style) as local:  # type: ignore[arg-type]
        address = await local.serve()
        async with await _sandbox(address) as sandbox:
            container = await sandbox.create_container()
            await container.start()
            proc = await container.exec(["sh", "-c", "printf abc; printf def >&2"])
            assert await proc.communicate() == (b"abc", b"def")


async def test_unknown_eof_form_over_ttrpc(sock_dir: object) -> None:
    # the 1.x form of end-of-output (UNKNOWN "EOF") is EOF whichever protocol carries it
    async with LocalAgent(None, eof_style="unknown") as local:
        sandbox = await _sandbox(await local.serve())
        async with sandbox:
            container = await sandbox.create_container()
            await container.start()
            proc = await container.exec(["sh", "-c", "printf abc; printf def >&2"])
            assert await proc.communicate() == (b"abc", b"def")


async def test_killed_agent_fails_pending_waits_promptly(local_agent: LocalAgent) -> None:
    local = local_agent
    agent_type, config = local.client_settings()
    sandbox = await _sandbox(await local.serve(), agent_type=agent_type, config=config)
    try:
        container = await sandbox.create_container()
        await container.start()
        procs = [await container.exec(["sleep", "1000"]) for _ in range(5)]
        await local.close()  # the "VM" dies with five waits and ten reads pending
        for proc in procs:
            with pytest.raises(errors.AgentConnectionError):
                await asyncio.wait_for(proc.wait(), 5)
        with pytest.raises(errors.AgentConnectionError):
            await sandbox.check()
    finally:
        with pytest.raises(errors.AgentConnectionError):
            await sandbox.destroy()
        await local.close()


async def test_a_command_given_as_the_container_id_is_a_type_error(target: Target) -> None:
    async with await _sandbox(target) as sandbox:
        with pytest.raises(TypeError, match="args="):
            await sandbox.create_container(["sh", "-c", "echo hi"])  # type: ignore[arg-type]
        assert sandbox.containers == {}
