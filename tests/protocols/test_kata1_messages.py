"""Generated Kata 1.x messages (agentio.proto.kata1) against the golden 1.x gRPC vectors.

Every request and response protobuf recorded between the 1.13 agent and its Go client
decodes with the 1.x classes, re-encodes to the same bytes, and matches the decoded view the
recorder printed (gogo/protobuf compact text) field by field.
"""

from __future__ import annotations

import codecs
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import betterproto2
import pytest

from agentio.proto.kata import grpc as kata
from agentio.proto.kata1 import grpc as kata1
from agentio.proto.kata1 import types as kata1_types
from agentio.proto.kata1.message_pool import default_message_pool

_PROTOS = Path(__file__).resolve().parents[2] / "protos" / "kata1"
_TYPE_URL = "type.googleapis.com/"


def _calls(vectors_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    data = json.loads((vectors_dir / "kata1" / "vectors.json").read_text())
    for session in data["sessions"]:
        for call in session["calls"]:
            yield session["name"], call


def _messages(vectors_dir: Path) -> Iterator[tuple[str, str, bytes, str]]:
    """(where, type name, protobuf bytes, compact text) of every message sent in the vectors."""
    for session, call in _calls(vectors_dir):
        for kind in ("request", "response"):
            raw = call[f"{kind}_hex"]
            if raw is None:  # no message sent (an error reply, or a call the client gave up on)
                continue
            yield (f"{session} {call['path']} {kind}", call[f"{kind}_type"], bytes.fromhex(raw),
                   call[f"{kind}_text"] or "")


def _message_class(type_name: str) -> type[betterproto2.Message]:
    cls = default_message_pool.url_to_type.get(_TYPE_URL + type_name)
    assert cls is not None, f"no 1.x class for {type_name}"
    return cls


def test_every_message_decodes_and_reencodes_byte_identically(vectors_dir: Path) -> None:
    types: set[str] = set()
    count = 0
    for where, type_name, raw, _ in _messages(vectors_dir):
        msg = _message_class(type_name).parse(raw)
        assert bytes(msg) == raw, f"{where}: {type_name} re-encodes differently"
        types.add(type_name)
        count += 1
    assert count > 100
    assert {"grpc.ListProcessesRequest", "grpc.ListProcessesResponse",
            "grpc.StatsContainerResponse", "grpc.CreateContainerRequest"} <= types
    assert len(types) == 24


# --- the recorder's decoded view -------------------------------------------------------------

_TOKEN = re.compile(r'\s*(?:(?P<key>\w+):(?P<open><)?|(?P<close>>)|'
                    r'(?P<str>"(?:[^"\\]|\\.)*")|(?P<word>[-\w.]+))')

Text = list[tuple[str, Any]]


def _parse_text(text: str) -> Text:
    """gogo compact text (`a:1 b:"x" c:<d:2 > `) as nested (key, value) lists."""
    stack: list[Text] = [[]]
    pos = 0
    pending: str | None = None
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        assert m is not None, f"cannot parse at {text[pos:pos + 40]!r}"
        pos = m.end()
        if m["key"]:
            if m["open"]:
                child: Text = []
                stack[-1].append((m["key"], child))
                stack.append(child)
            else:
                pending = m["key"]
        elif m["close"]:
            stack.pop()
        else:
            assert pending is not None
            value: Any = m["word"]
            if m["str"]:
                value = codecs.escape_decode(m["str"][1:-1].encode())[0]
            stack[-1].append((pending, value))
            pending = None
    assert len(stack) == 1
    return stack[0]


def _check(msg: Any, text: Text, where: str) -> int:
    """Compare every field the text shows with the decoded message; returns fields compared."""
    compared = 0
    seen: dict[str, int] = {}
    for key, expected in text:
        name = betterproto2.casing.snake_case(key)
        actual = getattr(msg, name)
        index = seen.get(name, 0)
        seen[name] = index + 1
        if isinstance(actual, dict):  # map entry: <key:... value:...>
            entry = dict(expected)
            map_key = entry["key"].decode()
            value = actual[map_key]
            if isinstance(entry.get("value"), list):
                compared += _check(value, entry["value"], f"{where}.{key}[{map_key}]")
            else:
                compared += _compare(value, entry.get("value", b""), f"{where}.{key}")
            continue
        if isinstance(actual, list):
            actual = actual[index]
        if isinstance(expected, list):
            compared += _check(actual, expected, f"{where}.{key}")
        else:
            compared += _compare(actual, expected, f"{where}.{key}")
    return compared


def _compare(actual: Any, expected: Any, where: str) -> int:
    if isinstance(actual, betterproto2.Enum):
        assert actual.name == expected, where
    elif isinstance(actual, bool):
        assert actual == (expected == "true"), where
    elif isinstance(actual, int):
        assert actual == int(expected), where
    elif isinstance(actual, bytes):
        assert actual == expected, where
    else:
        assert actual == expected.decode(), where
    return 1


def test_decoded_fields_match_the_recorded_text(vectors_dir: Path) -> None:
    compared = 0
    for where, type_name, raw, text in _messages(vectors_dir):
        msg = _message_class(type_name).parse(raw)
        compared += _check(msg, _parse_text(text), where)
    assert compared > 600


def test_the_text_parser_reads_what_the_recorder_prints() -> None:
    parsed = _parse_text('a:1 b:"x\\n\\"y" c:<d:SERVING e:<> > ')
    assert parsed == [("a", "1"), ("b", b'x\n"y'), ("c", [("d", "SERVING"), ("e", [])])]


# --- what the vectors show, named --------------------------------------------------------------

def _find(vectors_dir: Path, path: str, session: str = "lifecycle") -> list[dict[str, Any]]:
    return [c for s, c in _calls(vectors_dir) if s == session and c["path"].endswith(path)]


def test_list_processes_is_a_1x_call(vectors_dir: Path) -> None:
    [call] = _find(vectors_dir, "/ListProcesses")
    req = kata1.ListProcessesRequest.parse(bytes.fromhex(call["request_hex"]))
    resp = kata1.ListProcessesResponse.parse(bytes.fromhex(call["response_hex"]))
    assert req.format == "json" and req.args == []
    assert json.loads(resp.process_list) == [116, 123]


def test_wait_statuses_and_stdio(vectors_dir: Path) -> None:
    waits = [kata1.WaitProcessResponse.parse(bytes.fromhex(c["response_hex"])).status
             for c in _find(vectors_dir, "/WaitProcess")]
    assert waits == [3, 0, 143, 0]
    [write] = _find(vectors_dir, "/WriteStdin")
    assert kata1.WriteStreamResponse.parse(bytes.fromhex(write["response_hex"])).len == 5
    reads = [c for c in _find(vectors_dir, "/ReadStdout") if c["grpc_code"] == "OK"]
    assert [kata1.ReadStreamResponse.parse(bytes.fromhex(c["response_hex"])).data
            for c in reads] == [b"out\n", b"ping\n"]


def test_create_container_spec(vectors_dir: Path) -> None:
    [call] = _find(vectors_dir, "/CreateContainer")
    req = kata1.CreateContainerRequest.parse(bytes.fromhex(call["request_hex"]))
    assert req.container_id == req.exec_id
    assert req.oci is not None and req.oci.linux is not None and req.oci.process is not None
    assert req.oci.process.user is not None  # sent as an empty message, kept on re-encode
    assert [ns.type for ns in req.oci.linux.namespaces] == ["ipc", "uts", "mount"]
    assert req.oci.annotations["io.katacontainers.pkg.oci.container_type"] == "pod_sandbox"


# --- where the generations differ ----------------------------------------------------------------

def test_seccomp_field_3_means_syscalls_in_1x_and_flags_later() -> None:
    syscall = kata1.LinuxSyscall(names=["read"], action="SCMP_ACT_ALLOW",
                                 args=[kata1.LinuxSeccompArg(index=1, op="SCMP_CMP_EQ")])
    wire = bytes(kata1.LinuxSeccomp(default_action="SCMP_ACT_ERRNO", syscalls=[syscall]))
    assert kata1.LinuxSeccomp.parse(wire).syscalls == [syscall]
    later = kata.LinuxSeccomp.parse(wire)
    assert later.syscalls == [] and len(later.flags) == 1  # same bytes, another meaning
    # LinuxSyscall field 3: args in 1.x, the errno oneof later
    assert bytes(kata1.LinuxSyscall(args=[kata1.LinuxSeccompArg()]))[:1] == b"\x1a"
    assert bytes(kata.LinuxSyscall(errnoret=1))[:1] == b"\x18"


def test_interface_field_6_is_the_pci_address() -> None:
    wire = bytes(kata1_types.Interface(name="eth0", pci_addr="01/02"))
    assert kata1_types.Interface.parse(wire).pci_addr == "01/02"
    assert b"\x32\x0501/02" in wire


def test_create_container_has_no_field_8_in_1x() -> None:
    numbers = {f.metadata["betterproto"].number
               for f in kata1.CreateContainerRequest.__dataclass_fields__.values()
               if "betterproto" in f.metadata}
    assert numbers == set(range(1, 8))


def _proto_methods(service: str, proto: str) -> list[str]:
    body = re.search(rf"service {service} \{{(.*?)\n\}}", (_PROTOS / proto).read_text(), re.S)
    assert body is not None
    return re.findall(r"^\s*rpc (\w+)\(", body.group(1), re.M)


def test_the_1x_service_has_its_own_methods() -> None:
    methods = _proto_methods("AgentService", "agent.proto")
    assert len(methods) == len(set(methods)) == 32
    assert {"ListProcesses", "StartTracing", "StopTracing"} <= set(methods)
    assert "GetMetrics" not in methods
    for method in methods:
        stub = getattr(kata1.AgentServiceStub, betterproto2.casing.snake_case(method))
        assert f'"/grpc.AgentService/{method}"' in inspect.getsource(stub)
    assert _proto_methods("Health", "health.proto") == ["Check", "Version"]


def test_vector_paths_are_in_the_proto(vectors_dir: Path) -> None:
    ours = {f"/grpc.AgentService/{m}" for m in _proto_methods("AgentService", "agent.proto")}
    ours |= {f"/grpc.Health/{m}" for m in _proto_methods("Health", "health.proto")}
    paths = {call["path"] for _, call in _calls(vectors_dir)}
    assert len(paths) == 18
    assert paths <= ours


@pytest.mark.parametrize("cls", [kata1.CheckRequest, kata1.DestroySandboxRequest])
def test_empty_requests_are_zero_bytes(cls: type[betterproto2.Message]) -> None:
    assert bytes(cls()) == b""
