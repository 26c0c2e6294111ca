"""``agentio run-script FILE``: a sequence of commands over one agent connection.

Layer: tools (the ``agentio`` command). Each line of the script is one command as it would
follow ``agentio [global options]`` on a command line (shell-style quoting, ``#`` comments,
blank lines ignored), run on the same connection in order, as Kata's ``agent-ctl`` does. The
script stops at the first failing command unless ``--keep-going``; its exit status is that
of the first failure (a process's exit status, from ``wait`` or ``exec``, is a result, not a
failure). ``-`` reads the script from stdin, one line at a time, so it can be
typed (or piped) interactively.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import AsyncIterator

from ..errors import ConfigError
from .commands import ExitWith, Session, add_commands, arguments, command, execute
from .output import ExitCode

MAX_SCRIPT = 1 << 20
"""Largest script file (bytes)."""

NOT_IN_SCRIPTS = frozenset({"run-script", "localagent"})


class _ScriptParser(argparse.ArgumentParser):
    """Raises on a bad line instead of exiting the program."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise ConfigError(message or "help requested")


def line_parser() -> argparse.ArgumentParser:
    """The parser of one script line: every command but the ones that make no sense there."""
    parser = _ScriptParser(prog="", add_help=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_ScriptParser)
    add_commands(sub, exclude=NOT_IN_SCRIPTS)
    return parser


def _script_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the script ('-' reads commands from stdin)")
    parser.add_argument("--keep-going", "-k", action="store_true",
                        help="run every line even after a failure")
    parser.add_argument("--echo", action="store_true", help="print each command before it runs")


@command("run-script", "run the commands of a file over one connection (agent-ctl style)")
@arguments(_script_args)
async def run_script(session: Session, args: argparse.Namespace) -> ExitWith:
    parser = line_parser()
    status = 0
    # typed at a prompt, a failed command is the user's to see, not the end of the session
    keep_going = args.keep_going or (args.file == "-" and sys.stdin.isatty())
    async for number, line in _lines(args.file):
        try:
            parsed = parser.parse_args(shlex.split(line))
        except (ConfigError, ValueError) as exc:
            session.printer.error(ConfigError(f"{args.file}:{number}: {exc}"),
                                  command="run-script")
            result = int(ExitCode.USAGE)
        else:
            if args.echo:
                session.printer.note(f"+ {line}")
            result = await execute(session, parsed, process_status=False)
        if result and not status:
            status = result
        if result and not keep_going:
            break
    return ExitWith(status)


async def _lines(path: str) -> AsyncIterator[tuple[int, str]]:
    """(line number, command) for each command line of the script."""
    if path == "-":
        number = 0
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                print("agentio> ", end="", file=sys.stderr, flush=True)
            text = await asyncio.to_thread(sys.stdin.readline, MAX_SCRIPT)
            if not text:
                return
            number += 1
            if (stripped := text.strip()) and not stripped.startswith("#"):
                yield number, stripped
    for number, text in enumerate(_read_script(path).splitlines(), 1):
        if (stripped := text.strip()) and not stripped.startswith("#"):
            yield number, stripped


def _read_script(path: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SCRIPT + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_SCRIPT:
        raise ConfigError(f"{path} is larger than {MAX_SCRIPT} bytes")
    return data.decode("utf-8", errors="replace")
