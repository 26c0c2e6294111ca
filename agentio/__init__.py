"""agentio: drive the agents inside lightweight VMs (Kata Containers, hyperstart) from asyncio.

The public API, top down::

    async with await agentio.Sandbox.create("unix:///run/vm/agent.sock") as sandbox:
        container = await sandbox.create_container(args=["sleep", "infinity"])
        await container.start()
        proc = await container.exec(["echo", "hello"])
        out, err = await proc.communicate()

Layers below it (importable, documented in DEVELOPERS.md): :mod:`agentio.agents` (the
operation set), :mod:`agentio.protocols` (ttrpc), :mod:`agentio.transports` (addresses and
dialing), :mod:`agentio.localagent` (a real agent running host processes).
"""

from .agents import (
    Agent,
    AgentType,
    AgentVersion,
    ContainerStats,
    KataAgent,
    KataConfig,
    NoopAgent,
    ProcessSpec,
    SandboxSpec,
    default_container_spec,
    open_agent,
)
from .agents.specs import DEFAULT_PATH_ENV
from .errors import (  # every error is reachable as agentio.<Name>
    Aborted,
    AgentConnectionError,
    AgentError,
    AgentTimeout,
    AlreadyExists,
    Cancelled,
    ConfigError,
    ConnectionClosed,
    DataLoss,
    DeadlineExceeded,
    DialError,
    FailedPrecondition,
    FrameTooLarge,
    HandshakeError,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    OutputIncomplete,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    RpcError,
    SandboxFailed,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    UnsupportedOperation,
    YamuxError,
)
from .limits import Limits
from .process import Process
from .sandbox import Container, Sandbox
from .streams import InputStream, OutputStream
from .transports import Address, DialPolicy, parse_address

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PATH_ENV",
    "Aborted",
    "Address",
    "Agent",
    "AgentConnectionError",
    "AgentError",
    "AgentTimeout",
    "AgentType",
    "AgentVersion",
    "AlreadyExists",
    "Cancelled",
    "ConfigError",
    "ConnectionClosed",
    "Container",
    "ContainerStats",
    "DataLoss",
    "DeadlineExceeded",
    "DialError",
    "DialPolicy",
    "FailedPrecondition",
    "FrameTooLarge",
    "HandshakeError",
    "InputStream",
    "Internal",
    "InvalidArgument",
    "KataAgent",
    "KataConfig",
    "Limits",
    "NoopAgent",
    "NotFound",
    "OutOfRange",
    "OutputIncomplete",
    "OutputStream",
    "PermissionDenied",
    "Process",
    "ProcessSpec",
    "ProtocolError",
    "ResourceExhausted",
    "RpcError",
    "Sandbox",
    "SandboxFailed",
    "SandboxSpec",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "UnsupportedOperation",
    "YamuxError",
    "__version__",
    "default_container_spec",
    "open_agent",
    "parse_address",
]
