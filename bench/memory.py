"""The memory figure in a fresh process (layer: tools): ``python -m bench.memory``.

Layer: tools. RSS deltas only mean something in a process whose heap has not already grown
and shrunk for other work, so :mod:`bench` runs this once per event loop in a new child:
it opens ``--per-socket`` idle connected ``KataAgent`` clients on each address given, prints
one JSON line (:meth:`bench.measure.MemoryResult.as_dict`) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .loops import loop_factories
from .measure import MemoryResult, memory_per_client


def main(argv: list[str] | None = None) -> int:
    """Measure and print; 0 on success."""
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--loop", default="asyncio")
    parser.add_argument("--per-socket", type=int, default=50)
    parser.add_argument("addresses", nargs="+")
    args = parser.parse_args(argv)
    ((_, _, factory),) = loop_factories(args.loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(memory_per_client(args.addresses, args.per_socket))
    print(json.dumps(result.as_dict()), flush=True)
    return 0


def parse(line: str) -> MemoryResult:
    """The :class:`MemoryResult` a ``python -m bench.memory`` child printed."""
    data = json.loads(line)
    return MemoryResult(int(data["clients"]), int(data["sockets"]), int(data["rss_before"]),
                        int(data["rss_after"]))


if __name__ == "__main__":
    sys.exit(main())
