"""The operations of the ``agentio`` command: one subcommand per agent operation.

Layer: tools (the ``agentio`` command). Each command parses its own arguments and runs one
operation through the agents layer (:class:`~agentio.agents.base.Agent`) or the public API
(:class:`~agentio.sandbox.Sandbox`, :class:`~agentio.process.Process`): there is no second way
to talk to an agent here. A command returns what it wants printed (``None`` for an
acknowledgement); :class:`ExitWith` makes the command exit with a status of its own (``wait``,
``exec``).
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..agents.base import Agent
from ..agents.specs import DEFAULT_PATH_ENV, ProcessSpec, SandboxSpec
from ..errors import AgentError, ConfigError
from ..sandbox import Sandbox
from .documents import load_document
from .output import ExitCode, Printer, RawOutput, exit_code_for

MAX_COPY_FILE = 256 << 20
"""Largest file ``copy-file`` sends (bytes): it is held in memory while it is sent."""


@dataclass(frozen=True, slots=True)
class ExitWith:
    """A command result that sets the exit status (the guest process's, for ``wait``)."""

    status: int
    result: Any = None


@dataclass
class Session:
    """What every command runs against: one agent connection and how to print."""

    agent: Agent
    sandbox_id: str
    printer: Printer
    timeout: float | None = None
    address: str = ""
    stdin_fd: int = 0
    stdout_fd: int = 1
    stderr_fd: int = 2

    def sandbox(self, spec: SandboxSpec | None = None) -> Sandbox:
        """The public-API view of the sandbox this session names."""
        return Sandbox(self.agent, spec or SandboxSpec(sandbox_id=self.sandbox_id),
                       limits=self.agent.limits)


Runner = Callable[[Session, argparse.Namespace], Awaitable[Any]]
Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its name, help, arguments and what it runs."""

    name: str
    help: str
    configure: Configure
    run: Runner
    needs_agent: bool = True


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, *, needs_agent: bool = True
            ) -> Callable[[Callable[..., Any]], Runner]:
    """Register the decorated ``run(session, args)`` as subcommand ``name``.

    The function's ``configure`` attribute (set by :func:`arguments`) adds its arguments.
    """
    def register(run: Callable[..., Any]) -> Runner:
        configure: Configure = getattr(run, "configure", lambda parser: None)
        COMMANDS[name] = Command(name, help, configure, run, needs_agent)
        return run
    return register


def arguments(configure: Configure) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach the function adding a command's arguments (apply below :func:`command`)."""
    def attach(run: Callable[..., Any]) -> Callable[..., Any]:
        run.configure = configure  # type: ignore[attr-defined]
        return run
    return attach


# -- argument helpers ------------------------------------------------------------------------


def _container(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("container", help="container id")


def _process(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("container", help="container id")
    parser.add_argument("exec_id", metavar="exec-id",
                        help="process id (the container id for its init process)")


def signal_number(text: str) -> int:
    """A signal given as a number, ``TERM`` or ``SIGTERM``."""
    if text.isdigit():
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown signal {text!r}") from None


def _non_negative(text: str) -> int:
    value = int(text, 0)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _positive(text: str) -> int:
    value = int(text, 0)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def user_ids(text: str) -> tuple[int, int]:
    """``UID`` or ``UID:GID`` (numbers: the guest's user database is not ours)."""
    uid, _, gid = text.partition(":")
    try:
        return int(uid), int(gid or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--user takes UID[:GID] numbers, not {text!r}") from None


def _args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("args", nargs=argparse.REMAINDER if required else "*",
                        help="the command and its arguments (after --)")


def _strip_dashes(args: list[str]) -> list[str]:
    return args[1:] if args[:1] == ["--"] else args


# -- the guest and its agent -----------------------------------------------------------------


@command("check", "check the agent is alive (Health.Check)")
async def check(session: Session, args: argparse.Namespace) -> Any:
    await session.agent.check(timeout=session.timeout)
    return {"status": "serving"}


@command("version", "the agent's version")
async def version(session: Session, args: argparse.Namespace) -> Any:
    return await session.agent.version(timeout=session.timeout)


@command("guest-details", "what the guest reports about memory blocks and capabilities")
async def guest_details(session: Session, args: argparse.Namespace) -> Any:
    return await session.agent.guest_details(timeout=session.timeout)


def _online_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cpus", type=_non_negative, help="vCPUs to bring online")
    parser.add_argument("--cpu-only", action="store_true", help="leave memory alone")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for the vCPUs to come online")


@command("online-cpu-mem", "bring hot-added vCPUs (and memory) online")
@arguments(_online_args)
async def online_cpu_mem(session: Session, args: argparse.Namespace) -> Any:
    await session.agent.online_cpu_mem(args.cpus, cpu_only=args.cpu_only, wait=not args.no_wait,
                                       timeout=session.timeout)


def _copy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="local file ('-' for stdin)")
    parser.add_argument("path", help="path in the guest")
    parser.add_argument("--mode", type=lambda text: int(text, 8), default=0o644,
                        help="file mode, octal (default 644)")
    parser.add_argument("--uid", type=_non_negative, default=0)
    parser.add_argument("--gid", type=_non_negative, default=0)
    parser.add_argument("--progress", action="store_true",
                        help="show progress even when stderr is not a terminal")


@command("copy-file", "write a local file into the guest")
@arguments(_copy_args)
async def copy_file(session: Session, args: argparse.Namespace) -> Any:
    data = _read_local(args.source, MAX_COPY_FILE)
    await session.agent.copy_file(args.path, data, mode=args.mode, uid=args.uid, gid=args.gid,
                                  timeout=session.timeout,
                                  progress=session.printer.meter(args.path, force=args.progress))
    return {"path": args.path, "bytes": len(data)}


def _read_local(source: str, limit: int) -> bytes:
    try:
        if source == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(source, "rb") as file:
                data = file.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise ConfigError(f"{source} is larger than {limit} bytes")
    return data


def _oom_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=_positive, default=1,
                        help="events to wait for (default 1)")


@command("oom-event", "wait for out-of-memory kills; prints the container each hit")
@arguments(_oom_args)
async def oom_event(session: Session, args: argparse.Namespace) -> Any:
    events = []
    for _ in range(args.count):
        container = await session.agent.get_oom_event(timeout=session.timeout)
        events.append({"container": container})
        if args.count > 1:
            session.printer.progress(f"out of memory: {container}")
    return events if args.count > 1 else events[0]


@command("interfaces", "the guest's network interfaces")
async def interfaces(session: Session, args: argparse.Namespace) -> Any:
    return list(await session.agent.list_interfaces(timeout=session.timeout))


@command("routes", "the guest's routes")
async def routes(session: Session, args: argparse.Namespace) -> Any:
    return list(await session.agent.list_routes(timeout=session.timeout))


@command("metrics", "the agent's own metrics (Prometheus text)")
async def metrics(session: Session, args: argparse.Namespace) -> Any:
    return RawOutput((await session.agent.get_metrics(timeout=session.timeout)).encode())


# -- sandboxes ------------------------------------------------------------------------------


def _sandbox_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", "-f", help="SandboxSpec fields as a JSON or TOML object")
    parser.add_argument("--hostname", help="guest hostname (default: the id's first 12 chars)")
    parser.add_argument("--dns", action="append", default=[], help="resolv.conf line (repeat)")
    parser.add_argument("--kernel-module", action="append", default=[], dest="kernel_modules",
                        help="module to load (repeat)")
    parser.add_argument("--sandbox-pidns", action="store_true",
                        help="one PID namespace for the whole sandbox")
    parser.add_argument("--guest-hook-path", default="")


_SANDBOX_FIELDS = ("hostname", "dns", "kernel_modules", "sandbox_pidns", "guest_hook_path")


@command("create-sandbox", "set the sandbox up in the guest (needs --sandbox-id)")
@arguments(_sandbox_args)
async def create_sandbox(session: Session, args: argparse.Namespace) -> Any:
    fields: dict[str, Any] = load_document(args.file) if args.file else {}
    unknown = set(fields) - set(_SANDBOX_FIELDS) - {"sandbox_id"}
    if unknown:
        raise ConfigError(f"{args.file}: unknown sandbox fields {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(_SANDBOX_FIELDS)})")
    sandbox_id = str(fields.pop("sandbox_id", "") or session.sandbox_id)
    if not sandbox_id:
        raise ConfigError("create-sandbox needs a sandbox id (--sandbox-id)")
    for name in _SANDBOX_FIELDS:
        value = getattr(args, name)
        if value:
            fields[name] = value
    fields.setdefault("hostname", sandbox_id[:12])
    try:
        spec = SandboxSpec(sandbox_id=sandbox_id, **fields)
    except TypeError as exc:
        raise ConfigError(f"bad sandbox fields: {exc}") from exc
    await session.sandbox(spec).start(timeout=session.timeout)
    return {"sandbox": sandbox_id}


@command("destroy-sandbox", "stop the sandbox and everything in it")
async def destroy_sandbox(session: Session, args: argparse.Namespace) -> Any:
    await session.agent.stop_sandbox(session.sandbox_id, timeout=session.timeout)


# -- containers -----------------------------------------------------------------------------


def _create_container_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("container", help="container id")
    parser.add_argument("--spec", "-f", help="OCI runtime spec (config.json; JSON or TOML)")
    parser.add_argument("--tty", "-t", action="store_true", help="init runs on a terminal")
    parser.add_argument("--env", "-e", action="append", default=[], help="NAME=VALUE (repeat)")
    parser.add_argument("--workdir", "-w", default="/", help="init's working directory")
    _args(parser, required=False)


@command("create-container", "create a container from an OCI spec or a command line")
@arguments(_create_container_args)
async def create_container(session: Session, args: argparse.Namespace) -> Any:
    spec = load_document(args.spec) if args.spec else None
    command_line = _strip_dashes(args.args) or ["sleep", "infinity"]
    if spec is not None and args.args:
        raise ConfigError("give the command in the spec's process.args or on the command line, "
                          "not both")
    container = await session.sandbox().create_container(
        args.container, command_line, spec=spec, env=[DEFAULT_PATH_ENV, *args.env],
        cwd=args.workdir, terminal=args.tty, timeout=session.timeout)
    return {"container": container.id}


@command("start-container", "start the container's init process")
@arguments(_container)
async def start_container(session: Session, args: argparse.Namespace) -> Any:
    await session.agent.start_container(args.container, timeout=session.timeout)


@command("remove-container", "stop and remove the container")
@arguments(_container)
async def remove_container(session: Session, args: argparse.Namespace) -> Any:
    await session.agent.stop_container(args.container, timeout=session.timeout)


@command("pause-container", "freeze every process of the container")
@arguments(_container)
async def pause_container(session: Session, args: argparse.Namespace) -> Any:
    await session.agent.pause_container(args.container, timeout=session.timeout)


@command("resume-container", "thaw a paused container")
@arguments(_container)
async def resume_container(session: Session, args: argparse.Namespace) -> Any:
    await session.agent.resume_container(args.container, timeout=session.timeout)


def _update_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("container", help="container id")
    parser.add_argument("--file", "-f",
                        help="OCI linux.resources (JSON or TOML); a whole config.json works too")
    parser.add_argument("--memory", type=_positive, help="memory limit, bytes")
    parser.add_argument("--cpu-shares", type=_positive)
    parser.add_argument("--cpu-quota", type=int)
    parser.add_argument("--cpu-period", type=_positive)
    parser.add_argument("--pids-limit", type=int)


@command("update-container", "apply new OCI linux.resources")
@arguments(_update_args)
async def update_container(session: Session, args: argparse.Namespace) -> Any:
    resources: dict[str, Any] = load_document(args.file) if args.file else {}
    if "linux" in resources:  # a whole config.json
        resources = dict(resources["linux"].get("resources") or {})
    if args.memory is not None:
        resources.setdefault("memory", {})["limit"] = args.memory
    for option, key in (("cpu_shares", "shares"), ("cpu_quota", "quota"),
                        ("cpu_period", "period")):
        if getattr(args, option) is not None:
            resources.setdefault("cpu", {})[key] = getattr(args, option)
    if args.pids_limit is not None:
        resources["pids"] = {"limit": args.pids_limit}
    if not resources:
        raise ConfigError("update-container: nothing to update (--file or a limit option)")
    await session.agent.update_container(args.container, resources, timeout=session.timeout)
    return None


@command("stats", "resource usage of a container")
@arguments(_container)
async def stats(session: Session, args: argparse.Namespace) -> Any:
    figures = await session.agent.stats_container(args.container, timeout=session.timeout)
    if session.printer.json:
        return figures
    return {"cpu_usage_ns": figures.cpu_usage_ns,
            "memory_usage_bytes": figures.memory_usage_bytes, "pids": figures.pids}


def _ps_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("container", help="container id")
    parser.add_argument("--format", choices=("json", "table"), default="table")
    parser.add_argument("ps_args", nargs="*", metavar="ps-arg", help="arguments for ps")


@command("ps", "the container's processes (ListProcesses)")
@arguments(_ps_args)
async def ps(session: Session, args: argparse.Namespace) -> Any:
    return RawOutput(await session.agent.list_processes(
        args.container, format=args.format, args=args.ps_args, timeout=session.timeout))


# -- processes ------------------------------------------------------------------------------


def _signal_args(parser: argparse.ArgumentParser) -> None:
    _process(parser)
    parser.add_argument("signal", type=signal_number, nargs="?", default=int(signal.SIGTERM),
                        help="number or name (default TERM)")
    parser.add_argument("--all", action="store_true", help="every process of the container")


@command("signal", "send a signal to a process")
@arguments(_signal_args)
async def signal_process(session: Session, args: argparse.Namespace) -> Any:
    await session.agent.signal_process(args.container, args.exec_id, args.signal, all=args.all,
                                       timeout=session.timeout)


def _resize_args(parser: argparse.ArgumentParser) -> None:
    _process(parser)
    parser.add_argument("rows", type=_positive)
    parser.add_argument("cols", type=_positive)


@command("resize", "set the terminal size of a process")
@arguments(_resize_args)
async def resize(session: Session, args: argparse.Namespace) -> Any:
    await session.agent.resize_tty(args.container, args.exec_id, args.rows, args.cols,
                                   timeout=session.timeout)


def _write_args(parser: argparse.ArgumentParser) -> None:
    _process(parser)
    parser.add_argument("data", nargs="?", help="text to write (default: all of stdin)")
    parser.add_argument("--file", help="write this file's bytes instead")


@command("write-stdin", "write to a process's stdin")
@arguments(_write_args)
async def write_stdin(session: Session, args: argparse.Namespace) -> Any:
    if args.data is not None and args.file:
        raise ConfigError("write-stdin takes DATA or --file, not both")
    limit = session.agent.limits.stdin_buffer
    data = args.data.encode() if args.data is not None else _read_local(args.file or "-", limit)
    written = 0
    while written < len(data):  # the agent may take part of a write
        written += await session.agent.write_stdin(args.container, args.exec_id, data[written:],
                                                   timeout=session.timeout)
    return {"bytes": written}


@command("close-stdin", "close a process's stdin")
@arguments(_process)
async def close_stdin(session: Session, args: argparse.Namespace) -> Any:
    await session.agent.close_stdin(args.container, args.exec_id, timeout=session.timeout)


def _read_args(parser: argparse.ArgumentParser) -> None:
    _process(parser)
    parser.add_argument("--size", type=_positive, default=64 * 1024,
                        help="largest read (default 65536)")
    parser.add_argument("--follow", action="store_true", help="read until the end of the stream")


async def _read_stream(session: Session, args: argparse.Namespace, name: str) -> Any:
    read = session.agent.read_stdout if name == "stdout" else session.agent.read_stderr
    size = min(args.size, session.agent.limits.read_chunk)
    while True:
        data = await read(args.container, args.exec_id, size, timeout=session.timeout)
        if not args.follow or not data:
            return RawOutput(data, eof=not data)
        session.printer.result(RawOutput(data))  # as it arrives


@command("read-stdout", "read a process's stdout (one read, or --follow to its end)")
@arguments(_read_args)
async def read_stdout(session: Session, args: argparse.Namespace) -> Any:
    return await _read_stream(session, args, "stdout")


@command("read-stderr", "read a process's stderr (one read, or --follow to its end)")
@arguments(_read_args)
async def read_stderr(session: Session, args: argparse.Namespace) -> Any:
    return await _read_stream(session, args, "stderr")


@command("wait", "wait for a process to exit; exits with its status")
@arguments(_process)
async def wait(session: Session, args: argparse.Namespace) -> Any:
    status = await session.agent.wait_process(args.container, args.exec_id,
                                              timeout=session.timeout)
    return ExitWith(status, {"exit_status": status})


def _exec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("container", help="container id")
    parser.add_argument("--interactive", "-i", action="store_true", help="forward stdin")
    parser.add_argument("--tty", "-t", action="store_true",
                        help="give the process a terminal (raw mode, window size follows ours)")
    parser.add_argument("--detach", "-d", action="store_true",
                        help="start it and print its exec id (ExecProcess only)")
    parser.add_argument("--exec-id", help="process id (default: a new one)")
    parser.add_argument("--env", "-e", action="append", default=[], help="NAME=VALUE (repeat)")
    parser.add_argument("--workdir", "-w", default="/")
    parser.add_argument("--user", "-u", type=user_ids, default=(0, 0), help="UID[:GID]")
    parser.add_argument("--process", help="an OCI process object (JSON or TOML) to run instead")
    _args(parser, required=True)


@command("exec", "run a process in a container, wired to this terminal (like docker exec)")
@arguments(_exec_args)
async def exec_(session: Session, args: argparse.Namespace) -> Any:
    from .execio import ExecOptions, LocalStdio, run_exec

    command_line = _strip_dashes(args.args)
    process: ProcessSpec | Mapping[str, Any]
    if args.process:
        if command_line:
            raise ConfigError("give the command in --process or on the command line, not both")
        process = load_document(args.process)
    elif not command_line:
        raise ConfigError("exec needs a command (after --)")
    else:
        process = ProcessSpec(args=command_line, env=[DEFAULT_PATH_ENV, *args.env],
                              cwd=args.workdir, terminal=args.tty, uid=args.user[0],
                              gid=args.user[1])
    options = ExecOptions(container_id=args.container, process=process,
                          interactive=args.interactive, exec_id=args.exec_id,
                          detach=args.detach)
    stdio = LocalStdio(session.stdin_fd, session.stdout_fd, session.stderr_fd)
    status, exec_id = await run_exec(session.sandbox(), options, stdio, timeout=session.timeout)
    if args.detach:
        return {"exec_id": exec_id}
    return ExitWith(status)


# -- guest logs -----------------------------------------------------------------------------


def _logs_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--level", default="trace", type=str.lower,
                        choices=("trace", "debug", "info", "warning", "error", "critical"),
                        help="least severe level shown (default: everything)")
    parser.epilog = ("--address names the guest's log port: vsock://CID:1025 (the Kata "
                     "agent's default), hvsock:///path/kata.hvsock:1025, or unix:///path.")


@command("logs", "follow the guest's log port until the guest closes it")
@arguments(_logs_args)
async def logs(session: Session, args: argparse.Namespace) -> Any:
    from ..guestlog import TRACE, GuestLog, GuestLogRecord, level_of
    from ..transports import DialPolicy

    least = level_of(args.level)
    printer = session.printer

    def show(record: GuestLogRecord) -> None:
        if record.level < least:
            return
        level = "TRACE" if record.level == TRACE else logging.getLevelName(record.level)
        if printer.json:
            printer.result({"level": level, "msg": record.message, **record.fields,
                            **({"truncated": True} if record.truncated else {})})
            return
        where = record.fields.get("subsystem", "")
        stamp = record.fields.get("ts", "")
        printer.line(" ".join(part for part in (stamp, f"{level:<8}", where and f"{where}:",
                                                record.message) if part))

    if not session.address:
        raise ConfigError("logs needs the log port's --address")
    policy = DialPolicy(budget=session.timeout) if session.timeout else DialPolicy()
    async with GuestLog(session.address, sandbox_id=session.sandbox_id, on_record=show,
                        log_records=False, policy=policy) as guest_log:
        await guest_log.wait_closed()
    return None


# -- local agents ---------------------------------------------------------------------------


def _localagent_args(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Every argument after 'localagent' goes to the local agent: "
                     "agentio localagent --help lists them (--count, --agent, --dir, ...).")


def run_localagent(argv: list[str]) -> int:
    """``agentio localagent …``: the local agent program, in this process."""
    from ..localagent.__main__ import main as localagent_main

    return localagent_main(argv)


COMMANDS["localagent"] = Command("localagent", "serve local agents (no VM needed) until Ctrl-C",
                                 _localagent_args, lambda session, args: _never(),
                                 needs_agent=False)


async def _never() -> Any:
    raise AssertionError("localagent runs outside the agent session")  # pragma: no cover


def positive_seconds(text: str) -> float:
    """A positive, finite number of seconds (for ``--timeout``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


async def execute(session: Session, args: argparse.Namespace, *,
                  process_status: bool = True) -> int:
    """Run the parsed command ``args.command`` on ``session``, print its result; exit status.

    Agent errors are reported on stderr (operation, ids and status) and become the documented
    exit codes; ``exec`` and ``wait`` exit with the process's status unless
    ``process_status`` is false (in a script, a process's status is a result, not a failure).
    """
    runner = COMMANDS[args.command].run
    try:
        result = await runner(session, args)
    except AgentError as exc:
        session.printer.error(exc, command=args.command)
        if args.command in PROCESS_STATUS_COMMANDS:
            return ExitCode.PROCESS_COMMAND_FAILED
        return exit_code_for(exc)
    if isinstance(result, ExitWith):
        if result.result is not None:
            session.printer.result(result.result)
        return result.status if process_status else ExitCode.OK
    session.printer.result(result)
    return ExitCode.OK


PROCESS_STATUS_COMMANDS = frozenset({"exec", "wait"})
"""Commands whose exit status is the guest process's."""


def add_commands(subparsers: Any, *, exclude: frozenset[str] = frozenset()) -> None:
    """Add a subparser for every registered command (except ``exclude``)."""
    for name, cmd in COMMANDS.items():
        if name in exclude:
            continue
        parser = subparsers.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.configure(parser)
