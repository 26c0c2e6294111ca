"""The local agent's generation adapter: 1.x requests reach the service field by field."""

from __future__ import annotations

import pytest

from agentio.localagent.generations import CURRENT, KATA1, convert
from agentio.proto.kata import grpc as pb
from agentio.proto.kata import types as pb_types
from agentio.proto.kata.google import protobuf as pb_empty
from agentio.proto.kata1 import grpc as pb1
from agentio.proto.kata1 import types as pb1_types
from agentio.proto.kata1.google import protobuf as pb1_empty


def _seccomp_request() -> pb1.CreateContainerRequest:
    syscall = pb1.LinuxSyscall(names=["mkdir"], action="SCMP_ACT_ERRNO",
                               args=[pb1.LinuxSeccompArg(index=1, value=7, op="SCMP_CMP_EQ")])
    seccomp = pb1.LinuxSeccomp(default_action="SCMP_ACT_ALLOW", architectures=["x86"],
                               syscalls=[syscall])
    spec = pb1.Spec(version="1.0.1", linux=pb1.Linux(seccomp=seccomp))
    return pb1.CreateContainerRequest(container_id="c", exec_id="c", oci=spec)


def test_renumbered_seccomp_fields_land_by_name() -> None:
    # 1.x has Syscalls as field 3 and Args as field 3; parsing its bytes with the current
    # classes would read them as Flags and errno. Converting goes by name instead.
    request = KATA1.decode(pb.CreateContainerRequest, bytes(_seccomp_request()))
    assert isinstance(request, pb.CreateContainerRequest)
    assert request.oci is not None and request.oci.linux is not None
    seccomp = request.oci.linux.seccomp
    assert seccomp is not None and seccomp.flags == []
    assert seccomp.syscalls[0].names == ["mkdir"]
    assert seccomp.syscalls[0].args[0].value == 7
    assert seccomp.syscalls[0].errnoret is None
    assert pb.CreateContainerRequest.parse(bytes(_seccomp_request())).oci.linux.seccomp.flags


def test_replies_go_back_in_the_callers_generation() -> None:
    reply = pb.WaitProcessResponse(status=3)
    assert pb1.WaitProcessResponse.parse(KATA1.encode(reply)).status == 3
    assert KATA1.encode(pb_empty.Empty()) == bytes(pb1_empty.Empty()) == b""
    own = pb1.ListProcessesResponse(process_list=b"[1,2]")
    assert KATA1.encode(own) == bytes(own)
    assert CURRENT.encode(reply) == bytes(reply)
    assert CURRENT.decode(pb.WaitProcessRequest, b"\n\x01c").container_id == "c"


def test_fields_the_target_lacks_are_dropped() -> None:
    current = pb_types.Route(dest="10.0.0.0/8", family=pb_types.IpFamily.v6, flags=3)
    assert convert(current, pb1_types.Route) == pb1_types.Route(dest="10.0.0.0/8")
    with pytest.raises(LookupError):
        KATA1.encode(pb.Metrics(metrics="x"))


def test_messages_of_the_same_layout_skip_the_conversion() -> None:
    from agentio.localagent.generations import same_layout

    for name in ("CheckRequest", "HealthCheckResponse", "WriteStreamRequest",
                 "ReadStreamResponse", "WaitProcessResponse", "Process"):
        assert same_layout(getattr(pb1, name), getattr(pb, name)), name
    for name in ("CreateContainerRequest", "LinuxSeccomp", "LinuxSyscall", "ExecProcessRequest"):
        assert not same_layout(getattr(pb1, name), getattr(pb, name)), name
    assert not same_layout(pb1_types.Interface, pb_types.Interface)  # pciAddr vs devicePath
    request = pb.WriteStreamRequest(container_id="c", exec_id="e", data=b"\0" * 70000)
    assert KATA1.decode(pb.WriteStreamRequest, bytes(request)) == request
