"""Choosing the client event loop (layer: tools): stdlib asyncio or uvloop.

Layer: tools.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LOOPS = ("asyncio", "uvloop")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factories(spec: str) -> list[tuple[str, str, LoopFactory]]:
    """(name, version, factory) per requested loop; raises SystemExit for unknown ones."""
    names = LOOPS if spec == "all" else tuple(n.strip() for n in spec.split(",") if n.strip())
    out: list[tuple[str, str, LoopFactory]] = []
    for name in names:
        if name == "asyncio":
            out.append(("asyncio", "", asyncio.new_event_loop))
        elif name == "uvloop":
            try:
                import uvloop
            except ImportError:
                if spec == "all":
                    continue
                raise SystemExit("uvloop is not installed (pip install -e '.[uvloop]')") from None
            version = str(getattr(uvloop, "__version__", ""))
            out.append(("uvloop", version, uvloop.new_event_loop))
        else:
            raise SystemExit(f"unknown loop {name!r}; choose from {', '.join(LOOPS)}, all")
    if not out:
        raise SystemExit("no event loop to run on")
    return out
