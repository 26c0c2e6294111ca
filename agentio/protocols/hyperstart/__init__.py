"""hyperstart: the agent of hyper.sh / early Kata guests, on a ctl and a tty channel.

Layer: protocols. :mod:`.codec` frames both channels, :mod:`.messages` builds the JSON
payloads the agent knows, :mod:`.ctl` is the host's ctl state machine (all sans-I/O), and
:mod:`.client` runs them on asyncio connections.
"""

from .codec import (
    CTL_HEADER_SIZE,
    MAX_STDIN_CHUNK,
    MAX_TTY_FRAME_OUT,
    TTY_HEADER_SIZE,
    Code,
    CtlDecoder,
    CtlFrame,
    TtyDecoder,
    TtyFrame,
    encode_command,
    encode_ctl,
    encode_stdin,
    encode_stdin_close,
    encode_tty,
    iter_stdin_frames,
)
from .ctl import Consumed, CtlClient, CtlEvent, CtlState, Ready, Reply
from .messages import Command, HyperContainer, HyperPod, HyperProcess, ProcessEvent

__all__ = [
    "CTL_HEADER_SIZE",
    "MAX_STDIN_CHUNK",
    "MAX_TTY_FRAME_OUT",
    "TTY_HEADER_SIZE",
    "Code",
    "Command",
    "Consumed",
    "CtlClient",
    "CtlDecoder",
    "CtlEvent",
    "CtlFrame",
    "CtlState",
    "HyperContainer",
    "HyperPod",
    "HyperProcess",
    "ProcessEvent",
    "Ready",
    "Reply",
    "TtyDecoder",
    "TtyFrame",
    "encode_command",
    "encode_ctl",
    "encode_stdin",
    "encode_stdin_close",
    "encode_tty",
    "iter_stdin_frames",
]
