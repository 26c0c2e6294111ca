"""Generated Kata 2.x+ messages against the golden ttrpc vectors (agentio.proto.kata)."""

from __future__ import annotations

import base64
import inspect
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import betterproto2

from agentio.proto.kata import grpc as kata
from agentio.proto.kata.message_pool import default_message_pool

_PROTOS = Path(__file__).resolve().parents[2] / "protos" / "kata"
_TYPE_URL = "type.googleapis.com/"
# Removed from Kata in 2.1; vector 27 shows the server answering UNIMPLEMENTED for it.
_REMOVED_TYPES = {"grpc.ListProcessesRequest"}
_UNIMPLEMENTED = 12


def _load(vectors_dir: Path) -> list[dict[str, Any]]:
    data = json.loads((vectors_dir / "ttrpc" / "vectors.json").read_text())
    vectors: list[dict[str, Any]] = data["vectors"]
    return vectors


def _typed_frames(vectors_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(vector name, envelope) for every frame whose payload type is known."""
    for vector in _load(vectors_dir):
        for frame in vector["frames"]:
            envelope = frame.get("envelope") or {}
            if envelope.get("payload_type"):
                yield vector["name"], envelope


def _message_class(type_name: str) -> type[betterproto2.Message] | None:
    return default_message_pool.url_to_type.get(_TYPE_URL + type_name)


def _json_value(value: Any) -> Any:
    """A decoded scalar as Go's protojson renders it in payload_json."""
    if isinstance(value, betterproto2.Enum):
        return value.name
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def test_every_vector_payload_decodes_and_reencodes_byte_identically(vectors_dir: Path) -> None:
    checked: set[str] = set()
    for name, envelope in _typed_frames(vectors_dir):
        type_name = envelope["payload_type"]
        cls = _message_class(type_name)
        if type_name in _REMOVED_TYPES:
            assert cls is None, f"{type_name} is not part of the 3.29 API"
            continue
        assert cls is not None, f"{name}: no generated class for {type_name}"
        raw = bytes.fromhex(envelope["payload_hex"])
        msg = cls.parse(raw)
        # Every vector map has at most one entry, so the encoding is deterministic.
        assert bytes(msg) == raw, f"{name}: {type_name} re-encodes differently"
        checked.add(type_name)
    assert len(checked) == 19
    assert {"grpc.CreateContainerRequest", "grpc.ExecProcessRequest"} <= checked


def test_decoded_scalars_match_payload_json(vectors_dir: Path) -> None:
    compared: set[str] = set()
    for name, envelope in _typed_frames(vectors_dir):
        cls = _message_class(envelope["payload_type"])
        if cls is None:
            continue
        msg = cls.parse(bytes.fromhex(envelope["payload_hex"]))
        for key, expected in envelope["payload_json"].items():
            if isinstance(expected, dict | list):
                continue
            assert _json_value(getattr(msg, key)) == expected, f"{name}: {key}"
            compared.add(f"{envelope['payload_type']}.{key}")
    assert {
        "grpc.HealthCheckResponse.status",
        "grpc.VersionCheckResponse.agent_version",
        "grpc.CreateSandboxRequest.sandbox_id",
        "grpc.ExecProcessRequest.exec_id",
        "grpc.ReadStreamRequest.len",
        "grpc.ReadStreamResponse.data",
        "grpc.WriteStreamResponse.len",
        "grpc.WaitProcessResponse.status",
        "grpc.SignalProcessRequest.signal",
        "grpc.RemoveContainerRequest.timeout",
    } <= compared


def _envelope(vectors_dir: Path, vector: str, index: int) -> dict[str, Any]:
    frames = next(v for v in _load(vectors_dir) if v["name"] == vector)["frames"]
    envelope: dict[str, Any] = frames[index]["envelope"]
    return envelope


def test_create_container_spec_fields(vectors_dir: Path) -> None:
    envelope = _envelope(vectors_dir, "04_create_container", 0)
    req = kata.CreateContainerRequest.parse(bytes.fromhex(envelope["payload_hex"]))
    oci = envelope["payload_json"]["OCI"]
    assert req.container_id == req.exec_id == "ctr-0001"
    assert req.oci is not None and req.oci.linux is not None and req.oci.process is not None
    assert req.oci.version == oci["Version"]
    assert req.oci.hostname == oci["Hostname"]
    assert req.oci.annotations == oci["Annotations"]
    assert req.oci.linux.cgroups_path == oci["Linux"]["CgroupsPath"]
    assert [ns.type for ns in req.oci.linux.namespaces] == ["ipc", "uts", "mount"]
    # protojson renders int64 as a string.
    assert req.oci.process.oom_score_adj == int(oci["Process"]["OOMScoreAdj"]) == -998
    assert req.oci.mounts[1].options == oci["Mounts"][1]["options"]


def test_exec_process_fields(vectors_dir: Path) -> None:
    envelope = _envelope(vectors_dir, "06_exec_process", 0)
    req = kata.ExecProcessRequest.parse(bytes.fromhex(envelope["payload_hex"]))
    process = envelope["payload_json"]["process"]
    assert req.process is not None and req.process.user is not None
    assert req.process.args == process["Args"]
    assert req.process.user.additional_gids == process["User"]["AdditionalGids"]
    assert req.process.rlimits[0].type == "RLIMIT_NOFILE"
    assert req.process.rlimits[0].hard == int(process["Rlimits"][0]["Hard"])


def test_zero_status_is_an_empty_payload(vectors_dir: Path) -> None:
    envelope = _envelope(vectors_dir, "19_wait_process_zero", 1)
    assert envelope["payload_hex"] == ""
    assert kata.WaitProcessResponse.parse(b"").status == 0
    assert bytes(kata.WaitProcessResponse(status=143)).hex() == "088f01"


def test_oneof_and_optional_presence_survive_zero_values() -> None:
    # errnoret is a oneof member and the mem-agent knobs are proto3 `optional`:
    # an explicit zero must reach the wire, unlike a plain scalar.
    assert bytes(kata.LinuxSyscall(errnoret=0)) == b"\x18\x00"
    assert bytes(kata.LinuxSyscall()) == b""
    assert betterproto2.which_one_of(kata.LinuxSyscall.parse(b"\x18\x00"), "ErrnoRet") == (
        "errnoret",
        0,
    )
    assert bytes(kata.MemAgentMemcgConfig(swap=False)) == b"\x10\x00"
    assert kata.MemAgentMemcgConfig.parse(b"").swap is None


def _proto_methods(proto: str, service: str) -> list[str]:
    text = (_PROTOS / proto).read_text()
    body = re.search(rf"service {service} \{{(.*?)\n\}}", text, re.S)
    assert body is not None
    return re.findall(r"^\s*rpc (\w+)\(", body.group(1), re.M)


def test_agent_service_has_42_methods_in_the_stub() -> None:
    methods = _proto_methods("agent.proto", "AgentService")
    assert len(methods) == len(set(methods)) == 42
    for method in methods:
        stub_method = getattr(kata.AgentServiceStub, betterproto2.casing.snake_case(method))
        # The stub's route is what a ttrpc channel splits into (service, method).
        assert f'"/grpc.AgentService/{method}"' in inspect.getsource(stub_method)
    assert _proto_methods("health.proto", "Health") == ["Check", "Version"]
    assert callable(kata.HealthStub.check) and callable(kata.HealthStub.version)


def _called_methods(vectors_dir: Path) -> dict[tuple[str, str], bool]:
    """(service, method) of every real-service request -> whether the server knew it."""
    known: dict[tuple[str, str], bool] = {}
    for vector in _load(vectors_dir):
        requests: dict[int, tuple[str, str]] = {}
        for frame in vector["frames"]:
            envelope = frame.get("envelope") or {}
            stream = frame["header"]["stream_id"]
            if frame["dir"] == "c2s" and envelope.get("service") in (
                "grpc.AgentService",
                "grpc.Health",
            ):
                requests[stream] = (envelope["service"], envelope["method"])
            elif frame["dir"] == "s2c" and stream in requests:
                status = envelope.get("status_code", 0)
                known[requests.pop(stream)] = status != _UNIMPLEMENTED
    return known


def test_vector_method_names_match_the_proto(vectors_dir: Path) -> None:
    ours = {("grpc.AgentService", m) for m in _proto_methods("agent.proto", "AgentService")}
    ours |= {("grpc.Health", m) for m in _proto_methods("health.proto", "Health")}
    called = _called_methods(vectors_dir)
    implemented = {key for key, ok in called.items() if ok}
    rejected = {key for key, ok in called.items() if not ok}
    assert len(implemented) == 15
    assert implemented <= ours
    assert rejected == {
        ("grpc.AgentService", "NoSuchMethod"),
        ("grpc.AgentService", "ListProcesses"),
    }
    assert not rejected & ours


def test_generated_code_needs_no_protobuf_package() -> None:
    # `google.protobuf.Empty` must come from our generated package, not Google's runtime.
    code = (
        "import sys; sys.modules['google'] = None\n"
        "import agentio.proto.kata.grpc, agentio.proto.kata.types\n"
        "from agentio.proto.kata.google.protobuf import Empty\n"
        "assert bytes(Empty()) == b''\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
