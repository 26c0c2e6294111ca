"""Agent types, per-agent configuration from plain mappings, and the factory."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentio import AgentType, errors
from agentio.agents import (
    HyperstartAgent,
    Kata1Agent,
    KataAgent,
    KataConfig,
    NoopAgent,
    open_agent,
)
from agentio.agents.config import HyperstartConfig, decode_config
from agentio.transports import Address

NAMES = ["noop", "hyperstart", "kata", "kata1"]


def test_agent_types_parse_and_print_exactly() -> None:
    assert [t.value for t in AgentType] == NAMES
    for name in NAMES:
        kind = AgentType.parse(name)
        assert str(kind) == f"{kind}" == name
        assert AgentType.parse(kind) is kind


@pytest.mark.parametrize("bad", ["Kata", "KATA", " kata", "kata ", "", "kata2", "vmware",
                                 "hyper-start", "noop\0"])
def test_a_bad_agent_type_names_itself_and_the_accepted_ones(bad: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        AgentType.parse(bad)
    assert repr(bad) in str(info.value)
    assert all(name in str(info.value) for name in NAMES)


@given(st.text(max_size=12).filter(lambda s: s not in NAMES))
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(errors.ConfigError, match="unknown agent type"):
        AgentType.parse(text)


def test_the_factory_gives_each_type_its_agent_without_dialling() -> None:
    assert isinstance(open_agent(None, "noop"), NoopAgent)
    assert isinstance(open_agent("vsock://3:1024", "kata"), KataAgent)
    assert type(open_agent("vsock://3:1024", AgentType.KATA)) is KataAgent
    assert isinstance(open_agent("vsock://3:1024", "kata1"), Kata1Agent)
    assert isinstance(open_agent("vsock://3:2718", "hyperstart"), HyperstartAgent)
    for name in NAMES:
        agent = open_agent("vsock://3:1024" if name != "noop" else None, name)
        assert agent.agent_type is AgentType.parse(name)
    with pytest.raises(errors.ConfigError, match="address"):
        open_agent(None, "kata")
    with pytest.raises(errors.ConfigError, match="'katta'"):
        open_agent("vsock://3:1024", "katta")


# -- configuration ---------------------------------------------------------------------------


def test_kata_config_every_field_and_defaults() -> None:
    config = decode_config(KataConfig, {"call_timeout": 7, "dial_timeout": 2.5,
                                        "dial_attempt_timeout": 1, "handshake_timeout": 0.5},
                           what="kata")
    assert config == KataConfig(call_timeout=7.0, dial_timeout=2.5, dial_attempt_timeout=1.0,
                                handshake_timeout=0.5)
    assert isinstance(config.call_timeout, float)
    policy = config.dial_policy()
    assert (policy.budget, policy.attempt_timeout, policy.handshake_timeout) == (2.5, 1.0, 0.5)
    # an attempt never outlasts the whole budget
    assert decode_config(KataConfig, {"dial_timeout": 0.2}, what="kata"
                         ).dial_policy().attempt_timeout == 0.2
    assert decode_config(KataConfig, None, what="kata") == KataConfig()
    assert decode_config(KataConfig, {}, what="kata") == KataConfig()


@pytest.mark.parametrize(("kind", "values", "field", "why"), [
    ("kata", {"dial_timout": 1}, "'dial_timout'", "unknown field"),
    ("kata", {"call_timeout": "60"}, "call_timeout", "must be float, not str"),
    ("kata", {"call_timeout": True}, "call_timeout", "must be float, not bool"),
    ("kata", {"call_timeout": None}, "call_timeout", "must be float, not NoneType"),
    ("kata", {"dial_timeout": -1}, "dial_timeout", "positive"),
    ("kata", {"dial_timeout": 0}, "dial_timeout", "positive"),
    ("kata", {"handshake_timeout": math.nan}, "handshake_timeout", "positive"),
    ("kata", {"call_timeout": math.inf}, "call_timeout", "positive"),
    ("kata1", {"tty_address": "unix:///x"}, "'tty_address'", "unknown field"),
    ("hyperstart", {"tty": "unix:///x"}, "'tty'", "unknown field"),
    ("hyperstart", {"wait_ready": "no"}, "wait_ready", "must be bool, not str"),
    ("hyperstart", {"wait_ready": 0}, "wait_ready", "must be bool, not int"),
    ("hyperstart", {"tty_address": 5}, "tty_address", "must be str, not int"),
    ("hyperstart", {"ready_timeout": 0}, "ready_timeout", "positive"),
    ("hyperstart", {"share_dir": "a\0b"}, "share_dir", "NUL"),
    ("hyperstart", {"tty_address": "http://x"}, "", "http"),
    ("noop", {"call_timeout": 1}, "'call_timeout'", "takes none"),
])
def test_bad_config_is_an_error_naming_the_field(kind: str, values: dict[str, Any], field: str,
                                                 why: str) -> None:
    address = None if kind == "noop" else "vsock://3:1024"
    with pytest.raises(errors.ConfigError) as info:
        open_agent(address, kind, config=values)
    text = str(info.value)
    assert field in text and why in text, text
    assert text.startswith(f"{kind} config") or not field, text


def test_config_must_be_a_mapping() -> None:
    with pytest.raises(errors.ConfigError, match="mapping, not list"):
        open_agent("vsock://3:1024", "kata", config=[("call_timeout", 1)])  # type: ignore[arg-type]


def test_noop_takes_no_settings_but_accepts_none_or_empty() -> None:
    assert isinstance(open_agent(None, "noop", config=None), NoopAgent)
    assert isinstance(open_agent(None, "noop", config={}), NoopAgent)


def test_hyperstart_tty_channel_from_the_ctl_address() -> None:
    defaults = HyperstartConfig()
    assert defaults.tty_for(Address.vsock(7, 2718)) == Address.vsock(7, 2719)
    assert defaults.tty_for(Address.hvsock("/run/vm.sock", 2718)) == \
        Address.hvsock("/run/vm.sock", 2719)
    with pytest.raises(errors.ConfigError, match="tty_address"):
        defaults.tty_for(Address.unix("/run/hs.ctl"))
    given_tty = HyperstartConfig(tty_address="unix:///run/hs.tty")
    assert given_tty.tty_for(Address.unix("/run/hs.ctl")) == Address.unix("/run/hs.tty")
    assert given_tty.tty_for(Address.vsock(7, 2718)) == Address.unix("/run/hs.tty")


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.floats(),
                    st.text(max_size=8), st.lists(st.integers(), max_size=2))
_KEYS = st.sampled_from(["call_timeout", "dial_timeout", "dial_attempt_timeout",
                         "handshake_timeout", "tty_address", "wait_ready", "ready_timeout",
                         "share_dir", "address", "x"])


@given(st.sampled_from(NAMES), st.dictionaries(_KEYS, _VALUES, max_size=4))
def test_any_mapping_gives_an_agent_or_a_config_error(kind: str,
                                                      values: dict[str, Any]) -> None:
    address = None if kind == "noop" else "vsock://3:2718"
    try:
        agent = open_agent(address, kind, config=values)
    except errors.ConfigError as exc:
        assert "config" in str(exc) or "address" in str(exc)
    else:
        assert agent.agent_type is AgentType.parse(kind)
