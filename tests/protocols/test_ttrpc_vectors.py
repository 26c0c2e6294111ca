"""The ttrpc golden vectors: decode every frame, re-encode every request, replay both sides."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentio import errors
from agentio.protocols.ttrpc.client import TtrpcConnection
from agentio.protocols.ttrpc.codec import (
    HEADER_SIZE,
    TYPE_REQUEST,
    Frame,
    FrameDecoder,
    OversizedFrame,
    decode_request,
    decode_response,
    encode_header,
    encode_request,
)
from agentio.protocols.ttrpc.server import Handler, ServerCall, TtrpcServer

Vector = dict[str, Any]
_DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "vectors"


def _names() -> list[str]:
    path = Path(os.environ.get("AGENTIO_VECTORS", _DEFAULT)) / "ttrpc" / "vectors.json"
    if not path.is_file():
        return ["missing"]  # the vectors_dir fixture then skips (or fails in CI)
    return [v["name"] for v in json.loads(path.read_text())["vectors"]]


_NAMES = _names()


@pytest.fixture(params=_NAMES)
def vector(request: pytest.FixtureRequest, vectors_dir: Path) -> Vector:
    for v in json.loads((vectors_dir / "ttrpc" / "vectors.json").read_text())["vectors"]:
        if v["name"] == request.param:
            return dict(v)
    pytest.fail(f"vector {request.param} not found")


def _is_handshake(frame: Vector) -> bool:
    return "hybrid-vsock" in frame.get("note", "")


def _frames(vector: Vector, direction: str) -> Iterator[Vector]:
    for frame in vector["frames"]:
        if frame["dir"] == direction and not _is_handshake(frame):
            yield frame


def _wire(frame: Vector) -> bytes:
    """A frame's bytes, with the payload the recording omitted (vector 33's zeros) restored."""
    data = bytes.fromhex(frame["hex"])
    if "omitted" in frame.get("note", ""):
        data += bytes(frame["header"]["length"])
    return data


def _is_rust(vector: Vector) -> bool:
    return "wire rust" in vector.get("server", "")


def _metadata(envelope: Vector) -> tuple[tuple[str, str], ...]:
    return tuple((kv["Key"], kv["Value"]) for kv in envelope.get("metadata", []))


# --- decode and re-encode -----------------------------------------------------------------


def test_every_frame_decodes(vector: Vector) -> None:
    for frame in vector["frames"]:
        if _is_handshake(frame):
            continue
        decoder = FrameDecoder()
        events = decoder.feed(_wire(frame))
        header = frame["header"]
        assert len(events) == 1
        (event,) = events
        assert (event.stream_id, event.type, event.flags) == (
            header["stream_id"], header["type"], header["flags"]
        )
        if isinstance(event, OversizedFrame):
            assert event.length == header["length"] > decoder.max_payload
            assert decoder.skipping == 0 and decoder.buffered == 0
            continue
        assert len(event.payload) == header["length"]
        _check_envelope(frame, event)


def _check_envelope(frame: Vector, event: Frame) -> None:
    envelope = frame.get("envelope")
    if envelope is None:
        if event.type == TYPE_REQUEST:  # vector 29: not a Request protobuf
            with pytest.raises(errors.ProtocolError, match="unexpected EOF"):
                decode_request(event.payload)
        return
    if frame["dir"] == "c2s":
        request = decode_request(event.payload)
        assert (request.service, request.method) == (envelope["service"], envelope["method"])
        assert request.payload.hex() == envelope["payload_hex"]
        assert request.timeout_nano == envelope.get("timeout_nano", 0)
        assert request.metadata == _metadata(envelope)
    else:
        response = decode_response(event.payload)
        assert response.code == envelope["status_code"]
        assert response.message == envelope.get("status_message", "")
        assert response.payload.hex() == envelope["payload_hex"]
        assert response.has_status == envelope.get("status_present", False)


def test_requests_reencode_byte_identical(vector: Vector) -> None:
    checked = 0
    for frame in _frames(vector, "c2s"):
        envelope = frame.get("envelope")
        if envelope is None or "service" not in envelope:
            continue
        body = encode_request(
            envelope["service"], envelope["method"], bytes.fromhex(envelope["payload_hex"]),
            envelope.get("timeout_nano", 0), _metadata(envelope),
        )
        header = frame["header"]
        wire = encode_header(header["stream_id"], header["type"], len(body), header["flags"])
        assert (wire + body).hex() == frame["hex"]
        checked += 1
    assert checked or vector["name"] in {"29_raw_garbage_payload", "33_raw_oversize"}


# --- our server answers like the recorded one ---------------------------------------------

def _unknown_service(request: Vector, response: Vector) -> bool:
    message = response.get("status_message", "")
    return message in {f"service {request['service']}",
                       f"{request['service']} service does not exist"}


def _unknown_method(request: Vector, response: Vector) -> bool:
    message = response.get("status_message", "")
    return message in {f"method {request['method']}", f"{request['method']} method"}


def _handlers(vector: Vector, seen: list[ServerCall]) -> dict[str, dict[str, Handler]]:
    """Handlers that answer each recorded request with its recorded answer."""
    answers: dict[tuple[str, str, str], Vector] = {}
    services: dict[str, dict[str, Handler]] = {}
    s2c = {f["header"]["stream_id"]: f for f in _frames(vector, "s2c")}
    for frame in _frames(vector, "c2s"):
        request = frame.get("envelope")
        response = s2c.get(frame["header"]["stream_id"], {}).get("envelope")
        if request is None or response is None or _unknown_service(request, response):
            continue
        services.setdefault(request["service"], {})  # the service exists, maybe not the method
        if not _unknown_method(request, response):
            answers[(request["service"], request["method"], request["payload_hex"])] = response

    async def handler(call: ServerCall) -> bytes:
        seen.append(call)
        response = answers[(call.service, call.method, call.payload.hex())]
        if response["status_code"] == 4 and call.timeout_nano:
            await asyncio.Event().wait()  # vector 35: outlive the request's deadline
        if response["status_code"]:
            raise errors.rpc_error(response["status_code"], response["status_message"])
        return bytes.fromhex(response["payload_hex"])

    for service, method, _ in answers:
        services.setdefault(service, {})[method] = handler
    return services


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(HEADER_SIZE)
    return header + await reader.readexactly(int.from_bytes(header[:4], "big"))


async def test_server_answers_byte_identical(vector: Vector) -> None:
    seen: list[ServerCall] = []
    server = TtrpcServer(wire_style="rust" if _is_rust(vector) else "go")
    for service, methods in _handlers(vector, seen).items():
        server.register(service, methods)
    ours, theirs = socket.socketpair()
    await server.serve_socket(theirs)
    reader, writer = await asyncio.open_connection(sock=ours)
    try:
        for frame in _frames(vector, "c2s"):
            writer.write(_wire(frame))
        expected = sorted(f["hex"] for f in _frames(vector, "s2c"))
        answers = [await _read_frame(reader) for _ in expected]
        assert sorted(a.hex() for a in answers) == expected
        writer.write_eof()
        assert await reader.read() == b""  # and nothing else (vector 30: type 5 ignored)
    finally:
        writer.close()
        await server.close()
    for call in seen:  # what the handlers saw matches what was sent
        (frame,) = [f for f in _frames(vector, "c2s")
                    if f["header"]["stream_id"] == call.stream_id and "envelope" in f]
        assert call.metadata == _metadata(frame["envelope"])
        assert call.timeout_nano == frame["envelope"].get("timeout_nano", 0)


# --- our client sends and understands what the Go client did ------------------------------


def _client_replayable(vector: Vector) -> bool:
    return "_raw_" not in vector["name"]


async def test_client_replays_vector(vector: Vector) -> None:
    if not _client_replayable(vector):
        pytest.skip("raw frames were written by hand, not by the Go client")
    requests = list(_frames(vector, "c2s"))
    answers = {f["header"]["stream_id"]: f for f in _frames(vector, "s2c")}
    for request in requests:
        await _replay_call(request, answers[request["header"]["stream_id"]])


async def _replay_call(request: Vector, answer: Vector) -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    envelope = request["envelope"]
    _, conn = await loop.create_connection(
        lambda: TtrpcConnection(first_stream_id=request["header"]["stream_id"]), sock=ours
    )
    reader, writer = await asyncio.open_connection(sock=theirs)
    timeout = 5.0 if "timeout_nano" in envelope else None
    call = asyncio.create_task(conn.call(
        envelope["service"], envelope["method"], bytes.fromhex(envelope["payload_hex"]),
        timeout=timeout, metadata=_metadata(envelope),
    ))
    try:
        sent = await _read_frame(reader)
        if timeout is None:
            assert sent.hex() == request["hex"]
        else:  # vector 23: the remaining time varies run to run
            timeout_nano = decode_request(sent[HEADER_SIZE:]).timeout_nano
            assert 4_000_000_000 < timeout_nano <= 5_000_000_000
        writer.write(bytes.fromhex(answer["hex"]))
        expected = answer["envelope"]
        if expected["status_code"] == 0:
            assert (await call).hex() == expected["payload_hex"]
        else:
            error_class = type(errors.rpc_error(expected["status_code"], ""))
            with pytest.raises(error_class) as raised:
                await call
            assert raised.value.message == expected["status_message"]
            assert raised.value.operation == envelope["method"]
    finally:
        call.cancel()
        conn.close()
        writer.close()
        await conn.wait_closed()
