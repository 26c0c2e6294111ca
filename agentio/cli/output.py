"""What the command prints: results (human or JSON), errors, and the exit codes.

Layer: tools (the ``agentio`` command). Results go to stdout, everything else to stderr.
Text that came from the guest is escaped before it reaches a terminal: an untrusted agent
must not be able to send terminal control sequences through a status line.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

from ..errors import AgentConnectionError, AgentError, ConfigError, RpcError


class ExitCode(enum.IntEnum):
    """Exit statuses of ``agentio`` (``exec`` and ``wait`` exit with the process's status)."""

    OK = 0
    AGENT_ERROR = 1
    """The agent answered with an error, or the operation failed (timeouts included)."""
    USAGE = 2
    """Bad command line, address, configuration or input file."""
    CONNECTION = 3
    """The agent could not be reached, or the connection was lost."""
    PROCESS_COMMAND_FAILED = 125
    """``exec`` or ``wait`` failed before the process's status was known (as ``docker exec``)."""
    INTERRUPTED = 130
    """Interrupted by Ctrl-C (outside ``exec``, where Ctrl-C goes to the process)."""


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit status an error ends the command with."""
    if isinstance(exc, ConfigError):
        return ExitCode.USAGE
    if isinstance(exc, AgentConnectionError):
        return ExitCode.CONNECTION
    return ExitCode.AGENT_ERROR


def error_document(exc: BaseException) -> dict[str, Any]:
    """An error as a JSON-ready mapping: type, operation, status, message, ids."""
    doc: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, AgentError):
        doc["message"] = exc.message
        doc["operation"] = exc.operation
        doc["context"] = dict(exc.context)
        if isinstance(exc, RpcError):
            doc["status"] = exc.code_name
            doc["code"] = exc.code
    doc["exit_code"] = int(exit_code_for(exc))
    return doc


def safe_text(text: str, *, keep: str = "\n\t") -> str:
    """``text`` with control characters (except those in ``keep``) shown as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def jsonable(value: Any) -> Any:
    """``value`` in a form ``json.dumps`` takes: dataclasses, enums, bytes made plain."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [jsonable(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class RawOutput:
    """Bytes from the guest (a read, a ``ps`` table): written as they are in human mode."""

    data: bytes
    eof: bool = False


class Printer:
    """Prints results and errors in the chosen form."""

    def __init__(self, *, json_output: bool, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.json = json_output
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def result(self, value: Any) -> None:
        """Print what a command returned (``None`` prints nothing, or ``{}`` as JSON)."""
        if isinstance(value, RawOutput):
            if not self.json:
                self.raw(value.data)
                return
            value = {"data": value.data, "eof": value.eof} if value.eof else {"data": value.data}
        if self.json:
            print(json.dumps(jsonable({} if value is None else value), sort_keys=True),
                  file=self.out, flush=True)
            return
        if value is None:
            return
        if isinstance(value, list | tuple) and not value:
            print("(none)", file=self.out, flush=True)
            return
        for line in _human(jsonable(value)):
            print(safe_text(line), file=self.out)
        self.out.flush()

    def error(self, exc: BaseException, *, command: str | None = None) -> None:
        """Report an error on stderr."""
        if self.json:
            doc = error_document(exc)
            if command:
                doc["command"] = command
            print(json.dumps(jsonable(doc), sort_keys=True), file=self.err, flush=True)
            return
        prefix = f"agentio {command}" if command else "agentio"
        kind = "" if isinstance(exc, RpcError) else f"{type(exc).__name__}: "
        # one line per error: a guest's message must not forge lines of its own
        print(f"{prefix}: {kind}{safe_text(str(exc), keep='')}", file=self.err, flush=True)

    def line(self, text: str) -> None:
        """One line of human output on stdout (escaped: it may come from the guest)."""
        print(safe_text(text), file=self.out, flush=True)

    def raw(self, data: bytes) -> None:
        """Write guest bytes to stdout as they are (what ``cat`` would show)."""
        self.out.flush()
        binary: BinaryIO | None = getattr(self.out, "buffer", None)
        if binary is None:
            self.out.write(data.decode(errors="replace"))
            self.out.flush()
            return
        binary.write(data)
        binary.flush()

    def progress(self, text: str) -> None:
        """A progress line on stderr, for people watching a long operation (not with --json)."""
        if not self.json:
            self.note(text)

    def meter(self, what: str, *, force: bool = False) -> Callable[[int, int], None] | None:
        """A progress callback ``(done, total)`` redrawing one line on stderr.

        ``None`` (no display) with ``--json``, or when stderr is not a terminal unless
        ``force``. Redraws at most ten times a second, and always at the end.
        """
        if self.json or not (force or self.err.isatty()):
            return None
        last = -1.0

        def show(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if done < total and now - last < 0.1:
                return
            last = now
            percent = 100 * done // total if total else 100
            print(f"\r{what}: {_size(done)} / {_size(total)} ({percent}%)",
                  end="\n" if done >= total else "", file=self.err, flush=True)

        return show

    def note(self, text: str) -> None:
        """A human message on stderr (never part of the machine-readable output)."""
        print(safe_text(text), file=self.err, flush=True)


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _human(value: Any, indent: str = "") -> list[str]:
    if isinstance(value, Mapping):
        lines: list[str] = []
        for key, item in value.items():
            if isinstance(item, Mapping | list) and item:
                lines.append(f"{indent}{key}:")
                lines.extend(_human(item, indent + "  "))
            else:
                lines.append(f"{indent}{key}: {_scalar(item)}")
        return lines
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, Mapping | list) and item:
                sub = _human(item, indent + "  ")
                lines.append(f"{indent}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{indent}- {_scalar(item)}")
        return lines
    return [f"{indent}{_scalar(value)}"]


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping | list):
        return "(none)"
    return str(value)
