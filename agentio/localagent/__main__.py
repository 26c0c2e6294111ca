"""``python -m agentio.localagent``: serve local agents until interrupted.

Layer: local agent (command line). Prints one address per line once every socket listens,
then serves until SIGINT or SIGTERM. With ``--log-port`` it also serves a guest log port
(the agents' own log as Kata-style JSON lines) and prints ``log ADDRESS`` after the agents.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from ..errors import ConfigError
from .hyperstart import LocalHyperstart
from .logport import LocalLogPort
from .server import LocalAgent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agentio.localagent",
                                     description="Serve the Kata agent API from host processes.")
    parser.add_argument("--dir", help="private directory for the sockets (default: a new "
                                      "temporary one)")
    parser.add_argument("--count", type=int, default=1, help="agents (sockets) to serve")
    parser.add_argument("--socket", metavar="PATH",
                        help="serve one Kata agent on PATH (must end in .sock; its directory "
                             "must be private to you, mode 0700)")
    parser.add_argument("--wire", choices=("rust", "go"), default="rust",
                        help="answer like the Rust agent or a Go ttrpc server")
    parser.add_argument("--eof", choices=("empty", "error", "unknown"),
                        help="end of output as an empty reply (Kata >= 3.27), an INTERNAL error "
                             "(older agents) or UNKNOWN 'EOF' (1.x); default: the agent's own")
    parser.add_argument("--agent", choices=("kata", "kata1", "hyperstart"), default="kata",
                        help="serve the Kata agent API (ttrpc), the Kata 1.x API (gRPC), or "
                             "hyperstart (two sockets per guest, printed as 'CTL TTY')")
    parser.add_argument("--yamux", action=argparse.BooleanOptionalAction, default=None,
                        help="with --agent kata1: a yamux session on each connection, HTTP/2 "
                             "on every stream (as on a 1.x VM's serial port; the default, "
                             "matching the client's default for unix:// addresses); "
                             "--no-yamux serves bare HTTP/2")
    parser.add_argument("--log-port", action="store_true",
                        help="serve the agents' log as JSON lines on a unix socket, like a "
                             "Kata guest's log port (printed last, as 'log ADDRESS')")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.agent == "hyperstart":
        async with LocalHyperstart(args.dir) as hyperstart:
            for _ in range(args.count):
                ctl, tty = await hyperstart.serve()
                print(ctl, tty, flush=True)
            await stop.wait()
        return
    socket_path: Path | None = args.socket
    directory = socket_path.parent if socket_path else args.dir
    async with LocalAgent(directory, wire_style=args.wire, eof_style=args.eof,
                          agent=args.agent, yamux=args.yamux) as local:
        if socket_path:
            print(await local.serve(socket_path.name.removesuffix(".sock")), flush=True)
        else:
            for address in await local.serve_many(args.count):
                print(address, flush=True)
        if not args.log_port:
            await stop.wait()
            return
        async with LocalLogPort(local.directory / "log.sock") as port:
            logger = logging.getLogger("agentio.localagent")
            handler = port.handler()
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
            try:
                print("log", port.address, flush=True)
                await stop.wait()
            finally:
                logger.removeHandler(handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``agentio-localagent``."""
    args = _parser().parse_args(argv)
    if args.count < 1:
        print("--count must be at least 1", file=sys.stderr)
        return 2
    if args.socket and (args.dir or args.count != 1 or args.agent == "hyperstart"
                        or not args.socket.endswith(".sock")):
        print("--socket PATH serves one agent; PATH must end in .sock, and --dir and "
              "--count do not apply", file=sys.stderr)
        return 2
    if args.socket:
        args.socket = Path(args.socket).absolute()
    if args.yamux is not None and args.agent != "kata1":
        print("--yamux/--no-yamux needs --agent kata1", file=sys.stderr)
        return 2
    args.yamux = args.agent == "kata1" and args.yamux is not False
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    if not args.verbose:  # --log-port lowers our loggers' level: keep stderr as quiet
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
    try:
        asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"agentio-localagent: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
