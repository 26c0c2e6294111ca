"""The ``agentio`` command: every agent operation from a shell.

Layer: tools. ``agentio --address URL [--agent TYPE] COMMAND …``; ``agentio --help`` lists
the commands, ``agentio COMMAND --help`` their options. Everything goes through the agents
layer and the public API (:mod:`agentio.cli.commands`); nothing here speaks a protocol.

Exit status: 0 on success; 1 when the agent answered with an error or the operation failed
(timeouts included); 2 for a bad command line, address, setting or input file; 3 when the
agent could not be reached or the connection was lost; ``exec`` and ``wait`` exit with the
process's status (128+N after signal N), or 125 when they failed before knowing it; 130 after
Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from ..agents import AgentType, open_agent
from ..errors import ConfigError
from . import script as _script  # noqa: F401 - registers run-script
from .commands import COMMANDS, Session, add_commands, execute, positive_seconds, run_localagent
from .documents import load_document, merged, parse_settings
from .output import ExitCode, Printer

__all__ = ["ExitCode", "build_parser", "main"]

EXIT_CODES = """exit status:
  0    success
  1    the agent answered with an error, or the operation failed (timeouts too)
  2    bad command line, address, setting or input file
  3    the agent could not be reached, or the connection was lost
  N    exec / wait: the process's exit status (128+N after signal N)
  125  exec / wait failed before the process's status was known
  130  interrupted (Ctrl-C)

environment: AGENTIO_ADDRESS, AGENTIO_AGENT, AGENTIO_SANDBOX give the defaults of
--address, --agent and --sandbox-id.
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global options, then one subcommand."""
    parser = argparse.ArgumentParser(
        prog="agentio", description="Drive the agent inside a VM (or a local agent).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", "-a", default=os.environ.get("AGENTIO_ADDRESS"),
                        help="agent URL: unix:///path, vsock://CID:PORT, hvsock:///path:PORT")
    parser.add_argument("--agent", default=os.environ.get("AGENTIO_AGENT", "kata"),
                        choices=[kind.value for kind in AgentType], help="agent type")
    parser.add_argument("--sandbox-id", "-s", default=os.environ.get("AGENTIO_SANDBOX", ""),
                        help="the sandbox the commands concern")
    parser.add_argument("--config", help="agent settings file (JSON or TOML)")
    parser.add_argument("--set", "-o", action="append", default=[], metavar="KEY=VALUE",
                        dest="settings", help="one agent setting (repeat), e.g. call_timeout=5")
    parser.add_argument("--timeout", type=positive_seconds,
                        help="deadline of each call, seconds (default: the agent's)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--verbose", "-v", action="count", default=0,
                        help="log what happens (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentio`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `agentio [options] localagent ARGS`: ARGS belong to the local agent's own parser.
    split = argv.index("localagent") + 1 if "localagent" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    if not COMMANDS[args.command].needs_agent:
        return run_localagent(argv[split:])
    if split != len(argv):
        args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    printer = Printer(json_output=args.json)
    try:
        config = merged(load_document(args.config) if args.config else None,
                        parse_settings(args.settings))
        agent = open_agent(args.address, args.agent, sandbox_id=args.sandbox_id, config=config)
    except ConfigError as exc:
        printer.error(exc, command=args.command)
        return ExitCode.USAGE
    session = Session(agent, args.sandbox_id, printer, timeout=args.timeout,
                      address=args.address or "")
    try:
        return asyncio.run(_run(session, args))
    except KeyboardInterrupt:
        printer.note("agentio: interrupted")
        return ExitCode.INTERRUPTED


async def _run(session: Session, args: argparse.Namespace) -> int:
    async with session.agent:
        return await execute(session, args)


if __name__ == "__main__":
    sys.exit(main())
