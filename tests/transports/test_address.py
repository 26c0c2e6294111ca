"""Address URLs: parsing, printing, and the errors for every bad part."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentio.errors import ConfigError
from agentio.transports import Address, parse_address
from agentio.transports.address import SUN_PATH_MAX, U32_MAX


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("unix:///run/kata/agent.sock", Address("unix", path="/run/kata/agent.sock")),
        ("unix://@kata-agent", Address("unix", path="@kata-agent")),
        ("vsock://3:1024", Address("vsock", cid=3, port=1024)),
        (f"vsock://{U32_MAX}:{U32_MAX}", Address("vsock", cid=U32_MAX, port=U32_MAX)),
        ("vsock://0:0", Address("vsock", cid=0, port=0)),
        ("hvsock:///run/vc/fc/kata.hvsock:1024", Address.hvsock("/run/vc/fc/kata.hvsock", 1024)),
        ("hvsock:///a:b/c:d.sock:1025", Address.hvsock("/a:b/c:d.sock", 1025)),
        ("hvsock://@vmm:7", Address.hvsock("@vmm", 7)),
        ("UNIX:///x", Address.unix("/x")),
    ],
)
def test_parse_valid(url: str, expected: Address) -> None:
    assert parse_address(url) == expected


@pytest.mark.parametrize(
    "url",
    ["unix:///run/kata/agent.sock", "unix://@name", "vsock://3:1024", "hvsock:///a/b.sock:1024"],
)
def test_canonical_urls_print_unchanged(url: str) -> None:
    assert str(parse_address(url)) == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("tcp://1.2.3.4:5", "unknown scheme 'tcp'"),
        ("/run/agent.sock", "expected scheme://"),
        ("", "expected scheme://"),
        ("unix://", "missing socket path"),
        ("unix://run/agent.sock", "relative"),
        ("unix://@", "empty abstract socket name"),
        ("unix:///a\0b", "NUL"),
        ("unix:///" + "a" * SUN_PATH_MAX, "longer than sun_path"),
        ("unix://@" + "a" * (SUN_PATH_MAX + 1), "longer than sun_path"),
        ("vsock://3", "missing port"),
        ("vsock://3:", "missing port"),
        ("vsock://:1024", "missing CID"),
        ("vsock://x:1024", "CID 'x' is not a decimal"),
        ("vsock://-1:1024", "CID '-1' is not a decimal"),
        ("vsock://+3:1024", "CID '+3' is not a decimal"),
        ("vsock://3:1_024", "port '1_024' is not a decimal"),
        ("vsock://3:\uff11\uff10", "is not a decimal"),  # full-width digits: int() takes them
        ("vsock://3:4294967296", "port 4294967296 out of range"),
        ("vsock://4294967296:1", "CID 4294967296 out of range"),
        ("vsock://3:99999999999", "at most 10 digits"),
        ("vsock://a:b:1", "CID 'a:b' is not a decimal"),
        ("hvsock:///vmm.sock", "missing port"),
        ("hvsock://vmm.sock:1024", "relative"),
        ("hvsock:///vmm.sock:port", "port 'port'"),
    ],
)
def test_parse_invalid_names_the_part(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(url)
    assert fragment in str(info.value)


def test_sun_path_limit_is_exact() -> None:
    path = "/" + "a" * (SUN_PATH_MAX - 1)
    assert parse_address("unix://" + path).path == path
    with pytest.raises(ConfigError):
        parse_address("unix://" + path + "a")


def test_long_bogus_address_is_truncated_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        parse_address("bogus://" + "x" * 10_000)
    assert len(str(info.value)) < 300


def test_unencodable_path_is_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot be encoded"):
        parse_address("unix:///\ud800")


def test_non_string_is_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_address(1024)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scheme": "tcp", "path": "/x"},
        {"scheme": "unix", "path": "/x", "port": 1},
        {"scheme": "unix", "path": "/x", "cid": 1},
        {"scheme": "vsock", "cid": 3},
        {"scheme": "vsock", "cid": 3, "port": 1, "path": "/x"},
        {"scheme": "vsock", "cid": True, "port": 1},
        {"scheme": "hvsock", "path": "/x"},
        {"scheme": "hvsock", "path": "x", "port": 1},
    ],
)
def test_constructor_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Address(**kwargs)  # type: ignore[arg-type]


def test_address_is_immutable_and_hashable() -> None:
    address = Address.vsock(3, 1024)
    with pytest.raises(AttributeError):
        address.port = 1  # type: ignore[misc]
    assert {address: 1}[Address.vsock(3, 1024)] == 1


def test_unix_sockaddr() -> None:
    assert Address.unix("/a/b").unix_sockaddr() == "/a/b"
    assert Address.unix("@name").unix_sockaddr() == "\0name"
    assert Address.hvsock("@vmm", 1).is_abstract
    with pytest.raises(ConfigError):
        Address.vsock(3, 1).unix_sockaddr()


# --- properties --------------------------------------------------------------------------

_u32 = st.integers(0, U32_MAX)
_name = st.text(
    st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]), min_size=1, max_size=30
)
_path = st.one_of(_name.map(lambda s: "/" + s), _name.map(lambda s: "@" + s))
addresses = st.one_of(
    st.builds(Address.unix, _path),
    st.builds(Address.vsock, _u32, _u32),
    st.builds(Address.hvsock, _path, _u32),
)


@given(addresses)
def test_print_parse_round_trip(address: Address) -> None:
    assert parse_address(str(address)) == address


@given(
    st.one_of(
        st.text(),
        st.builds(
            lambda s, rest: s + "://" + rest,
            st.sampled_from(["unix", "vsock", "hvsock"]),
            st.text(),
        ),
    )
)
def test_arbitrary_strings_parse_or_config_error(url: str) -> None:
    try:
        address = parse_address(url)
    except ConfigError as exc:
        assert exc.message
    else:
        assert parse_address(str(address)) == address
