"""Tools for testing code that uses agentio: fault injection between a client and an agent.

Layer: testing (imports errors, transports and protocols; never the public API). See
:mod:`agentio.testing.faults` (the fault proxy and scripted ttrpc peer) and
:mod:`agentio.testing.leaks` (descriptor and task leak checks) and
:mod:`agentio.testing.memory` (an in-memory transport to feed a protocol by hand).
"""

from .faults import (
    CloseMidFrame,
    Corrupt,
    Delay,
    Direction,
    Drop,
    Duplicate,
    Endless,
    Fault,
    FaultProxy,
    Framing,
    OversizedHeader,
    PeerCall,
    PeerConnection,
    PeerHandler,
    Reorder,
    Reset,
    RewriteStreamId,
    ScriptedTtrpcPeer,
    StallReads,
    StallWrites,
    Throttle,
    Truncate,
    hang,
    stop_answering,
)
from .leaks import LeakCheck, describe_fd, open_fds
from .memory import MemoryTransport

__all__ = [
    "CloseMidFrame",
    "Corrupt",
    "Delay",
    "Direction",
    "Drop",
    "Duplicate",
    "Endless",
    "Fault",
    "FaultProxy",
    "Framing",
    "LeakCheck",
    "MemoryTransport",
    "OversizedHeader",
    "PeerCall",
    "PeerConnection",
    "PeerHandler",
    "Reorder",
    "Reset",
    "RewriteStreamId",
    "ScriptedTtrpcPeer",
    "StallReads",
    "StallWrites",
    "Throttle",
    "Truncate",
    "describe_fd",
    "hang",
    "open_fds",
    "stop_answering",
]
