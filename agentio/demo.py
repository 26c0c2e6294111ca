"""``python -m agentio.demo``: drive many sandboxes at once and check every byte.

Layer: tools. A user of the public API only (:class:`agentio.Sandbox` and what it returns);
:mod:`agentio.localagent` appears solely as the command of the child process that serves
the agents, one unix socket per "VM".

Each sandbox runs the same workload: create the sandbox and a container, start it, run
``echo`` (stdout checked byte for byte), ``cat`` (64 KiB of random stdin back on stdout),
a shell writing to stderr and exiting 3, a ``sleep`` stopped with SIGTERM (status 143), ask
for the container's stats, remove the container, destroy the sandbox. Every public call
that reaches the agent counts as one operation. The exit status is 0 only if every sandbox
succeeded.

What differs between agent types is in :data:`PROFILES`: the local agent child's arguments,
how one line it prints becomes an address and a config, and what the agent can show. On
hyperstart a signalled process reports status 0 and there are no stats; the noop agent needs
no child and produces no output, so its operations are counted and nothing is verified.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TextIO

from agentio import AgentError, AgentType, ConfigError, Container, Limits, Process, Sandbox

log = logging.getLogger(__name__)

CAT_BYTES = 64 * 1024
EXIT_CODE = 3
STARTUP_TIMEOUT = 30.0
"""Seconds the local agent child gets to print every address."""
CHILD_STOP_TIMEOUT = 5.0
"""Seconds between SIGTERM and SIGKILL for the local agent child, plus
:data:`CHILD_STOP_PER_AGENT` for each agent it serves (it kills and reaps their processes)."""
CHILD_STOP_PER_AGENT = 0.05
CLEANUP_TIMEOUT = 10.0
"""Seconds the destroy of a failed sandbox may take."""


@dataclasses.dataclass(frozen=True)
class AgentProfile:
    """How the demo serves and checks one agent type.

    Attributes:
        child_args: arguments of ``python -m agentio.localagent`` serving this type (None:
            no child, the agent needs no guest).
        split_tty: each served guest is printed as ``CTL TTY``: the address is the ctl
            channel and ``tty_address`` the tty one (hyperstart).
        verify: the agent's processes really run, so their output and status are checked.
        sigterm_status: the exit status the agent reports after SIGTERM.
        stats: the agent reports container stats.
    """

    child_args: tuple[str, ...] | None = ()
    split_tty: bool = False
    verify: bool = True
    sigterm_status: int = 128 + signal.SIGTERM
    stats: bool = True

    def target(self, line: str) -> tuple[str, dict[str, Any]]:
        """The address and config of one served agent, from the line naming it."""
        if self.split_tty:
            ctl, _, tty = line.partition(" ")
            return ctl, ({"tty_address": tty.strip()} if tty.strip() else {})
        return line, {}


PROFILES: dict[AgentType, AgentProfile] = {
    AgentType.KATA: AgentProfile(),
    AgentType.HYPERSTART: AgentProfile(child_args=("--agent", "hyperstart"), split_tty=True,
                                       sigterm_status=0, stats=False),
    AgentType.NOOP: AgentProfile(child_args=None, verify=False),
    # gRPC on yamux, as on a 1.x VM's serial port
    AgentType.KATA1: AgentProfile(child_args=("--agent", "kata1", "--yamux")),
}
"""Agent types the demo runs without --address, and how."""


def profile_of(agent: AgentType) -> AgentProfile:
    """The agent type's profile (a Kata-like one for types only reachable by --address)."""
    return PROFILES.get(agent, PROFILES[AgentType.KATA])


class CheckFailed(Exception):
    """What a sandbox's process produced is not what the workload expected."""


# -- options -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
    """What to run: parsed from the command line by :func:`parse_args`."""

    sandboxes: int = 50
    concurrency: int = 50
    rounds: int = 1
    addresses: tuple[str, ...] = ()
    agent: AgentType = AgentType.KATA
    timeout: float = 60.0
    dial_timeout: float | None = None
    call_timeout: float | None = None
    json: bool = False
    quiet: bool = False
    verbose: bool = False
    uvloop: bool = False

    def agent_config(self) -> dict[str, Any] | None:
        """The agent settings given on the command line (None: the agent type's defaults)."""
        config: dict[str, Any] = {}
        if self.dial_timeout is not None:
            config["dial_timeout"] = self.dial_timeout
        if self.call_timeout is not None:
            config["call_timeout"] = self.call_timeout
        return config or None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _agent_type(text: str) -> AgentType:
    try:
        return AgentType.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agentio.demo",
        description="Drive many sandboxes concurrently through agentio and verify every byte. "
                    "Starts a local agent in a child process unless --address is given.")
    add = parser.add_argument
    add("--sandboxes", type=_positive_int, default=50, help="sandboxes to run (default 50)")
    add("--concurrency", type=_positive_int, default=50,
        help="sandboxes running at once (default 50)")
    add("--rounds", type=_non_negative_int, default=1,
        help="workload rounds per sandbox: each round creates, exercises and destroys a fresh "
             "sandbox (default 1; 0 runs until interrupted)")
    add("--address", action="append", default=[], dest="addresses", metavar="URL",
        help="drive the agent at URL instead of starting one (repeatable; one sandbox at a "
             "time per address; for hyperstart 'CTL_URL TTY_URL', one sandbox per guest "
             "as DESTROYPOD powers it off)")
    add("--agent", type=_agent_type, default=AgentType.KATA,
        help="agent type: " + ", ".join(t.value for t in AgentType) + " (default kata)")
    add("--timeout", type=_positive_float, default=60.0,
        help="seconds one sandbox's whole workload may take (default 60)")
    add("--dial-timeout", type=_positive_float, help="agent dial budget, seconds")
    add("--call-timeout", type=_positive_float, help="agent call deadline, seconds")
    add("--json", action="store_true", help="print the summary as JSON")
    add("-q", "--quiet", action="store_true", help="no progress display")
    add("-v", "--verbose", action="store_true", help="debug logging")
    add("--uvloop", action="store_true", help="run on uvloop (needs the uvloop extra)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """The :class:`Options` of a command line (exits with status 2 on a bad one)."""
    parser = _parser()
    ns = parser.parse_args(argv)
    if not ns.addresses and ns.agent not in PROFILES:
        parser.error(f"the local agent does not serve the {ns.agent} agent yet; give --address "
                     f"of a real one, or use --agent "
                     + " or ".join(t.value for t in PROFILES))
    return Options(sandboxes=ns.sandboxes, concurrency=ns.concurrency, rounds=ns.rounds,
                   addresses=tuple(ns.addresses), agent=ns.agent, timeout=ns.timeout,
                   dial_timeout=ns.dial_timeout, call_timeout=ns.call_timeout, json=ns.json,
                   quiet=ns.quiet, verbose=ns.verbose, uvloop=ns.uvloop)


# -- results -------------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """What one sandbox did: operations that reached the agent and bytes checked."""

    operations: int = 0
    bytes_verified: int = 0

    def op(self, count: int = 1) -> None:
        self.operations += count


@dataclasses.dataclass(frozen=True)
class Failure:
    """A sandbox that did not finish its workload."""

    sandbox: str
    address: str
    error: str


@dataclasses.dataclass
class Summary:
    """The outcome of a run."""

    sandboxes: int
    """Sandbox runs planned (sandboxes x rounds); 0 when running until interrupted."""
    agent: str
    verified: bool = True
    operations: int = 0
    bytes_verified: int = 0
    failures: list[Failure] = dataclasses.field(default_factory=list)
    wall_time: float = 0.0
    done: int = 0

    @property
    def ok(self) -> bool:
        """True when every sandbox ran and none failed."""
        return self.done == self.sandboxes and not self.failures

    @property
    def ops_per_s(self) -> float:
        return self.operations / self.wall_time if self.wall_time > 0 else 0.0

    def add(self, tally: Tally, failure: Failure | None) -> None:
        self.operations += tally.operations
        self.bytes_verified += tally.bytes_verified
        self.done += 1
        if failure is not None:
            self.failures.append(failure)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sandboxes": self.sandboxes, "agent": self.agent, "completed": self.done,
            "succeeded": self.done - len(self.failures), "failures": len(self.failures),
            "operations": self.operations, "verified": self.verified,
            "bytes_verified": self.bytes_verified,
            "wall_time_s": round(self.wall_time, 3), "ops_per_s": round(self.ops_per_s, 1),
            "errors": [dataclasses.asdict(f) for f in self.failures],
        }

    def as_text(self) -> str:
        lines = [
            f"sandboxes       {self.sandboxes} ({self.agent} agent; "
            f"{self.done - len(self.failures)} ok)",
            f"operations      {self.operations}",
            f"bytes verified  {self.bytes_verified}" if self.verified else
            f"bytes verified  none: the {self.agent} agent runs nothing (operations only)",
            f"failures        {len(self.failures)}",
            f"wall time       {self.wall_time:.2f} s",
            f"ops/s           {self.ops_per_s:.0f}",
        ]
        if self.done < self.sandboxes:
            lines.append(f"not finished    {self.sandboxes - self.done}")
        lines += [f"FAILED {f.sandbox} at {f.address}: {f.error}" for f in self.failures]
        return "\n".join(lines)


# -- the workload of one sandbox -----------------------------------------------------------


def _expect(what: str, got: object, wanted: object, verify: bool = True) -> None:
    if verify and got != wanted:
        if isinstance(got, bytes) and isinstance(wanted, bytes) and len(wanted) > 80:
            raise CheckFailed(f"{what}: got {len(got)} bytes that differ from the "
                              f"{len(wanted)} expected")
        raise CheckFailed(f"{what}: got {got!r}, expected {wanted!r}")


async def _run_and_check(container: Container, tally: Tally, profile: AgentProfile,
                         args: list[str], *, stdin: bytes = b"", stdout: bytes = b"",
                         stderr: bytes = b"", status: int = 0) -> None:
    """Exec ``args``, feed ``stdin``, check both outputs and the exit status exactly."""
    proc = await container.exec(args)
    out, err = await proc.communicate(stdin or None)
    tally.op(2)  # exec, then the wait that communicate ends with
    label, verify = args[0], profile.verify
    _expect(f"{label} stdout", out, stdout, verify)
    _expect(f"{label} stderr", err, stderr, verify)
    _expect(f"{label} exit status", proc.returncode, status, verify)
    if verify:
        tally.bytes_verified += len(out) + len(err)


async def _check_sigterm(container: Container, tally: Tally, profile: AgentProfile) -> None:
    """A long sleep stopped by SIGTERM exits with 128 + 15 (hyperstart: 0)."""
    proc: Process = await container.exec(["sleep", "1000"])
    await proc.send_signal(signal.SIGTERM)
    status = await proc.wait()
    tally.op(3)
    _expect("sleep exit status after SIGTERM", status, profile.sigterm_status, profile.verify)


async def _exercise(sandbox: Sandbox, tally: Tally, token: str, profile: AgentProfile) -> None:
    """Everything done inside one created sandbox, up to removing its container."""
    container = await sandbox.create_container(args=["sleep", "infinity"])
    tally.op()
    await container.start()
    tally.op()
    await _run_and_check(container, tally, profile, ["echo", token],
                         stdout=f"{token}\n".encode())
    data = os.urandom(CAT_BYTES)
    await _run_and_check(container, tally, profile, ["cat"], stdin=data, stdout=data)
    await _run_and_check(container, tally, profile,
                         ["sh", "-c", f'printf "%s" "$1" >&2; exit {EXIT_CODE}', "sh", token],
                         stderr=token.encode(), status=EXIT_CODE)
    await _check_sigterm(container, tally, profile)
    if profile.stats:
        stats = await container.stats()
        tally.op()
        if profile.verify and stats.pids < 1:
            raise CheckFailed(f"stats: {stats.pids} pids in a running container")
    await container.remove()
    tally.op()


async def _destroy_quietly(sandbox: Sandbox) -> None:
    """Destroy a sandbox whose workload failed; a second error is only logged."""
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            await sandbox.destroy(timeout=CLEANUP_TIMEOUT)
    except (AgentError, TimeoutError) as exc:
        log.warning("destroying %s after a failure failed too: %s", sandbox.id, _describe(exc))


async def run_sandbox(options: Options, address: str, sandbox_id: str, tally: Tally) -> None:
    """The whole workload of one sandbox; raises on the first thing that is wrong.

    ``address`` is the agent's line: a URL, or ``CTL TTY`` URLs for hyperstart.
    """
    profile = profile_of(options.agent)
    url, config = profile.target(address)
    sandbox = await Sandbox.create(url, sandbox_id=sandbox_id, agent_type=options.agent,
                                   config={**config, **(options.agent_config() or {})} or None,
                                   limits=Limits(drain_timeout=min(5.0, options.timeout)))
    tally.op()
    try:
        await _exercise(sandbox, tally, f"{sandbox_id}-{os.urandom(8).hex()}", profile)
    except asyncio.CancelledError:  # interrupted, not failed: clean up without a word
        with contextlib.suppress(AgentError, TimeoutError):
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                await sandbox.destroy(timeout=CLEANUP_TIMEOUT)
        raise
    except BaseException:
        await _destroy_quietly(sandbox)
        raise
    await sandbox.destroy()
    tally.op()


async def run_one(options: Options, address: str, sandbox_id: str) -> tuple[Tally, Failure | None]:
    """Run one sandbox within ``options.timeout``; a failure is returned, not raised."""
    tally = Tally()
    try:
        async with asyncio.timeout(options.timeout):
            await run_sandbox(options, address, sandbox_id, tally)
    except TimeoutError as exc:
        if isinstance(exc, AgentError):  # a call deadline, not our overall bound
            return tally, Failure(sandbox_id, address, _describe(exc))
        error = f"timed out after {options.timeout:g} s ({tally.operations} operations done)"
        return tally, Failure(sandbox_id, address, error)
    except (AgentError, CheckFailed, OSError) as exc:
        return tally, Failure(sandbox_id, address, _describe(exc))
    except Exception as exc:  # a bug must not abort the other sandboxes
        log.debug("sandbox %s: unexpected error", sandbox_id, exc_info=True)
        return tally, Failure(sandbox_id, address, _describe(exc))
    log.debug("sandbox %s done: %d operations", sandbox_id, tally.operations)
    return tally, None


# -- many sandboxes ------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _sandbox_ids(count: int) -> list[str]:
    run = os.urandom(3).hex()
    return [f"demo-{run}-{i:04d}" for i in range(count)]


async def run_all(options: Options, addresses: Sequence[str], summary: Summary) -> None:
    """Run every sandbox, round-robin over ``addresses``, at most one at a time per address
    (an agent holds one sandbox) and ``options.concurrency`` at a time overall."""
    slots = asyncio.Semaphore(options.concurrency)
    locks = {address: asyncio.Lock() for address in addresses}

    async def one(index: int, base_id: str) -> None:
        address = addresses[index % len(addresses)]
        rounds = itertools.count() if options.rounds == 0 else range(options.rounds)
        for round_ in rounds:
            sandbox_id = base_id if options.rounds == 1 else f"{base_id}-r{round_}"
            async with locks[address], slots:
                tally, failure = await run_one(options, address, sandbox_id)
            if failure is not None:
                log.info("sandbox %s failed: %s", sandbox_id, failure.error)
            summary.add(tally, failure)

    async with asyncio.TaskGroup() as group:
        for index, sandbox_id in enumerate(_sandbox_ids(options.sandboxes)):
            group.create_task(one(index, sandbox_id), name=f"sandbox:{sandbox_id}")


# -- the local agent child -----------------------------------------------------------------


class AgentStartError(Exception):
    """The local agent child did not come up."""


async def _read_addresses(child: asyncio.subprocess.Process, count: int) -> list[str]:
    assert child.stdout is not None
    addresses: list[str] = []
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while len(addresses) < count:
                line = await child.stdout.readline()
                if not line:
                    status = await child.wait()
                    raise AgentStartError(f"local agent exited with status {status} after "
                                          f"{len(addresses)} of {count} addresses")
                addresses.append(line.decode(errors="replace").strip())
    except TimeoutError:
        raise AgentStartError(f"local agent printed {len(addresses)} of {count} addresses "
                              f"in {STARTUP_TIMEOUT:g} s") from None
    return addresses


async def _stop_child(child: asyncio.subprocess.Process, count: int) -> None:
    """SIGTERM, a bounded wait, then SIGKILL."""
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
            child.send_signal(signal.SIGCONT)  # a stopped child would not act on SIGTERM
        try:
            async with asyncio.timeout(CHILD_STOP_TIMEOUT + CHILD_STOP_PER_AGENT * count):
                await child.wait()
        except TimeoutError:
            log.warning("local agent (pid %d) ignored SIGTERM; killing it", child.pid)
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
    log.debug("local agent (pid %d) exited with %s", child.pid, child.returncode)


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when we die, however we die (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextlib.asynccontextmanager
async def local_agents(count: int, *, verbose: bool = False,
                       child_args: Sequence[str] = ()) -> AsyncIterator[list[str]]:
    """Serve ``count`` agents from a child process in a private temporary directory;
    the lines naming them. The child is stopped and the directory removed on exit."""
    directory = tempfile.mkdtemp(prefix="agentio-demo-")  # mode 0700
    try:
        command = [sys.executable, "-m", "agentio.localagent", "--count", str(count),
                   "--dir", directory, *child_args, *(["-v"] if verbose else [])]
        try:
            # Its own session: a Ctrl-C at the terminal reaches only us, so the sandboxes are
            # destroyed while their agent still answers; then we stop the child ourselves.
            child = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_terminate_with_parent)
        except OSError as exc:
            raise AgentStartError(f"cannot run {sys.executable}: {exc}") from exc
        try:
            addresses = await _read_addresses(child, count)
            log.debug("local agent pid %d serving %d sockets in %s", child.pid, count, directory)
            yield addresses
        finally:
            await _stop_child(child, count)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- progress ------------------------------------------------------------------------------


def _progress_line(summary: Summary, started: float) -> str:
    planned = summary.sandboxes or "until interrupted"
    return (f"sandboxes {summary.done}/{planned}  failures {len(summary.failures)}  "
            f"elapsed {time.monotonic() - started:.1f}s")


async def show_progress(summary: Summary, started: float, stream: TextIO, *,
                        interval: float | None = None) -> None:
    """Until cancelled: one updating line on a terminal, a plain line every ``interval``
    seconds (default 2) otherwise."""
    tty = stream.isatty()
    if interval is None:
        interval = 0.1 if tty else 2.0
    try:
        while True:
            await asyncio.sleep(interval)
            line = _progress_line(summary, started)
            stream.write(f"\r{line}\x1b[K" if tty else f"{line}\n")
            stream.flush()
    finally:
        if tty:
            stream.write(f"\r{_progress_line(summary, started)}\x1b[K\n")
            stream.flush()


# -- the program ---------------------------------------------------------------------------


async def _drive(options: Options, addresses: Sequence[str], summary: Summary) -> None:
    started = time.monotonic()
    progress = None if options.quiet else asyncio.create_task(
        show_progress(summary, started, sys.stderr), name="progress")
    try:
        await run_all(options, addresses, summary)
    finally:
        summary.wall_time = time.monotonic() - started
        if progress is not None:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress


async def run_demo(options: Options) -> Summary:
    """Run the demo: the given agents, or a local agent child serving one per sandbox."""
    profile = profile_of(options.agent)
    summary = Summary(sandboxes=options.sandboxes * options.rounds, agent=options.agent.value,
                      verified=profile.verify)
    if options.addresses:
        await _drive(options, options.addresses, summary)
        return summary
    if profile.child_args is None:  # nothing to serve: one placeholder per sandbox
        await _drive(options, [f"{options.agent}-{i}" for i in range(options.sandboxes)],
                     summary)
        return summary
    async with local_agents(options.sandboxes, verbose=options.verbose,
                            child_args=profile.child_args) as addresses:
        await _drive(options, addresses, summary)
    return summary


def _report(summary: Summary, options: Options) -> None:
    if options.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(summary.as_text())


def _runner(options: Options) -> asyncio.Runner:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if options.uvloop:
        import uvloop  # optional extra

        factory = uvloop.new_event_loop
    return asyncio.Runner(loop_factory=factory)


async def _main_task(options: Options) -> Summary:
    """:func:`run_demo`, cancelled (and so cleaned up) by SIGTERM as by Ctrl-C."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        first = not task.cancelling()
        task.cancel()
        if first:
            with contextlib.suppress(OSError):  # stderr may be a closed pipe
                print("\ninterrupted; destroying the sandboxes started and stopping the "
                      "local agent…", file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        return await run_demo(options)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``agentio-demo``: 0 if every sandbox succeeded, 1 if any failed,
    2 for a bad command line, 130 when interrupted."""
    options = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if options.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with _runner(options) as runner:
            summary = runner.run(_main_task(options))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    except AgentStartError as exc:
        print(f"cannot start the local agent: {exc}", file=sys.stderr)
        return 1
    _report(summary, options)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
