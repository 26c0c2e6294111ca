"""Every ``agentio`` command against a local agent, through real child processes."""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from agentio.cli import build_parser
from agentio.cli.commands import COMMANDS
from agentio.proto.kata1 import grpc as pb1
from agentio.protocols.grpc import RawCodec

from .conftest import TIMEOUT, LocalAgents, cli, run, start_container

OPERATIONS = {
    # Agent method -> the command that calls it
    "check": "check", "version": "version", "guest_details": "guest-details",
    "start_sandbox": "create-sandbox", "stop_sandbox": "destroy-sandbox",
    "create_container": "create-container", "start_container": "start-container",
    "stop_container": "remove-container", "pause_container": "pause-container",
    "resume_container": "resume-container", "update_container": "update-container",
    "stats_container": "stats", "list_processes": "ps", "exec_process": "exec",
    "signal_process": "signal", "resize_tty": "resize", "write_stdin": "write-stdin",
    "close_stdin": "close-stdin", "read_stdout": "read-stdout", "read_stderr": "read-stderr",
    "wait_process": "wait", "online_cpu_mem": "online-cpu-mem", "copy_file": "copy-file",
    "get_oom_event": "oom-event", "list_interfaces": "interfaces", "list_routes": "routes",
    "get_metrics": "metrics",
}


def test_every_agent_operation_has_a_command() -> None:
    from agentio.agents.base import Agent

    operations = {name for name in vars(Agent)
                  if not name.startswith("_") and callable(getattr(Agent, name))}
    # the connection, the monitor's switch; create-sandbox does both create and start
    operations -= {"disconnect", "mark_failed", "create_sandbox"}
    assert operations == set(OPERATIONS)
    assert set(OPERATIONS.values()) <= set(COMMANDS)
    parser = build_parser()
    for name in COMMANDS:  # every command has a usable --help (argparse exits 0)
        with pytest.raises(SystemExit) as exited:
            parser.parse_args([name, "--help"])
        assert exited.value.code == 0


def _json_lines(text: str) -> list[object]:
    return [json.loads(line) for line in text.splitlines()]


def test_a_script_drives_a_sandbox_through_every_operation(
        local_agents: LocalAgents, tmp_path: Path) -> None:
    address = local_agents.take()
    spec = {"ociVersion": "1.1.0", "root": {"path": "rootfs"}, "hostname": "h",
            "process": {"args": ["sleep", "infinity"], "cwd": "/", "env": ["PATH=/bin:/usr/bin"],
                        "terminal": False}}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    (tmp_path / "payload").write_bytes(b"payload \x00\xff bytes")
    (tmp_path / "resources.toml").write_text("[memory]\nlimit = 200000000\n")
    script = tmp_path / "script"
    script.write_text(f"""
        # a comment, then a blank line

        check
        version
        guest-details
        create-sandbox --hostname box --dns 'nameserver 10.0.0.1'
        create-container c1 --spec {tmp_path / 'config.json'}
        start-container c1
        exec -d --exec-id e1 c1 -- sh -c 'read x; echo "out:$x"; echo err >&2; exit 4'
        write-stdin c1 e1 "hello there"
        close-stdin c1 e1
        read-stdout --follow c1 e1
        read-stderr --follow c1 e1
        wait c1 e1
        exec -d --exec-id t1 --tty c1 -- sh -c 'stty size; read x'
        resize c1 t1 33 111
        signal c1 t1 KILL
        wait c1 t1
        stats c1
        pause-container c1
        resume-container c1
        update-container c1 --file {tmp_path / 'resources.toml'} --cpu-shares 512
        online-cpu-mem 2
        copy-file --mode 600 {tmp_path / 'payload'} /etc/payload
        interfaces
        routes
        metrics
        remove-container c1
        destroy-sandbox
    """)
    done = run(address, "--json", "run-script", "--keep-going", str(script))
    assert done.returncode == 0, done.stderr
    results = _json_lines(done.stdout)
    (check, version, details, sandbox, container, started, detached, written, closed, out,
     out_eof, err, err_eof, waited, tty, resized, signalled, killed, stats, paused, resumed,
     updated, online, copied, interfaces, routes, metrics, removed, destroyed) = results
    assert check == {"status": "serving"}
    assert isinstance(version, dict) and version["agent_version"].startswith("agentio")
    assert isinstance(details, dict) and "memBlockSizeBytes" in details
    assert sandbox == {"sandbox": "sb-cli"}
    assert container == {"container": "c1"}
    assert detached == {"exec_id": "e1"}
    assert written == {"bytes": len("hello there")}
    assert out == {"data": "out:hello there\n"} and out_eof == {"data": "", "eof": True}
    assert err == {"data": "err\n"} and err_eof == {"data": "", "eof": True}
    assert waited == {"exit_status": 4}
    assert tty == {"exec_id": "t1"} and killed == {"exit_status": 137}
    assert isinstance(stats, dict) and stats["pids"] >= 1
    assert copied == {"path": "/etc/payload", "bytes": len(b"payload \x00\xff bytes")}
    assert interfaces == [] and routes == []
    assert isinstance(metrics, dict) and "# TYPE" in metrics["data"]
    for ack in (started, closed, resized, signalled, paused, resumed, updated, online, removed,
                destroyed):
        assert ack == {}
    copied_file = local_agents.guest_root(address) / "etc" / "payload"
    assert copied_file.read_bytes() == b"payload \x00\xff bytes"
    assert copied_file.stat().st_mode & 0o777 == 0o600


def test_a_script_stops_at_the_first_failure_with_its_status(address: str,
                                                               tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("check\nstart-container nosuch\ncheck\n")
    done = run(address, "run-script", "--echo", str(script))
    assert done.returncode == 1
    assert done.stdout == "status: serving\n"  # the third line never ran
    assert "+ start-container nosuch" in done.stderr
    assert "StartContainer" in done.stderr and "nosuch" in done.stderr
    script.write_text("check\nno-such-command\ncheck\n")
    done = run(address, "run-script", "--keep-going", str(script))
    assert done.returncode == 2
    assert done.stdout == "status: serving\n" * 2
    assert f"{script}:2" in done.stderr


def test_a_script_read_from_stdin(address: str) -> None:
    done = run(address, "run-script", "-", input="check\nversion\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("status: serving\nagent_version: agentio")


def test_exec_streams_output_and_exits_with_the_process_status(address: str,
                                                               tmp_path: Path) -> None:
    start_container(address)
    done = run(address, "exec", "c1", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    data = "line\n" * 20000
    done = run(address, "exec", "-i", "c1", "--", "sh", "-c", "wc -c; cat >&2", input=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(data))
    done = run(address, "exec", "c1", "--", "cat", input="not forwarded without -i")
    assert (done.returncode, done.stdout) == (0, "")
    done = run(address, "exec", "-e", "GREETING=hi", "-w", "/tmp", "c1", "--",
               "sh", "-c", 'echo "$GREETING $(pwd)"')
    assert done.stdout == "hi /tmp\n"
    done = run(address, "exec", "c1", "--", "sh", "-c", "kill -TERM $$")
    assert done.returncode == 128 + 15
    process = tmp_path / "process.toml"
    process.write_text('args = ["sh", "-c", "echo $MODE in $PWD"]\ncwd = "/tmp"\n'
                       'env = ["MODE=from-toml", "PATH=/bin:/usr/bin"]\n')
    done = run(address, "exec", "--process", str(process), "c1")
    assert (done.returncode, done.stdout) == (0, "from-toml in /tmp\n")


def test_exec_reports_the_status_when_a_background_child_holds_stdout(address: str) -> None:
    start_container(address)
    # sleep keeps stdout open after sh exits: the output drain is cut, the status stays known
    done = run(address, "exec", "c1", "--", "sh", "-c", "sleep 30 & echo started; exit 3")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "started\n"
    assert "stdout was not read to its end" in done.stderr


def test_exec_forwards_ctrl_c_as_a_signal(address: str) -> None:
    start_container(address)
    child = subprocess.Popen(
        cli("--address", address, "--sandbox-id", "sb-cli", "exec", "c1", "--", "sh", "-c",
            "trap 'echo trapped; exit 7' INT; echo ready; while :; do sleep 0.05; done"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        child.send_signal(2)
        assert child.wait(timeout=TIMEOUT) == 7
        assert child.stdout.read() == "trapped\n"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_errors_name_the_operation_and_status_and_set_the_exit_code(address: str,
                                                                     tmp_path: Path) -> None:
    done = run(address, "stats", "nosuch")
    assert done.returncode == 1
    assert "agentio stats:" in done.stderr and "StatsContainer" in done.stderr
    assert "[FAILED_PRECONDITION]" in done.stderr and "container=nosuch" in done.stderr
    done = run(address, "--json", "start-container", "nosuch")
    assert done.returncode == 1 and done.stdout == ""
    error = json.loads(done.stderr)
    assert error["operation"] == "StartContainer" and error["command"] == "start-container"
    assert error["status"] and error["exit_code"] == 1
    assert error["context"] == {"sandbox": "sb-cli", "container": "nosuch"}
    done = run(address, "ps", "c1")
    assert done.returncode == 1 and "UnsupportedOperation" in done.stderr
    done = run(address, "wait", "c1", "nosuch")
    assert done.returncode == 125 and "WaitProcess" in done.stderr
    gone = f"unix://{tmp_path}/nobody.sock"
    done = run(gone, "-o", "dial_timeout=0.2", "check")
    assert done.returncode == 3 and "DialError" in done.stderr
    done = run(address, "-o", "no_such_setting=1", "check")
    assert done.returncode == 2 and "no_such_setting" in done.stderr
    done = run(address, "--timeout", "0.2", "oom-event")  # a long poll, bounded by --timeout
    assert done.returncode == 1 and "GetOOMEvent" in done.stderr
    done = run(address, "signal", "c1", "e1", "SIGNOPE")
    assert done.returncode == 2 and "unknown signal" in done.stderr
    (tmp_path / "bad.json").write_text("[1, 2")
    done = run(address, "create-container", "c9", "--spec", str(tmp_path / "bad.json"))
    assert done.returncode == 2 and "not valid JSON" in done.stderr


def test_guest_text_is_escaped_in_human_output(address: str) -> None:
    done = run(address, "remove-container", "c\x1b[2J")
    assert done.returncode == 1
    assert "\x1b" not in done.stderr and "c\\x1b[2J" in done.stderr


def test_the_console_script_is_installed() -> None:
    script = shutil.which("agentio", path=str(Path(sys.executable).parent))
    assert script is not None
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0
    assert "exit status:" in done.stdout and "run-script" in done.stdout
    done = subprocess.run([script, "check"], capture_output=True, text=True, timeout=TIMEOUT,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "address" in done.stderr


def test_noop_agent_needs_no_address() -> None:
    done = subprocess.run(cli("--agent", "noop", "--json", "check"), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert (done.returncode, done.stdout) == (0, '{"status": "serving"}\n')


@pytest.fixture(scope="module")
def hyperstart() -> Iterator[tuple[str, str]]:
    child = subprocess.Popen(cli("localagent", "--agent", "hyperstart"), stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        ctl, tty = child.stdout.readline().split()
        yield ctl, tty
    finally:
        child.terminate()
        child.wait(timeout=TIMEOUT)


def test_hyperstart_through_a_script(hyperstart: tuple[str, str], tmp_path: Path) -> None:
    ctl, tty = hyperstart
    script = tmp_path / "script"
    script.write_text("""
        version
        create-sandbox
        create-container c1
        start-container c1
        exec -d --exec-id e1 c1 -- sh -c 'read x; echo "got $x"; exit 3'
        write-stdin c1 e1 hello
        close-stdin c1 e1
        read-stdout --follow c1 e1
        wait c1 e1
        exec c1 -- sh -c 'echo direct; echo to-stderr >&2'
        stats c1
        remove-container c1
        destroy-sandbox
    """)
    done = run(ctl, "--agent", "hyperstart", "-o", f"tty_address={tty}",
               "-o", "share_dir=hyperShared", "run-script", "--keep-going", str(script))
    assert done.returncode == 1  # stats: hyperstart has no such operation
    assert done.stdout.splitlines() == [
        "agent_version: hyperstart", "api_version: 4244", "sandbox: sb-cli", "container: c1",
        "exec_id: e1", "bytes: 5", "got hello", "exit_status: 3", "direct"]
    assert done.stderr.splitlines() == [
        "to-stderr", "agentio stats: UnsupportedOperation: stats_container (sandbox=sb-cli): "
        "not supported by hyperstart"]


def test_logs_follows_the_local_agents_log_port_until_it_closes() -> None:
    agent = subprocess.Popen(cli("localagent", "--log-port"), stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
    follower = None
    try:
        assert agent.stdout is not None
        address = agent.stdout.readline().strip()
        word, log_address = agent.stdout.readline().split()
        assert word == "log"
        follower = subprocess.Popen(cli("--address", log_address, "--json", "logs"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert follower.stdout is not None
        greeting = json.loads(follower.stdout.readline())
        assert (greeting["level"], greeting["msg"]) == ("INFO", "log reader connected")
        run(address, "check", check=True)
        agent.terminate()  # the "guest" closes its log port
        assert follower.wait(timeout=TIMEOUT) == 0
        lines = [json.loads(line) for line in follower.stdout.read().splitlines()]
        assert {"level": "DEBUG", "msg": "rpc Check"}.items() <= lines[0].items()
    finally:
        for child in (agent, follower):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()


def test_exec_into_a_closed_pipe_ends_the_process_with_sigpipe(address: str) -> None:
    start_container(address)
    command = " ".join(shlex.quote(arg) for arg in cli(
        "--address", address, "--sandbox-id", "sb-cli", "exec", "c1", "--", "yes"))
    done = subprocess.run(f"{command} | head -n 2; echo \"status ${{PIPESTATUS[0]}}\"",
                          shell=True, executable="/bin/bash", capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.stdout == "y\ny\nstatus 141\n", done.stderr


def test_copy_file_shows_progress_and_the_file_arrives_whole(
        local_agents: LocalAgents, tmp_path: Path) -> None:
    address = local_agents.take()
    payload = bytes(range(256)) * (10 * 1024 + 7)  # 2.5 MiB: three CopyFile chunks
    (tmp_path / "big").write_bytes(payload)
    run(address, "create-sandbox", check=True)
    done = run(address, "copy-file", "--progress", str(tmp_path / "big"), "/data/big")
    assert done.returncode == 0, done.stderr
    # one redrawn line ('\r', read here as a newline), at most ten updates a second
    lines = [line for line in done.stderr.split("\n") if line]
    assert lines[0] == "/data/big: 1.0 MiB / 2.5 MiB (39%)"
    assert lines[-1] == "/data/big: 2.5 MiB / 2.5 MiB (100%)"
    assert set(lines[1:-1]) <= {"/data/big: 2.0 MiB / 2.5 MiB (79%)"}
    assert (local_agents.guest_root(address) / "data" / "big").read_bytes() == payload
    done = run(address, "--json", "copy-file", "--progress", str(tmp_path / "big"), "/data/b2")
    assert (done.returncode, done.stderr) == (0, "")


class _Kata1Health:
    """Health of a Kata 1.x agent over gRPC (there is no local 1.x agent to run)."""

    def __mapping__(self) -> dict[str, Handler]:
        return {path: Handler(handler, Cardinality.UNARY_UNARY, bytes, bytes)
                for path, handler in (("/grpc.Health/Check", self.check),
                                      ("/grpc.Health/Version", self.version))}

    async def check(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        status = pb1.HealthCheckResponseServingStatus.SERVING
        await stream.send_message(bytes(pb1.HealthCheckResponse(status=status)))

    async def version(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        await stream.send_message(bytes(pb1.VersionCheckResponse(
            grpc_version="1.0.0", agent_version="kata-agent 1.12")))


async def test_the_kata1_agent_over_grpc(tmp_path: Path) -> None:
    server = Server([_Kata1Health()], codec=RawCodec())
    path = tmp_path / "kata1.sock"
    config = tmp_path / "kata1.json"
    config.write_text('{"yamux": false}')  # the stub is bare HTTP/2, not behind yamux
    await server.start(path=str(path))
    try:
        child = await asyncio.create_subprocess_exec(
            *cli("--address", f"unix://{path}", "--agent", "kata1", "--config", str(config),
                 "run-script", "-"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(TIMEOUT):
            out, err = await child.communicate(b"check\nversion\nstats c1\n")
    finally:
        server.close()
        await server.wait_closed()
    assert child.returncode == 1  # the stub serves no AgentService: stats fails, with status
    assert out.decode().splitlines() == ["status: serving", "agent_version: kata-agent 1.12",
                                         "api_version: 1.0.0"]
    assert err.decode().startswith("agentio stats: [")  # the status the server gave
    assert "StatsContainer (container=c1)" in err.decode()


def test_an_agent_error_is_one_line_whatever_the_guest_wrote() -> None:
    import io

    from agentio.cli.output import Printer
    from agentio.errors import Internal

    err = io.StringIO()
    forged = Internal("boom\nagentio: everything is fine\x1b[2J", operation="Check")
    Printer(json_output=False, out=io.StringIO(), err=err).error(forged, command="check")
    assert err.getvalue().count("\n") == 1
    assert "\\nagentio: everything is fine\\x1b[2J" in err.getvalue()
